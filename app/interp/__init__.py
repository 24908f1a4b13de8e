"""Automated interpretability: an LLM explains features from their examples and is scored on
held-out ones (simulation, detection, fuzzing), against a random-SAE baseline (jumprelu.md §5).

- `llm/`: the chat backends (an OpenAI-compatible HTTP endpoint, an in-process Hugging Face model).
- `scoring/`: the prompts and maths of each score.
"""
