"""Entropy models, assembled from CompressAI's latent codecs (composition, not subclassing).

``checkerboard`` (default): a mean-scale Gaussian hyperprior whose parameters are refined by a
two-pass checkerboard spatial context [He2021], decoded in parallel. ``hyperprior``: the same
hyperprior without spatial context [Minnen2018 without the autoregressive part].

::

             ┌───┐ z ┌────┐ z_hat ┌───┐ params
        y ─┬─┤h_a├───┤ EB ├───────┤h_s├────────┐
           │ └───┘   └────┘       └───┘        ▼
           └──────────────────────────────► [checkerboard ctx] ─► GC ─► y_hat
"""

from __future__ import annotations

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck
from compressai.latent_codecs import (
    CheckerboardLatentCodec,
    GaussianConditionalLatentCodec,
    HyperLatentCodec,
    HyperpriorLatentCodec,
)
from compressai.layers import CheckerboardMaskedConv2d, conv3x3, subpel_conv3x3

ENTROPY_MODELS = ("checkerboard", "hyperprior")

#: Images are padded to this multiple before coding: y lives at x/16 and z at x/64.
PAD_MULTIPLE = 64


def hyper_transforms(M: int, Nh: int) -> tuple[nn.Module, nn.Module]:
    """h_a: y (M ch, x/16) -> z (Nh ch, x/64); h_s: z -> 2M hyper parameters at x/16."""
    h_a = nn.Sequential(
        conv3x3(M, Nh),
        nn.LeakyReLU(inplace=True),
        conv3x3(Nh, Nh, stride=2),
        nn.LeakyReLU(inplace=True),
        conv3x3(Nh, Nh, stride=2),
    )
    h_s = nn.Sequential(
        conv3x3(Nh, Nh),
        nn.LeakyReLU(inplace=True),
        subpel_conv3x3(Nh, Nh * 3 // 2, 2),
        nn.LeakyReLU(inplace=True),
        subpel_conv3x3(Nh * 3 // 2, M * 3 // 2, 2),
        nn.LeakyReLU(inplace=True),
        conv3x3(M * 3 // 2, 2 * M),
    )
    return h_a, h_s


def build_latent_codec(M: int, Nh: int, kind: str = "checkerboard") -> HyperpriorLatentCodec:
    """The latent codec for a latent of ``M`` channels, with a hyper-latent of ``Nh`` channels."""
    if kind not in ENTROPY_MODELS:
        raise ValueError(f"unknown entropy model {kind!r}; known: {list(ENTROPY_MODELS)}")
    h_a, h_s = hyper_transforms(M, Nh)
    hyper = HyperLatentCodec(entropy_bottleneck=EntropyBottleneck(Nh), h_a=h_a, h_s=h_s, quantizer="ste")
    if kind == "hyperprior":
        y_codec = GaussianConditionalLatentCodec(quantizer="ste")
    else:
        context = CheckerboardMaskedConv2d(M, 2 * M, kernel_size=5, stride=1, padding=2)
        # the layer masks its weight in place on every call; mask it now so that the weights (and
        # the model's fingerprint) are the same before and after the first forward pass
        with torch.no_grad():
            context.weight.mul_(context.mask)
        y_codec = CheckerboardLatentCodec(
            latent_codec={"y": GaussianConditionalLatentCodec(quantizer="ste")},
            # pointwise, as CheckerboardLatentCodec requires; input is [context 2M, hyper 2M]
            entropy_parameters=nn.Sequential(
                nn.Conv2d(4 * M, 10 * M // 3, 1),
                nn.LeakyReLU(inplace=True),
                nn.Conv2d(10 * M // 3, 8 * M // 3, 1),
                nn.LeakyReLU(inplace=True),
                nn.Conv2d(8 * M // 3, 2 * M, 1),
            ),
            context_prediction=context,
        )
    return HyperpriorLatentCodec(latent_codec={"y": y_codec, "hyper": hyper})
