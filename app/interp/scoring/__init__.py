"""Scores of an explanation on held-out examples: simulation (Pearson), detection and fuzzing
(balanced accuracy)."""
