"""torch.compile for training steps, shared by the Swin-V2 stages and the feature alignment loss.

Training steps see one crop size, so graphs are compiled for fixed shapes. A distillation step that
measures each term's gradient backpropagates through one graph more than once (``retain_graph``);
compiled backward passes that donate their saved buffers (overwrite them in place) refuse that, so
donation is switched off, process-wide, from the first compile on (it only saves those buffers' memory).

Inductor's on-disk cache does not tell a graph compiled with donation from one compiled without: a
backward compiled elsewhere with donated buffers, found in the cache, overwrites tensors a later pass
still reads, and the gradients come out silently wrong (measured with torch 2.14.1, ``tests/test_compiled_stages.py``).
So our graphs live in their own cache folder, ``feds-lab`` inside inductor's (``TORCHINDUCTOR_CACHE_DIR``
or its default), written only by compiles made here, all without donation.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

CACHE_SUBDIR = "feds-lab"


def compile_for_training(fn: Callable) -> Callable:
    """``torch.compile(fn)`` for fixed shapes, safe for a graph backpropagated more than once."""
    torch._functorch.config.donated_buffer = False
    _own_cache_dir()
    return torch.compile(fn, dynamic=False)


def _own_cache_dir() -> None:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    base = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()
    if os.path.basename(os.path.normpath(base)) != CACHE_SUBDIR:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, CACHE_SUBDIR)


def is_compiler_error(error: BaseException) -> bool:
    """Whether ``error`` is the compiler's own (no C++ compiler, a backend failure), not the caller's."""
    return type(error).__module__.startswith(("torch._dynamo", "torch._inductor"))
