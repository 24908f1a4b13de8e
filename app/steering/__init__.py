"""Steering and ablation: interventions on an SAE's features during the model's forward pass, over REST."""
