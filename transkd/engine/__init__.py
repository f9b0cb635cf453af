"""Training and evaluation machinery: the loop, checkpoints, metrics and inference."""
