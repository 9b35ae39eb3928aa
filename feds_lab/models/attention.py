"""Swin-V2 window attention from timm, wrapped for NCHW feature maps of any size."""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.swin_transformer_v2 import SwinTransformerV2Block


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # timm's V2 block works on channels-last maps and adds its own residual
        return self.blocks(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
