"""The CNN codec family: Cheng2020-style residual transforms, Swin-V2 attention in the teacher.

Teacher (FEDS, Fu et al. 2025, arXiv 2503.06399): a learned codec "made stronger with
Swin-Transformer-V2 attention modules, additional residual blocks and expanded latent channels".
Student: the same skeleton, narrower, one residual block per stage, no attention. The transforms
follow Cheng2020 [Cheng2020] with CompressAI's layers; the exact layout is ours (docs/method.md).

::

    g_a:  x ─RBs(3→N)─► ga1 (x/2) ─RBs─[Swin]─► ga2 (x/4) ─RBs─[Swin]─► ga3 (x/8)
            ─conv s2 (N→M)─[Swin]─► y (x/16)
    g_s:  y_hat ─[Swin]─RBup(M→N)─► gs1 (x/8) ─[Swin]─RBup─► gs2 (x/4) ─[Swin]─RBup─► gs3 (x/2)
            ─subpel(N→3)─► x_hat

``RBs`` is a ``ResidualBlockWithStride`` followed by ``res_blocks - 1`` ``ResidualBlock``;
``RBup`` a ``ResidualBlockUpsample`` followed by ``res_blocks - 1`` ``ResidualBlock``.
"""

from __future__ import annotations

import torch.nn as nn
from compressai.layers import ResidualBlock, ResidualBlockUpsample, ResidualBlockWithStride, conv3x3, subpel_conv3x3

from .attention import SwinV2Stage
from .base import FeatureCodec, StagedTransform
from .entropy import build_latent_codec
from .registry import register_family


@register_family("cnn")
class CNNCodec(FeatureCodec):
    def __init__(
        self,
        N: int = 128,
        M: int = 192,
        res_blocks: int = 1,
        attention: bool = False,
        attn_depth: int = 2,
        attn_heads: int = 4,
        window: int = 8,
        entropy_model: str = "checkerboard",
        hyper_channels: int | None = None,
        **_ignored,
    ):
        super().__init__()
        if res_blocks < 1:
            raise ValueError("res_blocks must be at least 1")

        def swin(dim: int) -> list[nn.Module]:
            return [SwinV2Stage(dim, attn_depth, attn_heads, window)] if attention else []

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [ResidualBlockWithStride(cin, cout, stride=2)] + [ResidualBlock(cout, cout) for _ in range(res_blocks - 1)]

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [ResidualBlockUpsample(cin, cout, 2)] + [ResidualBlock(cout, cout) for _ in range(res_blocks - 1)]

        self.g_a = StagedTransform(
            [
                nn.Sequential(*down(3, N)),
                nn.Sequential(*down(N, N), *swin(N)),
                nn.Sequential(*down(N, N), *swin(N)),
                nn.Sequential(conv3x3(N, M, stride=2), *swin(M)),
            ],
            ("ga1", "ga2", "ga3", "y"),
        )
        self.g_s = StagedTransform(
            [
                nn.Sequential(*swin(M), *up(M, N)),
                nn.Sequential(*swin(N), *up(N, N)),
                nn.Sequential(*swin(N), *up(N, N)),
                subpel_conv3x3(N, 3, 2),
            ],
            ("gs1", "gs2", "gs3", "x_hat"),
        )
        hyper_channels = hyper_channels or N
        self.latent_codec = build_latent_codec(M, hyper_channels, entropy_model)
        self.config = dict(
            N=N, M=M, res_blocks=res_blocks, attention=attention, attn_depth=attn_depth,
            attn_heads=attn_heads, window=window, entropy_model=entropy_model, hyper_channels=hyper_channels,
            feature_channels=dict(ga1=N, ga2=N, ga3=N, y=M, gs1=N, gs2=N, gs3=N),
        )
