"""Stand-in for the parts of mmcv 1.3 the reference model files import."""
