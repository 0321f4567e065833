"""Qwen2.5-VL: RMSNorm / gated-SiLU vision tower with window attention."""
