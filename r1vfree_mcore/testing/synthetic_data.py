"""Synthetic RLHF-V-style data in the R1V-Free schema, written offline.

Each sample has ``image`` (drawn shapes on a background, varied sizes), ``problem`` (an
open-ended question about it), ``solution`` (a reference answer; R1V-Free never trains on it) and
``image_path``. Three on-disk formats, the ones the trainer loads:

- ``disk``: a ``datasets`` directory (``Dataset.save_to_disk``), ``image`` as an Image feature;
- ``parquet``: ``data.parquet`` with the image bytes embedded;
- ``jsonl``: ``data.jsonl`` + ``images/`` (``image_path`` relative to the JSONL file).

``bad_images`` injects broken samples (truncated file, missing file, grayscale, RGBA) to test the
loader's error handling. CLI: ``python -m r1vfree_mcore.testing.synthetic_data --out DIR``.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

FORMATS = ("disk", "parquet", "jsonl")
BAD_KINDS = ("truncated", "missing", "grayscale", "rgba")
_COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (230, 200, 20)}
_SHAPES = ("circle", "square")
_QUESTIONS = (
    "How many {color} shapes are in the image?",
    "Describe the {color} objects in the picture.",
    "Is there a {color} {shape} in the image? Explain.",
    "What shapes can you see, and what colors are they?",
)


def draw_sample(rng: random.Random, min_size: int = 56, max_size: int = 160) -> dict:
    """One synthetic sample: PIL image, question and a reference answer."""
    w, h = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
    img = Image.new("RGB", (w, h), (245, 245, 245))
    d = ImageDraw.Draw(img)
    objs = []
    for _ in range(rng.randint(1, 4)):
        color, shape = rng.choice(list(_COLORS)), rng.choice(_SHAPES)
        r = rng.randint(6, max(7, min(w, h) // 5))
        x, y = rng.randint(r, w - r), rng.randint(r, h - r)
        box = (x - r, y - r, x + r, y + r)
        (d.ellipse if shape == "circle" else d.rectangle)(box, fill=_COLORS[color])
        objs.append((color, shape))
    color, shape = rng.choice(objs)
    problem = rng.choice(_QUESTIONS).format(color=color, shape=shape)
    count = sum(c == color for c, _ in objs)
    solution = f"There are {count} {color} shapes; in total: " + ", ".join(f"{c} {s}" for c, s in objs)
    return {"image": img, "problem": problem, "solution": solution}


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_synthetic_dataset(
    out: str | Path,
    n: int = 32,
    fmt: str = "disk",
    *,
    seed: int = 0,
    min_size: int = 56,
    max_size: int = 160,
    bad_images: dict[int, str] | None = None,
) -> Path:
    """Write ``n`` samples to ``out`` in format ``fmt``; returns the path to give the loader.

    ``bad_images`` maps sample index -> one of BAD_KINDS. ``missing``/``truncated`` need a file on
    disk, so they apply to ``jsonl`` only; ``disk``/``parquet`` accept grayscale/rgba.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    bad_images = dict(bad_images or {})
    for i, kind in bad_images.items():
        if kind not in BAD_KINDS:
            raise ValueError(f"bad_images[{i}]: unknown kind {kind!r}; expected one of {BAD_KINDS}")
        if fmt != "jsonl" and kind in ("missing", "truncated"):
            raise ValueError(f"bad_images[{i}]={kind!r} needs fmt='jsonl' (a file on disk)")
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        s = draw_sample(rng, min_size, max_size)
        kind = bad_images.get(i)
        if kind == "grayscale":
            s["image"] = s["image"].convert("L")
        elif kind == "rgba":
            s["image"] = s["image"].convert("RGBA")
        s["image_path"] = f"images/{i:06d}.png"
        rows.append((s, kind))

    if fmt == "jsonl":
        (out / "images").mkdir(exist_ok=True)
        with open(out / "data.jsonl", "w") as f:
            for s, kind in rows:
                data = _png_bytes(s["image"])
                if kind == "truncated":
                    data = data[: len(data) // 3]
                if kind != "missing":
                    (out / s["image_path"]).write_bytes(data)
                rec = {k: s[k] for k in ("problem", "solution", "image_path")}
                f.write(json.dumps(rec) + "\n")
        return out / "data.jsonl"

    from datasets import Dataset, Features, Image as ImageFeature, Value

    features = Features(
        {"image": ImageFeature(), "problem": Value("string"), "solution": Value("string"), "image_path": Value("string")}
    )
    table = {
        "image": [{"bytes": _png_bytes(s["image"]), "path": None} for s, _ in rows],
        "problem": [s["problem"] for s, _ in rows],
        "solution": [s["solution"] for s, _ in rows],
        "image_path": [s["image_path"] for s, _ in rows],
    }
    ds = Dataset.from_dict(table, features=features)
    if fmt == "disk":
        ds.save_to_disk(str(out))
        return out
    ds.to_parquet(str(out / "data.parquet"))
    return out / "data.parquet"


def main(argv=None):
    p = argparse.ArgumentParser(description="Write a synthetic R1V-Free dataset.")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--format", choices=FORMATS, default="disk")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    path = write_synthetic_dataset(a.out, a.n, a.format, seed=a.seed)
    print(f"wrote {a.n} samples ({a.format}) to {path}")


if __name__ == "__main__":
    main()
