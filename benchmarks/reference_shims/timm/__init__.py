"""Stand-in for the parts of timm 0.4.12 the reference model files import."""
