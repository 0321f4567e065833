"""Qwen2-VL: LayerNorm / QuickGELU vision tower with full attention per image."""
