"""Chat LLM backends behind one small interface (`base.ChatBackend`)."""
