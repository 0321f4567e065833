"""The synthetic dataset is written in all three formats and reads back in the R1V-Free schema."""

import json

import pytest
from PIL import Image

from r1vfree_mcore.testing.synthetic_data import write_synthetic_dataset


def test_disk_and_parquet_roundtrip(tmp_path):
    from datasets import load_dataset, load_from_disk

    d = load_from_disk(str(write_synthetic_dataset(tmp_path / "disk", 6, "disk", seed=1)))
    p = load_dataset("parquet", data_files=str(write_synthetic_dataset(tmp_path / "pq", 6, "parquet", seed=1)))["train"]
    assert set(d.column_names) == {"image", "problem", "solution", "image_path"}
    assert d[0]["problem"] == p[0]["problem"]
    sizes = {d[i]["image"].size for i in range(6)}
    assert len(sizes) > 1  # varied sizes
    assert all(d[i]["image"].mode == "RGB" for i in range(6))


def test_jsonl_with_bad_images(tmp_path):
    path = write_synthetic_dataset(
        tmp_path / "j", 5, "jsonl", bad_images={1: "truncated", 2: "missing", 3: "grayscale", 4: "rgba"}
    )
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5 and all(r["problem"] for r in rows)
    root = path.parent
    assert Image.open(root / rows[0]["image_path"]).mode == "RGB"
    assert not (root / rows[2]["image_path"]).exists()
    with pytest.raises(OSError):
        Image.open(root / rows[1]["image_path"]).load()
    assert Image.open(root / rows[3]["image_path"]).mode == "L"
    assert Image.open(root / rows[4]["image_path"]).mode == "RGBA"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="fmt"):
        write_synthetic_dataset(tmp_path, 2, "csv")
    with pytest.raises(ValueError, match="jsonl"):
        write_synthetic_dataset(tmp_path, 2, "disk", bad_images={0: "missing"})
