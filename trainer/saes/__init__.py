"""Sparse autoencoders: JumpReLU (the paper) and the baselines it is compared with.

One module per architecture, one registry that lists them:

- registry.py: `ArchitectureSpec` and the registered architectures (torch-free), `build_sae`;
- config.py: `SAEConfig`, the shape and architecture of one SAE (torch-free);
- base.py: the `SAE` base class (parameters, decoding, decoder constraint, fold) and `StepOutput`;
- jumprelu.py, relu.py, topk.py, gated.py: one architecture each.

This package's __init__ imports nothing, so that `import trainer.saes.registry` stays torch-free.
"""
