"""r1vfree-mcore: label-free visual-reasoning GRPO (R1V-Free) on megatron-core."""

__version__ = "0.1.0"
