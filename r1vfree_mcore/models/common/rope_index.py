"""3-D (temporal, height, width) mrope position ids, as HF's ``get_rope_index`` (images only)."""

from __future__ import annotations

import torch


def get_rope_index(
    input_ids: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    hf_config,
) -> torch.Tensor:
    """Position ids ``[3, b, s]`` (long) for a batch; padded positions get 0.

    Text tokens advance all three axes by 1. The ``<|image_pad|>`` tokens of an image (grid
    ``t, h, w`` in patches) take ``(start + t', start + row, start + col)`` over the merged grid,
    and the next text token starts at ``start + max(h, w) / merge``. Images are consumed in
    order over the batch; each image's token count is ``t*h*w / merge^2``, so adjacent images
    need no separator. Left or right padding is dropped via ``attention_mask`` (1 = token).
    """
    image_token = hf_config.image_token_id
    merge = hf_config.vision_config.spatial_merge_size
    b, s = input_ids.shape
    out = torch.zeros(3, b, s, dtype=torch.long, device=input_ids.device)
    grids = iter(image_grid_thw.tolist() if image_grid_thw is not None else [])
    for row in range(b):
        keep = attention_mask[row].bool() if attention_mask is not None else torch.ones(s, dtype=torch.bool)
        ids = input_ids[row][keep.to(input_ids.device)].cpu()
        out[:, row, keep.to(out.device)] = _row_positions(ids, image_token, merge, grids, row).to(out.device)
    if next(grids, None) is not None:
        raise ValueError("image_grid_thw has more rows than images in input_ids")
    return out


def _row_positions(ids: torch.Tensor, image_token: int, merge: int, grids, row: int) -> torch.Tensor:
    """Positions ``[3, len(ids)]`` of one unpadded sequence, consuming its images from ``grids``."""
    n_tok = len(ids)
    is_img = ids == image_token
    pos = torch.empty(3, n_tok, dtype=torch.long)
    cur, i = 0, 0
    while i < n_tok:
        nxt = is_img[i:].nonzero()
        j = i + int(nxt[0]) if len(nxt) else n_tok
        pos[:, i:j] = torch.arange(cur, cur + j - i)  # a text run
        cur += j - i
        if j == n_tok:
            break
        try:
            t, h, w = next(grids)
        except StopIteration:
            raise ValueError(f"input_ids row {row} has more <|image_pad|> runs than image_grid_thw rows") from None
        gh, gw = h // merge, w // merge
        n = t * gh * gw
        if j + n > n_tok or not bool(is_img[j : j + n].all()):
            raise ValueError(f"input_ids row {row}: image at token {j} needs {n} <|image_pad|> tokens")
        tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij")
        pos[:, j : j + n] = torch.stack([tt, hh, ww]).reshape(3, -1) + cur
        cur, i = cur + max(gh, gw), j + n
    return pos
