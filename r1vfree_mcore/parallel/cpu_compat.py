"""Make megatron-core run on a machine without a GPU (CPU tensors, gloo).

megatron-core assumes CUDA in a handful of places: the model-parallel RNG tracker
(``torch.cuda.get_rng_state``), ``torch.cuda.current_device()`` used as a tensor device
(rotary embedding, p2p shapes), literal ``device="cuda"`` tensors (schedules, optimizer, grad
clipping), ``torch.cuda.FloatTensor`` type checks (optimizer) and CUDA streams (DDP).

:func:`apply` patches exactly those, once, and only when ``torch.cuda.is_available()`` is
False (a CUDA build of torch on a GPU-less machine behaves like a CPU build). It is called from
one place: :func:`r1vfree_mcore.parallel.state.initialize_parallel`. Models never import this.
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False


def _is_cuda_device(device) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA devices to CPU and answers CUDA type queries the way megatron expects."""

    _CUDA_TYPES = {
        "torch.FloatTensor": "torch.cuda.FloatTensor",
        "torch.HalfTensor": "torch.cuda.HalfTensor",
        "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
    }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return self._CUDA_TYPES.get(name, name)
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _NoStream:
    """Stands in for torch.cuda.Stream: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, *args, **kwargs):
        return torch.cuda.Event()

    def synchronize(self):
        pass


class _VirtualCudaRng:
    """A CPU generator that plays the role of the GPU RNG for megatron's RNG tracker."""

    def __init__(self):
        self.gen = torch.Generator()

    def get_state(self, *args, **kwargs):
        return self.gen.get_state()

    def set_state(self, state, *args, **kwargs):
        self.gen.set_state(state)

    def manual_seed(self, seed):
        self.gen.manual_seed(int(seed))


def apply() -> bool:
    """Patch megatron-core/torch for CPU execution. No-op with a GPU. Returns True if patched."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    from megatron.core.tensor_parallel import random as mrandom

    rng = _VirtualCudaRng()
    torch.cuda.get_rng_state = rng.get_state
    torch.cuda.random.get_rng_state = rng.get_state
    torch.cuda.set_rng_state = rng.set_state
    _orig_cuda_seed = torch.cuda.manual_seed

    @functools.wraps(_orig_cuda_seed)
    def _seed(seed):
        rng.manual_seed(seed)

    torch.cuda.manual_seed = _seed
    mrandom._set_cuda_rng_state = lambda state, *a, **k: rng.set_state(state)
    mrandom._get_cuda_rng_state = lambda *a, **k: rng.get_state()

    # 0 is what megatron passes on as a device; the mode maps it to the CPU.
    torch.cuda.current_device = lambda: 0
    torch.cuda.set_device = lambda *a, **k: None
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_stream = lambda *a, **k: _NoStream()
    torch.cuda.default_stream = lambda *a, **k: _NoStream()
    torch.cuda.Stream = _NoStream
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()

    global _MODE
    mode = _MODE = _CudaToCpuMode()
    mode.__enter__()  # stays on the mode stack for the life of the process
    _APPLIED = True
    return True


_MODE: _CudaToCpuMode | None = None
_CPU = torch.device("cpu")


@contextlib.contextmanager
def mode_suspended():
    """Run a block (a model forward) without the cuda->cpu TorchFunctionMode.

    The mode costs a Python call on every torch function and Tensor method (~700 per forward of
    a 4-layer decoder: ~10% of a decode step). Megatron's forward code needs it only where it
    passes ``torch.cuda.current_device()`` as a device (scratch buffers, a few lazily built
    tensors); inside this block that returns the CPU device instead. Literal ``device="cuda"``
    tensors, ``.cuda()`` and the optimizer's type checks (schedules, optimizer, DDP) stay outside
    the block and keep the mode. A no-op when the mode is not on top of this thread's mode stack
    (GPU, not applied, other threads, or another mode pushed above it).
    """
    n = torch._C._len_torch_function_stack()
    if _MODE is None or n == 0 or torch._C._get_function_stack_at(n - 1) is not _MODE:
        yield
        return
    torch._C._pop_torch_function_stack()
    saved = torch.cuda.current_device
    torch.cuda.current_device = lambda: _CPU
    try:
        yield
    finally:
        torch.cuda.current_device = saved
        torch._C._push_on_torch_function_stack(_MODE)


def keep_freed_memory(mmap_threshold: int = 256 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Tell glibc malloc to keep freed blocks for reuse instead of returning them to the OS.

    A GRPO step allocates and frees the same few hundred MiB in every phase (KV cache, logits,
    activations); with glibc's defaults most of it is mmapped / trimmed on free and faulted back
    in, zero-filled, by the next phase (measured: ~50-70k page faults and ~0.15 s of system time
    per step of the tiny CPU benchmark). Fixed thresholds stop that; the peak RSS does not grow
    (the memory is reused, not added). For long-lived training processes on CPU only: call it
    from the trainer, not from short tools that free big buffers once. Returns False where
    ``mallopt`` is unavailable (not glibc) or refuses a value.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_threshold)) and bool(mallopt(m_trim_threshold, trim_threshold))


def is_applied() -> bool:
    """Whether :func:`apply` has patched this process."""
    return _APPLIED
