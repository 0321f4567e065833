"""A packed row re-laid as padded rows whose sequences share their common prompt prefix.

For backends without THD attention (the local spec on CPU) a packed row ``[1, T]`` with
``cu_seqlens`` is run as rows instead of with a ``[T, T]`` block-diagonal mask. GRPO packs the G
completions of one prompt back to back, and causal attention makes the prompt's hidden states
identical in every copy; so consecutive sequences with a common prefix (same tokens, same mrope
positions, and the same images, all inside that prefix) become one row::

    [prefix | suffix_1 | suffix_2 | ... | suffix_G]

where ``suffix_i`` sees the prefix and itself (causal), never another suffix. The prefix is
computed once instead of G times; in backward its gradient is the sum over the copies, exactly as
with G separate rows. Such groups (and sequences sharing nothing, like the alignment tokens packing
appends) sit back to back in one row as separate attention blocks while that is cheaper than
another row padded to the widest one. :func:`plan_prefix_rows` returns the rows, their boolean attention mask
(True = masked, the local backends' format), which images to keep, and the index that maps each
packed position to its (row, column), so logits come back as ``[1, T, ...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PrefixRows:
    input_ids: torch.Tensor  # [R, W]
    position_ids: torch.Tensor  # [3, R, W]
    mask: torch.Tensor  # [R, 1, W, W] bool, True = masked
    images: list[int]  # indices of the images (image_grid_thw rows) the rows use, in order
    rows: torch.Tensor  # [T] row of each packed position
    cols: torch.Tensor  # [T] column of each packed position


def _segment_images(ids: torch.Tensor, cu: list[int], image_token: int, tokens_per_image: list[int]):
    """Image indices of each segment, and where each segment's last image token ends (relative)."""
    is_img = ids == image_token
    out, ends, k = [], [], 0
    for a, b in zip(cu[:-1], cu[1:]):
        where = is_img[a:b].nonzero().flatten()
        need, mine = len(where), []
        while need > 0:
            if k >= len(tokens_per_image):
                raise ValueError("packed row holds more <|image_pad|> tokens than image_grid_thw covers")
            mine.append(k)
            need -= tokens_per_image[k]
            k += 1
        if need < 0:
            raise ValueError("<|image_pad|> tokens of a packed sequence do not match image_grid_thw")
        out.append(mine)
        ends.append(int(where[-1]) + 1 if len(where) else 0)
    if k != len(tokens_per_image):
        raise ValueError(f"image_grid_thw has {len(tokens_per_image)} images but the packed row uses {k}")
    return out, ends


def _common_prefix(x: torch.Tensor, y: torch.Tensor) -> int:
    n = min(x.shape[-1], y.shape[-1])
    diff = (x[..., :n] != y[..., :n]).reshape(-1, n).any(0).nonzero()
    return int(diff[0]) if len(diff) else n


def plan_prefix_rows(input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor,
                     image_token: int, image_chunks: list[torch.Tensor], image_grid_thw: torch.Tensor | None,
                     merge: int, pad_token: int, token_cost: float = 1.0, pair_cost: float = 0.0) -> PrefixRows:
    """Rows for packed ``input_ids`` ``[1, T]`` / ``position_ids`` ``[3, 1, T]`` (see module doc).

    ``image_chunks``: each image's patch rows (to compare pictures, not just token ids).
    ``token_cost`` / ``pair_cost``: FLOPs of one token through the linear layers and of one
    query-key pair of attention. A row's attention is computed densely (``W x W``), so a sequence
    joins its predecessor's row only while the prefix tokens it saves cost more than the attention
    pairs its suffix adds (long suffixes x many copies would otherwise make rows too wide).
    """
    ids, pos = input_ids[0], position_ids[:, 0]
    cu = [int(c) for c in cu_seqlens.tolist()]
    total = ids.shape[0]
    if cu[0] != 0 or cu[-1] != total:
        raise ValueError(f"cu_seqlens must run from 0 to the packed length {total}, got {cu[0]}..{cu[-1]}")
    per_image = [] if image_grid_thw is None else (image_grid_thw.prod(-1) // merge**2).tolist()
    seg_imgs, img_ends = _segment_images(ids, cu, image_token, per_image)

    def same_images(i: int, j: int) -> bool:
        a, b = seg_imgs[i], seg_imgs[j]
        return len(a) == len(b) and all(torch.equal(image_grid_thw[x], image_grid_thw[y])
                                        and torch.equal(image_chunks[x], image_chunks[y]) for x, y in zip(a, b))

    keys = torch.cat([ids[None].long(), pos.long()])  # tokens and mrope positions must both agree
    groups: list[list] = []  # [leader, members, prefix length, row width]
    for k in range(len(cu) - 1):
        a, b = cu[k], cu[k + 1]
        if groups:
            lead, members, plen, width = groups[-1]
            la = cu[lead]
            common = min(plen, _common_prefix(keys[:, la:la + plen], keys[:, a:b]))
            # Shrinking the prefix moves (plen - common) tokens per member out of it.
            new_width = common + (width - plen) + (plen - common) * len(members) + (b - a - common)
            saved = token_cost * (width + (b - a) - new_width)  # vs. the sequence in a row of its own
            extra = pair_cost * (new_width**2 - width**2 - (b - a) ** 2)
            if (common > 0 and max(img_ends[lead], img_ends[k]) <= common and same_images(lead, k)
                    and saved > extra):
                members.append(k)
                groups[-1][2:] = [common, new_width]
                continue
        groups.append([k, [k], b - a, b - a])

    # Groups go into a row back to back (each its own attention block) while that costs less
    # than another row padded to the widest: e.g. the few tokens packing adds for alignment.
    def layout_cost(widths: list[int]) -> float:
        w = max(widths)
        return len(widths) * (token_cost * w + pair_cost * w * w)

    rows: list[list[int]] = []
    widths: list[int] = []
    for g, (*_, w) in enumerate(groups):
        if rows and layout_cost(widths[:-1] + [widths[-1] + w]) <= layout_cost(widths + [w]):
            rows[-1].append(g)
            widths[-1] += w
        else:
            rows.append([g])
            widths.append(w)

    n, width = len(rows), max(widths)
    out_ids = ids.new_full((n, width), pad_token)
    out_pos = pos.new_zeros((3, n, width))
    block = torch.full((n, width), -1)  # the group of each position; -1 = padding
    owner = torch.full((n, width), -1)  # the sequence of a suffix token; -1 = shared prefix
    row_of, col_of = torch.empty(total, dtype=torch.long), torch.empty(total, dtype=torch.long)
    for r, row in enumerate(rows):
        col = 0
        for g in row:
            lead, members, plen, w = groups[g]
            la = cu[lead]
            out_ids[r, col:col + plen], out_pos[:, r, col:col + plen] = ids[la:la + plen], pos[:, la:la + plen]
            block[r, col:col + w] = g
            start = col + plen
            for m in members:
                a, b = cu[m], cu[m + 1]
                row_of[a:b] = r
                col_of[a:a + plen] = torch.arange(col, col + plen)
                col_of[a + plen:b] = torch.arange(start, start + b - a - plen)
                out_ids[r, start:start + b - a - plen] = ids[a + plen:b]
                out_pos[:, r, start:start + b - a - plen] = pos[:, a + plen:b]
                owner[r, start:start + b - a - plen] = m
                start += b - a - plen
            col += w
    bq, bk = block[:, :, None], block[:, None, :]
    oq, ok = owner[:, :, None], owner[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    visible = causal & (bk == bq) & (bk >= 0) & ((ok == -1) | (ok == oq))
    visible |= torch.eye(width, dtype=torch.bool) & (bq < 0)  # padding queries see themselves: no empty row
    dev = input_ids.device
    return PrefixRows(out_ids, out_pos, (~visible)[:, None].to(dev), [i for g in groups for i in seg_imgs[g[0]]],
                      row_of.to(dev), col_of.to(dev))
