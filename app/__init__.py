"""jumpscope's application side: command line, store, server (imports trainer, never the reverse)."""
