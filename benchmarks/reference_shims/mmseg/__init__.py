"""Stand-in for the parts of mmsegmentation the reference model files import."""
