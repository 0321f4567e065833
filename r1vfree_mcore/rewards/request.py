"""What the policy sends to the reward side: one :class:`RewardRequest` per sampled completion."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RewardRequest:
    """One completion to score.

    ``prompt`` is the problem text (without the format instruction), ``completion`` the policy's
    full generated text. ``image`` is PNG/JPEG bytes (works across nodes), a path the reward rank
    can read, or None for text-only samples. Pickled as is over the reward channel.
    """

    sample_id: int | str
    prompt: str
    completion: str
    image: bytes | str | None = None

    def __post_init__(self):
        if not isinstance(self.prompt, str):
            raise TypeError(f"RewardRequest.prompt of sample {self.sample_id!r} must be str")
        if not isinstance(self.completion, str):
            raise TypeError(f"RewardRequest.completion of sample {self.sample_id!r} must be str")
        if self.image is not None and not isinstance(self.image, (bytes, str, Path)):
            raise TypeError(
                f"RewardRequest.image of sample {self.sample_id!r} must be bytes, a path or None, "
                f"got {type(self.image).__name__}"
            )

    def load_image(self):
        """The image as an RGB PIL image (None when the sample has none)."""
        if self.image is None:
            return None
        from PIL import Image

        try:
            src = io.BytesIO(self.image) if isinstance(self.image, bytes) else str(self.image)
            with Image.open(src) as img:
                return img.convert("RGB")
        except Exception as exc:
            where = "bytes" if isinstance(self.image, bytes) else f"path {self.image}"
            raise ValueError(f"cannot load the image ({where}) of sample {self.sample_id!r}: {exc}") from exc
