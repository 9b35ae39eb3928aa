"""Rate-distortion loss, in CompressAI's convention (docs/method.md "Losses").

``L_RD = bpp + lambda * 255^2 * MSE`` for MSE-optimised models, ``bpp + lambda * (1 - MS-SSIM)``
for the MS-SSIM variant. ``bpp`` here is the *estimate* from the entropy model's likelihoods
(the quantity training minimises); evaluation reports real bitstream lengths beside it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_msssim import ms_ssim

METRICS = ("mse", "ms-ssim")

# pytorch_msssim's five-scale MS-SSIM with an 11-px window needs the shorter side > (11 - 1) * 2**4.
MS_SSIM_MIN_SIDE = 161


def bpp_from_likelihoods(likelihoods: dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Estimated rate in bits per pixel: ``sum over all tensors of -log2 p / num_pixels``.

    likelihoods: {name: tensor of probabilities of the quantised symbols}, e.g. {"y", "z"}.
    num_pixels: ``B * H * W`` of the image batch, so the result is the batch-average bpp
    (CompressAI's convention). Returns a scalar tensor in bpp.
    """
    if not likelihoods:
        raise ValueError("no likelihoods given")
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
    bits = sum(-torch.log2(p).sum() for p in likelihoods.values())
    return bits / num_pixels


class RateDistortionLoss(nn.Module):
    """``L_RD`` for one lambda.

    forward(output, target): output is a codec's forward dict (``x_hat`` (B,3,H,W) in [0,1],
    ``likelihoods``), target the input batch (B,3,H,W) in [0,1]. Returns a dict:

    - ``loss``: the scalar to minimise;
    - ``bpp_loss``: estimated rate, bpp;
    - ``mse_loss`` (metric ``mse``): MSE on the [0,1] scale; or
    - ``ms_ssim_loss`` (metric ``ms-ssim``): ``1 - MS-SSIM`` (lower is better, ours: CompressAI
      stores MS-SSIM itself under that key), with ``ms_ssim`` beside it.
    """

    def __init__(self, lmbda: float, metric: str = "mse"):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"unknown distortion metric {metric!r}; known: {list(METRICS)}")
        if lmbda < 0:
            raise ValueError(f"lambda must be non-negative, got {lmbda}")
        self.lmbda = float(lmbda)
        self.metric = metric

    def forward(self, output: dict[str, Any], target: torch.Tensor) -> dict[str, torch.Tensor]:
        x_hat = output["x_hat"]
        if x_hat.shape != target.shape:
            raise ValueError(f"x_hat {tuple(x_hat.shape)} and target {tuple(target.shape)} differ in shape")
        b, _, h, w = target.shape
        out = {"bpp_loss": bpp_from_likelihoods(output["likelihoods"], b * h * w)}
        if self.metric == "mse":
            out["mse_loss"] = F.mse_loss(x_hat, target)
            out["loss"] = out["bpp_loss"] + self.lmbda * 255**2 * out["mse_loss"]
        else:
            if min(h, w) < MS_SSIM_MIN_SIDE:
                raise ValueError(
                    f"MS-SSIM needs images at least {MS_SSIM_MIN_SIDE} px on the shorter side "
                    f"(five scales, 11-px window); got {h}x{w}. Use larger crops or metric='mse'."
                )
            out["ms_ssim"] = ms_ssim(x_hat, target, data_range=1.0)
            out["ms_ssim_loss"] = 1 - out["ms_ssim"]
            out["loss"] = out["bpp_loss"] + self.lmbda * out["ms_ssim_loss"]
        return out
