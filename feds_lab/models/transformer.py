"""The transformer codec family: every stage of ``g_a`` and ``g_s`` is a stack of Swin-V2 blocks.

FEDS reports that its distillation "generalises to other transformer-based codecs" (Fu et al. 2025,
arXiv 2503.06399). This family is such a codec, in the manner of the Symmetrical TransFormer
[STF: Zou, Song, Zhang, CVPR 2022, "The Devil Is in the Details: Window-based Attention for
Image Compression"] and of TCM [Liu, Sun, Katto, CVPR 2023, "Learned Image Compression with Mixed
Transformer-CNN Architectures"]: window attention at every scale of both transforms, patch merging
on the way down, patch splitting (pixel shuffle) on the way up. It keeps the package's skeleton, so
a transformer teacher pairs with a CNN student feature by feature (same names, same spatial sizes)::

    g_a:  x ─PM(3→d1)─SW─► ga1 (x/2) ─PM─SW─► ga2 (x/4) ─PM─SW─► ga3 (x/8) ─PM(d3→M)─SW─► y (x/16)
    g_s:  y_hat ─SW─PS(M→d3)─► gs1 (x/8) ─SW─PS─► gs2 (x/4) ─SW─PS(d2→d1)─► gs3 (x/2)
            ─SW─subpel(d1→3)─► x_hat

    PM = patch merging: a 2x2 stride-2 convolution, then LayerNorm over channels
    PS = patch split:   a 1x1 convolution to 4x the output width, pixel shuffle, LayerNorm
    SW = SwinV2Stage:   ``depth`` Swin-V2 blocks (timm), plain and shifted windows alternating;
                        the identity where the depth is 0

Widths ``dims = (d1, d2, d3)`` at x/2, x/4, x/8 and ``M`` at x/16; ``depths`` and ``heads`` are
given per ``g_a`` stage (x/2, x/4, x/8, x/16) and mirrored in ``g_s``, as STF mirrors its encoder.
The entropy model is the package's (``feds_lab.models.entropy``), the same as the CNN family's.

What follows STF: the four-stage symmetric layout, attention before each upsampling in ``g_s``,
non-overlapping 2x2 patch embedding/merging, a linear patch split with pixel shuffle. What is ours:
Swin-V2 blocks (residual post-norm, cosine attention, log-spaced position bias) instead of STF's
Swin-V1 ones, reused from :class:`feds_lab.models.attention.SwinV2Stage`, so that any image size
works (timm pads to whole windows and builds the shift mask at run time); the V2 order in merging
(linear, then norm); the final ``subpel_conv3x3`` (TCM's and Cheng2020's, for the CNN family too)
in place of STF's 5x5 conv, shuffle and 3x3 conv; a 2x MLP ratio; timm's initialisation with
zeroed residual post-norms; the entropy model (STF and TCM code y with channel-wise autoregressive
models); all the preset sizes, among them a student without attention at x/2 (depth 0 there),
where attention costs most. Make each depth 0 or at least 2: non-overlapping merging and 1x1
splitting do not cross window borders, so a stage of one unshifted block would leave blocks of
16 x ``window`` pixels to be coded independently of each other.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn as nn
from compressai.layers import subpel_conv3x3
from timm.layers import LayerNorm2d
from timm.models.swin_transformer_v2 import SwinTransformerV2Block

from .attention import SwinV2Stage
from .base import FeatureCodec, StagedTransform
from .entropy import build_latent_codec
from .registry import register_family


class PatchMerging(nn.Sequential):
    """(B, C_in, H, W) -> (B, C_out, H/2, W/2).

    A 2x2 stride-2 convolution is timm's ``PatchMerging`` (concatenate each 2x2 neighbourhood, then
    a linear map) on NCHW maps; with ``C_in = 3`` it is STF's patch embedding.
    """

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, cout, kernel_size=2, stride=2), LayerNorm2d(cout))


class PatchSplit(nn.Sequential):
    """(B, C_in, H, W) -> (B, C_out, 2H, 2W): STF's patch split (a linear map, then pixel shuffle)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(nn.Conv2d(cin, 4 * cout, kernel_size=1), nn.PixelShuffle(2), LayerNorm2d(cout))


class TransformerCodec(FeatureCodec):
    """STF/TCM-style codec of Swin-V2 stages; see the module docstring for the data flow.

    Args:
        dims: widths (d1, d2, d3) of the features at x/2, x/4, x/8.
        M: latent width (channels of y at x/16).
        depths: Swin-V2 blocks per ``g_a`` stage (x/2, x/4, x/8, x/16); ``g_s`` mirrors them.
        heads: attention heads per ``g_a`` stage; each width must divide by its heads.
        window: attention window, in tokens, at every scale.
        mlp_ratio: hidden width of each block's MLP, as a multiple of its width.
        entropy_model: ``checkerboard`` or ``hyperprior`` (``feds_lab.models.entropy``).
        hyper_channels: width of the hyper-latent z (default d3).
    """

    def __init__(
        self,
        dims: Sequence[int] = (96, 128, 192),
        M: int = 192,
        depths: Sequence[int] = (2, 2, 2, 2),
        heads: Sequence[int] = (2, 4, 4, 4),
        window: int = 8,
        mlp_ratio: float = 2.0,
        entropy_model: str = "checkerboard",
        hyper_channels: int | None = None,
        **_ignored,
    ):
        super().__init__()
        dims, depths, heads = [int(d) for d in dims], [int(d) for d in depths], [int(h) for h in heads]
        M = int(M)
        if len(dims) != 3 or len(depths) != 4 or len(heads) != 4:
            raise ValueError(
                f"expected 3 dims (x/2, x/4, x/8) and 4 depths and heads (x/2 .. x/16), "
                f"got dims={dims}, depths={depths}, heads={heads}"
            )
        if min(depths) < 0:
            raise ValueError(f"depths must be non-negative, got {depths}")
        d1, d2, d3 = dims
        widths = [d1, d2, d3, M]  # per g_a stage, after its merging

        def swin(stage: int) -> nn.Module:
            if depths[stage] == 0:  # skip SwinV2Stage's two layout copies of a large map
                return nn.Identity()
            return SwinV2Stage(widths[stage], depths[stage], heads[stage], window, mlp_ratio)

        self.g_a = StagedTransform(
            [
                nn.Sequential(PatchMerging(3, d1), swin(0)),
                nn.Sequential(PatchMerging(d1, d2), swin(1)),
                nn.Sequential(PatchMerging(d2, d3), swin(2)),
                nn.Sequential(PatchMerging(d3, M), swin(3)),
            ],
            ("ga1", "ga2", "ga3", "y"),
        )
        # attention at a scale, then up to the next (STF's synthesis order)
        self.g_s = StagedTransform(
            [
                nn.Sequential(swin(3), PatchSplit(M, d3)),
                nn.Sequential(swin(2), PatchSplit(d3, d2)),
                nn.Sequential(swin(1), PatchSplit(d2, d1)),
                nn.Sequential(swin(0), subpel_conv3x3(d1, 3, 2)),
            ],
            ("gs1", "gs2", "gs3", "x_hat"),
        )
        hyper_channels = int(hyper_channels or d3)
        self.latent_codec = build_latent_codec(M, hyper_channels, entropy_model)
        _init_like_timm(self.g_a)
        _init_like_timm(self.g_s)
        self.config = dict(
            dims=dims, M=M, depths=depths, heads=heads, window=window, mlp_ratio=mlp_ratio,
            entropy_model=entropy_model, hyper_channels=hyper_channels,
            feature_channels=dict(ga1=d1, ga2=d2, ga3=d3, y=M, gs1=d3, gs2=d2, gs3=d1),
        )


def _init_like_timm(transform: nn.Module) -> None:
    """timm's ``SwinTransformerV2`` initialisation, which bare blocks do not get.

    Linear layers from a narrow truncated normal, and the residual post-norms at zero, so that every
    block starts as the identity: without it the untrained residual streams grow stage by stage.
    """
    for m in transform.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, SwinTransformerV2Block):
            for norm in (m.norm1, m.norm2):
                nn.init.zeros_(norm.weight)
                nn.init.zeros_(norm.bias)


@register_family("transformer")
def build_transformer(**sizes) -> TransformerCodec:
    """Builder for ``build_model(role, preset, family="transformer")``; sizes from presets.py."""
    return TransformerCodec(**sizes)


__all__ = ["PatchMerging", "PatchSplit", "TransformerCodec", "build_transformer"]
