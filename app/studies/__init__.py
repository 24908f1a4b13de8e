"""Rating studies: the rating queue over one or several SAEs, shuffled and optionally blinded per study."""
