"""jumpscope's trainer: JumpReLU SAEs and their baselines (torch only; never imports app)."""
