"""Swin-V2 window attention from timm, wrapped for NCHW feature maps of any size.

The attention itself can run through timm's own matmul-softmax-matmul (``ATTENTION_KERNEL = "timm"``,
the default: measured as fast on CPU at these window sizes) or ``F.scaled_dot_product_attention``
(``"sdpa"``, for GPUs, where the fused kernel pays). Both compute Swin-V2's
scaled cosine attention with the same weights: ``softmax(logit_scale * cos(q, k) + 16 sigmoid(cpb) +
shift mask) v``; the fused form writes ``logit_scale`` into ``q`` and hands bias and mask to the
kernel as one additive mask. Checkpoints do not depend on the choice; results agree to float
rounding (``tests/test_transformer_family.py``).
"""

from __future__ import annotations

import math
import warnings
import weakref
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import SwinTransformerV2Block, WindowAttention

from ..compiling import compile_for_training, is_compiler_error

#: the compiled blocks of each stage (torch.compile, fixed shapes), used only inside compiled_stages():
#: kept beside the modules, not in them, so that state dicts, copies and coding never see them
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_USE_COMPILED = False

ATTENTION_KERNELS = ("sdpa", "timm")
ATTENTION_KERNEL = "timm"  # measured: sdpa no faster on CPU for windows of 16-64 tokens (benchmarks/train_throughput.py)


@contextmanager
def attention_kernel(kind: str) -> Iterator[None]:
    """Run the block with another attention kernel (benchmarks and tests compare them)."""
    global ATTENTION_KERNEL
    if kind not in ATTENTION_KERNELS:
        raise ValueError(f"unknown attention kernel {kind!r}; known: {list(ATTENTION_KERNELS)}")
    old, ATTENTION_KERNEL = ATTENTION_KERNEL, kind
    try:
        yield
    finally:
        ATTENTION_KERNEL = old


def compile_stages(model: nn.Module) -> int:
    """Compile the blocks of every Swin-V2 stage of ``model`` for the steps run inside
    :func:`compiled_stages` (training steps: fixed crop sizes, so ``dynamic=False``); returns how many.

    The stages alone, not the whole model: measured on CPU (``benchmarks/train_throughput.py``), they
    are where compiling pays, and compiling the CNN family's convolutions crashed torch 2.14.1. The
    first step compiles (about a minute on a two-core CPU; seconds once inductor's cache holds it)."""
    n = 0
    for m in model.modules():
        if isinstance(m, SwinV2Stage) and m not in _COMPILED:
            _COMPILED[m] = compile_for_training(m.blocks)
            n += 1
    return n


@contextmanager
def compiled_stages(enabled: bool = True) -> Iterator[None]:
    """Inside: stages given to :func:`compile_stages` run compiled. Outside (validation, coding, any
    image size): eager, exactly as without it."""
    global _USE_COMPILED
    old, _USE_COMPILED = _USE_COMPILED, enabled
    try:
        yield
    finally:
        _USE_COMPILED = old


def _compile_failed(error: BaseException) -> None:
    """No compiler on this machine, or a backend error: warn once, and every stage runs eager from now on."""
    _COMPILED.clear()
    warnings.warn(f"compiling the attention stages failed ({type(error).__name__}: {str(error).splitlines()[0][:200]}); "
                  "training goes on uncompiled (set compile: none to skip the attempt)", RuntimeWarning, stacklevel=3)


class SwinV2WindowAttention(WindowAttention):
    """timm's Swin-V2 window attention (same parameters and buffers) with a fused kernel."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if ATTENTION_KERNEL == "timm":
            return super().forward(x, mask)
        B_, N, C = x.shape
        if self.q_bias is None:
            qkv = self.qkv(x)
        else:
            qkv = F.linear(x, weight=self.qkv.weight, bias=torch.cat((self.q_bias, self.k_bias, self.v_bias)))
        q, k, v = qkv.reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        logit_scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        q = F.normalize(q, dim=-1) * logit_scale
        k = F.normalize(k, dim=-1)
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)
        bias = 16 * torch.sigmoid(bias)  # (heads, N, N)
        if mask is not None:  # (windows, N, N): one additive mask per window of every image
            nw = mask.shape[0]
            bias = (bias.unsqueeze(0) + mask.unsqueeze(1)).unsqueeze(0).expand(B_ // nw, -1, -1, -1, -1)
            bias = bias.reshape(B_, self.num_heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B_, N, C)))


class SwinV2Stage(nn.Module):
    """``depth`` Swin-V2 blocks, alternating plain and shifted windows, on an NCHW tensor.

    ``always_partition`` and ``dynamic_mask`` make timm pad every map to whole windows and build
    the shift mask from the padded size at run time, so any image size works, including maps
    smaller than one window.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, window: int, mlp_ratio: float = 2.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
        self.blocks = nn.Sequential(
            *[
                SwinTransformerV2Block(
                    dim,
                    input_resolution=(window, window),
                    num_heads=num_heads,
                    window_size=window,
                    shift_size=0 if i % 2 == 0 else window // 2,
                    always_partition=True,
                    dynamic_mask=True,
                    mlp_ratio=mlp_ratio,
                )
                for i in range(depth)
            ]
        )
        for block in self.blocks:  # the same module and state, with the fused forward
            block.attn.__class__ = SwinV2WindowAttention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # timm's V2 block works on channels-last maps and adds its own residual
        x = x.permute(0, 2, 3, 1)
        fast: Callable | None = _COMPILED.get(self) if _USE_COMPILED else None
        if fast is not None:
            try:
                return fast(x).permute(0, 3, 1, 2).contiguous()
            except Exception as e:  # the compiler's own failures only; anything else is the caller's
                if not is_compiler_error(e):
                    raise
                _compile_failed(e)
        return self.blocks(x).permute(0, 3, 1, 2).contiguous()
