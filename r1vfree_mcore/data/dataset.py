"""R1V-Free prompt data: the dataset schema, image loading and the original prompt template.

Schema per record: ``image`` (PIL image or datasets Image), ``problem`` (str), optional
``solution`` (never used for training: R1V-Free is label-free) and ``image_path``. Sources: a
``datasets`` directory (``save_to_disk``), a parquet file, a JSONL file with images relative to it,
or a hub name where a hub is reachable.

A corrupt, missing or non-RGB image never crashes the run: non-RGB images are converted, broken
ones make :meth:`PromptDataset.get` return None; both are counted in :attr:`PromptDataset.stats`
and logged with the record index and the file.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)

PROMPT_SUFFIX = "  Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."


@dataclass
class PromptSample:
    """One prompt: the original record fields plus the RGB image."""

    index: int
    problem: str
    image: Image.Image
    solution: str | None = None
    image_path: str | None = None


@dataclass
class DataStats:
    """Counts of image problems seen so far (reported as metrics)."""

    images_converted: int = 0
    images_skipped: int = 0
    skipped_indices: list[int] = field(default_factory=list)


def build_messages(problem: str) -> list[dict]:
    """The original R1V-Free user turn: [image, problem + the think/answer instruction]."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": problem + PROMPT_SUFFIX}]}]


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels become white (not black)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "P"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.split()[3])
        return bg
    return img.convert("RGB")


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "disk"
    if path.suffix == ".parquet":
        return "parquet"
    if path.suffix in (".jsonl", ".json"):
        return "jsonl"
    if not path.exists() and "/" in str(path) and not str(path).startswith(("/", ".")):
        return "hub"
    raise FileNotFoundError(f"data.path: {path} is not a datasets dir, .parquet or .jsonl file")


class PromptDataset:
    """Random access to R1V-Free records with robust image loading."""

    def __init__(self, path: str | Path, fmt: str = "auto"):
        self.path = Path(path)
        self.format = _detect_format(self.path) if fmt == "auto" else fmt
        self.stats = DataStats()
        if self.format == "jsonl":
            if not self.path.is_file():
                raise FileNotFoundError(f"data.path: JSONL file not found: {self.path}")
            self._rows = []
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self._rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{self.path}:{n}: invalid JSON ({exc.msg})") from None
            self._root = self.path.parent
        else:
            self._rows = self._load_hf(self.format)
            self._root = self.path.parent if self.path.is_file() else self.path
        if len(self._rows) == 0:
            raise ValueError(f"data.path: {self.path} holds no records")
        first = self._rows[0]
        missing = [k for k in ("problem",) if k not in first]
        if missing or not ("image" in first or "image_path" in first):
            raise ValueError(f"data.path: {self.path} lacks fields {missing or ['image or image_path']}")

    def _load_hf(self, fmt):
        import datasets

        if fmt == "disk":
            ds = datasets.load_from_disk(str(self.path))
            return ds["train"] if isinstance(ds, datasets.DatasetDict) else ds
        if fmt == "parquet":
            return datasets.load_dataset("parquet", data_files=str(self.path), split="train")
        if fmt == "hub":
            return datasets.load_dataset(str(self.path), split="train")
        raise ValueError(f"data.format: unknown format {fmt!r}")

    def __len__(self) -> int:
        return len(self._rows)

    def _open_image(self, rec: dict, index: int) -> tuple[Image.Image, str]:
        img = rec.get("image")
        where = rec.get("image_path") or f"record {index}"
        if isinstance(img, Image.Image):
            return img, where
        if isinstance(img, dict) and img.get("bytes"):
            return Image.open(io.BytesIO(img["bytes"])), where
        if rec.get("image_path"):
            p = Path(rec["image_path"])
            p = p if p.is_absolute() else self._root / p
            return Image.open(p), str(p)
        raise ValueError("record has neither image nor image_path")

    def get(self, index: int) -> PromptSample | None:
        """The sample at ``index``, or None (counted and logged) if its image is unusable."""
        rec = self._rows[index]
        where = f"record {index}"
        try:
            img, where = self._open_image(rec, index)
            img.load()  # decode now: truncated files fail here, not later in the processor
            if img.mode != "RGB":
                self.stats.images_converted += 1
                log.warning("data: converted %s image to RGB (%s)", img.mode, where)
                img = to_rgb(img)
        except (OSError, ValueError, SyntaxError) as exc:
            self.stats.images_skipped += 1
            self.stats.skipped_indices.append(index)
            log.warning("data: skipped record %d: bad image %s: %s", index, where, exc)
            return None
        return PromptSample(
            index=index,
            problem=str(rec["problem"]),
            image=img,
            solution=rec.get("solution"),
            image_path=rec.get("image_path"),
        )
