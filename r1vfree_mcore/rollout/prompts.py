"""Turn prompt samples into a model batch: chat template, processor, G copies per prompt."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from r1vfree_mcore.data.dataset import PromptSample, build_messages
from r1vfree_mcore.models.common.repeats import collapse_repeats


@dataclass
class PromptBatch:
    """N = prompts x G sequences, prompts left-padded to one length P."""

    input_ids: torch.Tensor  # [N, P]
    attention_mask: torch.Tensor  # [N, P]
    pixel_values: torch.Tensor  # [sum of patches over the N images, C*T*p*p]
    image_grid_thw: torch.Tensor  # [N, 3] one image per sequence
    prompt_index: list[int]  # dataset index of each sequence's prompt
    group: torch.Tensor  # [N] group id (0..prompts-1), G consecutive rows per group
    problems: list[str]
    images_png: list[bytes]  # one per prompt, what the reward side sees

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0]


def _png(img) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def repeat_images(pixel_values: torch.Tensor, grid_thw: torch.Tensor, times: int):
    """Repeat each image's patch rows ``times`` times, keeping images in sequence order."""
    sizes = grid_thw.prod(-1).tolist()
    chunks = torch.split(pixel_values, sizes)
    pv = torch.cat([c for c in chunks for _ in range(times)])
    return pv, grid_thw.repeat_interleave(times, dim=0)


def build_prompt_batch(samples: list[PromptSample], processor, group_size: int) -> PromptBatch:
    """Apply the original R1V-Free template to each sample and replicate it ``group_size`` times."""
    texts = [
        processor.apply_chat_template(build_messages(s.problem), tokenize=False, add_generation_prompt=True)
        for s in samples
    ]
    enc = processor(text=texts, images=[s.image for s in samples], return_tensors="pt",
                    padding=True, padding_side="left")
    pv, thw = repeat_images(enc["pixel_values"], enc["image_grid_thw"], group_size)
    return PromptBatch(
        input_ids=enc["input_ids"].repeat_interleave(group_size, 0),
        attention_mask=enc["attention_mask"].repeat_interleave(group_size, 0),
        pixel_values=pv,
        image_grid_thw=thw,
        prompt_index=[s.index for s in samples for _ in range(group_size)],
        group=torch.arange(len(samples)).repeat_interleave(group_size),
        problems=[s.problem for s in samples],
        images_png=[_png(s.image) for s in samples],
    )


def repeated_rows(batch: PromptBatch) -> tuple[list[int], torch.Tensor]:
    """Collapse runs of identical consecutive sequences (the G copies of a prompt).

    Returns ``(keep, inverse)``: ``keep`` the first row of each run, ``inverse[i]`` (``[N]`` long)
    the position in ``keep`` of row ``i``'s run. Rows are equal when their token ids, attention
    masks, image grids and image patches all are.
    """
    sizes = batch.image_grid_thw.prod(-1).tolist()
    images = torch.split(batch.pixel_values, sizes)

    def same(i: int, j: int) -> bool:
        return (torch.equal(batch.input_ids[i], batch.input_ids[j])
                and torch.equal(batch.attention_mask[i], batch.attention_mask[j])
                and torch.equal(batch.image_grid_thw[i], batch.image_grid_thw[j])
                and torch.equal(images[i], images[j]))

    keep, inverse = collapse_repeats(batch.num_sequences, same)
    return keep, torch.tensor(inverse)


def select_rows(batch: PromptBatch, rows: list[int]) -> PromptBatch:
    """The sub-batch of sequences ``rows`` (their images included)."""
    sizes = batch.image_grid_thw.prod(-1).tolist()
    images = torch.split(batch.pixel_values, sizes)
    return PromptBatch(
        input_ids=batch.input_ids[rows],
        attention_mask=batch.attention_mask[rows],
        pixel_values=torch.cat([images[i] for i in rows]),
        image_grid_thw=batch.image_grid_thw[rows],
        prompt_index=[batch.prompt_index[i] for i in rows],
        group=batch.group[rows],
        problems=batch.problems,
        images_png=batch.images_png,
    )


def prompt_lengths(batch: PromptBatch) -> torch.Tensor:
    """Real (unpadded) prompt length of each sequence, image tokens included."""
    return batch.attention_mask.sum(-1)
