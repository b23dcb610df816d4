"""samtrain: train SAM-MIL and baseline MIL models from a clam2sam store."""
__version__ = "0.1.0"
