"""Parallel groups and the CPU workarounds for megatron-core."""
