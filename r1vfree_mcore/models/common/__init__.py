"""Blocks shared by the Qwen-VL families (vision tower, wrapper, rope index, weight transforms)."""
