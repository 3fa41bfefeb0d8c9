"""s2-vllm: the second step of OV-MER's S2 strategy, run offline over whole datasets."""

__version__ = "0.1.0"
