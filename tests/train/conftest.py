import pytest

@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """Tiny policy (2 layers), tiny preference reward model, and JSONL data with broken images."""
    from r1vfree_mcore.demo import write_assets
    from r1vfree_mcore.testing.synthetic_data import write_synthetic_dataset

    root = tmp_path_factory.mktemp("assets")
    paths = write_assets(root)
    paths["jsonl"] = write_synthetic_dataset(
        root / "bad", 8, "jsonl", seed=2, bad_images={1: "truncated", 4: "missing", 6: "rgba"}
    )
    return paths
