"""Read megatron dist checkpoints piecewise, and the HF config that goes with a checkpoint.

:func:`load_full` loads a chosen set of *global* (TP=1/PP=1) tensors from a torch_dist
checkpoint saved at any TP/PP: the template holds one unsharded ShardedTensor per tensor (a
stacked decoder tensor asks for one layer slice), and dist_checkpointing reassembles it from
whatever shards were written. Only the requested bytes are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from r1vfree_mcore.conversion.errors import ConversionError, name_list
from r1vfree_mcore.conversion.layout import ckpt_location
from r1vfree_mcore.models.common.hf_config import family_of


def load_hf_config(d: str | Path):
    """The HF config of directory ``d``; ConversionError for an unsupported architecture."""
    from transformers import AutoConfig

    path = Path(d) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{d}: no config.json")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{path}: invalid JSON ({exc})") from None
    try:
        family_of(SimpleNamespace(architectures=raw.get("architectures"), model_type=raw.get("model_type")))
    except ValueError as exc:
        raise ConversionError(f"{path}: {exc}") from None
    return AutoConfig.from_pretrained(str(d))


@dataclass(frozen=True)
class TensorMeta:
    global_shape: tuple[int, ...]
    dtype: torch.dtype


def read_metadata(dist_dir: Path):
    """The torch DCP metadata of a torch_dist checkpoint (read it once: ~30 ms per read at 7B)."""
    from torch.distributed.checkpoint import FileSystemReader

    info = dist_dir / "metadata.json"
    if not info.is_file():
        raise ConversionError(f"{dist_dir} is not a megatron dist checkpoint (no metadata.json)")
    backend = json.loads(info.read_text()).get("sharded_backend")
    if backend != "torch_dist":
        raise ConversionError(f"{info}: sharded_backend {backend!r}; only torch_dist checkpoints are supported")
    try:
        return FileSystemReader(str(dist_dir)).read_metadata()
    except Exception as exc:  # corrupt or unfinished checkpoint: say which
        raise ConversionError(f"cannot read checkpoint metadata in {dist_dir}: {type(exc).__name__}: {exc}") from None


def tensors_metadata(metadata) -> dict[str, TensorMeta]:
    """Checkpoint key -> global shape and dtype of every tensor, from :func:`read_metadata`'s result."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    return {k: TensorMeta(tuple(v.size), v.properties.dtype) for k, v in metadata.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


@dataclass(frozen=True)
class Slot:
    """Where one global tensor lives in a dist checkpoint."""

    key: str
    index: int | None  # layer index into a stacked tensor
    layers: int  # stack depth (1 when not stacked)
    shape: tuple[int, ...]  # global TP=1 shape of the tensor itself
    dtype: torch.dtype


def slots(names, metadata: dict) -> dict[str, Slot]:
    """Slot of each global name; ConversionError listing tensors the checkpoint lacks."""
    out, missing = {}, []
    for name in names:
        key, idx = ckpt_location(name)
        if key not in metadata:
            missing.append(name)
            continue
        shape, dtype = tuple(metadata[key].global_shape), metadata[key].dtype
        layers = 1
        if idx is not None:
            layers, shape = shape[0], shape[1:]
            if idx >= layers:
                raise ConversionError(f"checkpoint tensor {key} stacks {layers} layers; the config needs layer {idx}")
        out[name] = Slot(key, idx, layers, shape, dtype)
    if missing:
        raise ConversionError(f"checkpoint lacks {len(missing)} tensors the config needs: {name_list(missing)}")
    return out


def _slab_planner(slabs: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]):
    """A DCP load planner that reads one box ``(offsets, sizes)`` of each requested key.

    megatron's own loader cannot ask a one-process world for part of a stacked tensor (it maps
    the other fragments to "another rank", which is this rank again), so read with torch DCP.
    """
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
    from torch.distributed.checkpoint.planner import LoadPlan
    from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

    class SlabPlanner(DefaultLoadPlanner):
        def create_local_plan(self) -> LoadPlan:
            items = []
            for key, (offsets, sizes) in slabs.items():
                box = ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(sizes))
                items += create_read_items_for_chunk_list(key, self.metadata.state_dict_metadata[key], [box])
            return LoadPlan(items)

        def lookup_tensor(self, index):  # the destination is the box itself, whatever its offset
            return self.state_dict[index.fqn]

    return SlabPlanner(flatten_state_dict=False)


def _mapped_record(path: str, stream, sinfo, slice_file) -> torch.Tensor | None:
    """The tensor a torch.save record holds, over a private mapping of its bytes in the file
    (only the record's small header is read), or None when the record is not one contiguous
    tensor at the start of its one storage (then it is loaded the usual way)."""
    from r1vfree_mcore.conversion.file_map import map_bytes

    meta = torch.load(slice_file(stream, sinfo), map_location="meta", weights_only=True)  # no data read
    if not isinstance(meta, torch.Tensor) or not meta.numel() or not meta.is_contiguous() or meta.storage_offset():
        return None
    # torch.save's zip stores each storage uncompressed; this is how torch.load(mmap=True) finds it.
    archive = torch._C.PyTorchFileReader(slice_file(stream, sinfo))
    data = [r for r in archive.get_all_records() if r.startswith("data/")]
    nbytes = meta.numel() * meta.element_size()
    start = archive.get_record_offset(data[0]) if len(data) == 1 else -1
    if start < 0 or start + nbytes > sinfo.length:
        return None
    return map_bytes(path, sinfo.offset + start, nbytes, meta.dtype, tuple(meta.shape))


def _handoff_reader(dist_dir: Path, metadata):
    """A DCP FileSystemReader that keeps a stored record's tensor when it alone fills a destination.

    torch's reader loads every record into fresh memory and copies it into the preallocated
    destination; when one record *is* the whole destination (a tensor saved unsharded, one
    layer of a stack at TP=1) that copy (and touching the destination's pages) is skipped:
    ``reader.whole[key]`` holds the record's tensor instead, a mapping of its bytes in the file
    when it can be (:func:`_mapped_record`). Part of a mappable record is copied to its place
    from the mapping; other requests go the usual way.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan

    class HandoffReader(FileSystemReader):
        def __init__(self, path):
            super().__init__(path)
            self.whole: dict[str, torch.Tensor] = {}

        def read_metadata(self):  # read once by the caller, not once per load
            return metadata if metadata is not None else super().read_metadata()

        def _whole_record(self, req, planner) -> bool:
            dest = planner.state_dict[req.dest_index.fqn]
            return not any(req.dest_offsets) and tuple(req.lengths) == tuple(dest.shape)

        def read_data(self, plan, planner):
            rest = []
            for req in plan.items:
                md = self.storage_data[req.storage_index]
                if req.type != LoadItemType.TENSOR or md.transform_descriptors:
                    rest.append(req)
                    continue
                path = self.fs.concat_path(self.path, md.relative_path)
                whole = self._whole_record(req, planner)
                with self.fs.create_stream(path, "rb") as stream:
                    t = _mapped_record(str(path), stream, md, self._slice_file)
                    if t is None and whole:
                        t = torch.load(self._slice_file(stream, md), map_location="cpu", weights_only=True)
                if t is None:  # neither mappable nor a whole destination: torch's way
                    rest.append(req)
                    continue
                box = t[tuple(slice(o, o + n) for o, n in zip(req.storage_offsets, req.lengths))]
                if whole and box.numel() == t.numel():  # the record is exactly the box: keep it
                    self.whole[req.dest_index.fqn] = box
                else:  # copy the box to its place (from the mapping: one copy, not torch's two)
                    target = planner.resolve_tensor(req)
                    target.copy_(box)
                    planner.commit_tensor(req, target)
            return super().read_data(LoadPlan(rest, plan.storage_data, plan.planner_data), planner)

    return HandoffReader(str(dist_dir))


def load_full(dist_dir: Path, wanted: dict[str, Slot], metadata=None) -> dict[str, torch.Tensor]:
    """Global tensors ``name -> tensor`` for the given slots; reads only their bytes.
    ``metadata``: the checkpoint's :func:`read_metadata` (read here when None).

    One unit asks for each checkpoint key at most once (a unit is one layer, one block or one
    tensor), so the read is keyed by checkpoint key.
    """
    from torch.distributed.checkpoint import load

    state, slabs, names = {}, {}, {}
    for name, s in wanted.items():
        if s.key in state:
            raise ValueError(f"{s.key} requested twice in one read ({names[s.key]}, {name})")
        lead = () if s.index is None else (1,)
        state[s.key] = torch.empty(lead + s.shape, dtype=s.dtype)
        offsets = (0,) * len(s.shape) if s.index is None else (s.index,) + (0,) * len(s.shape)
        slabs[s.key], names[s.key] = (offsets, lead + s.shape), name
    reader = _handoff_reader(dist_dir, metadata)
    load(state, storage_reader=reader, planner=_slab_planner(slabs), no_dist=True)
    state.update(reader.whole)
    return {names[k]: (t[0] if wanted[names[k]].index is not None else t) for k, t in state.items()}


def load_into_model(model, dist_dir: Path) -> None:
    """Fill a built stage (any TP/PP) from a dist checkpoint, as the trainer's resume does."""
    from megatron.core import dist_checkpointing

    loaded = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(dist_dir))
    model.load_state_dict(loaded["model"], strict=True)
