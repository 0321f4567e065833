"""Test helpers shipped with the package: tiny HF checkpoints, synthetic data, a gloo harness."""
