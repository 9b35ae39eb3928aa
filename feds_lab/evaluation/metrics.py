"""Image quality on 8-bit RGB: PSNR, MS-SSIM and MS-SSIM in dB.

Both images are first quantised to the 8-bit levels a decoder would write to disk,
``round(clamp(x, 0, 1) * 255)``, so that a learned codec's float output and a classical codec's
uint8 output are measured the same way.

MS-SSIM at its standard five scales needs the shorter side of the image to exceed 160 px (four
2x downsamplings of an 11-tap window). On a smaller image :func:`ms_ssim` returns NaN and warns,
rather than padding: padding would add border pixels that both images share and bias the score
upwards. Means over a set of images then come out NaN too, on purpose: a mean over the subset of
images that happened to be large enough would be a different metric.
"""

from __future__ import annotations

import math
import warnings

import torch
from pytorch_msssim import ms_ssim as _ms_ssim

#: The shorter image side must exceed this for five-scale MS-SSIM with an 11-tap window.
MS_SSIM_MIN_SIDE = 161


def levels_8bit(x: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1] -> its 8-bit levels 0..255, as float64 (exact integers)."""
    return torch.round(x.detach().double().clamp(0, 1) * 255)


def quantize_8bit(x: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1] -> the same image on the 256 8-bit levels, float32 in [0, 1]."""
    return (levels_8bit(x) / 255).float()


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() != 4:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(a.shape)}")


def mse_8bit(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean squared error on the 0..255 scale after 8-bit quantisation of both images."""
    _check_pair(a, b)
    return float((levels_8bit(a) - levels_8bit(b)).pow(2).mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB on 8-bit RGB, ``10 log10(255^2 / MSE)``; ``inf`` for identical images.

    a, b: (B, 3, H, W) float in [0, 1]; B > 1 pools the MSE over the batch.
    """
    mse = mse_8bit(a, b)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def ms_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """MS-SSIM in [0, 1] on 8-bit RGB (``pytorch_msssim``, data_range=1, five scales).

    a, b: (B, 3, H, W) float in [0, 1]. NaN, with a warning, when min(H, W) < 161 (see module
    docstring).
    """
    _check_pair(a, b)
    if min(a.shape[-2:]) < MS_SSIM_MIN_SIDE:
        warnings.warn(
            f"image {a.shape[-2]}x{a.shape[-1]} is too small for MS-SSIM (shorter side must be "
            f">= {MS_SSIM_MIN_SIDE} px); reporting NaN",
            stacklevel=2,
        )
        return math.nan
    with torch.no_grad():
        return float(_ms_ssim(quantize_8bit(a), quantize_8bit(b), data_range=1.0, size_average=True))


def ms_ssim_db(ms: float) -> float:
    """MS-SSIM in dB, ``-10 log10(1 - ms)``: spreads the values near 1 apart. ``inf`` at ms = 1."""
    if math.isnan(ms):
        return math.nan
    return math.inf if ms >= 1 else -10 * math.log10(1 - ms)


def image_quality(original: torch.Tensor, decoded: torch.Tensor) -> dict[str, float]:
    """All three metrics under the keys of the results schema (``psnr-rgb`` ...)."""
    ms = ms_ssim(original, decoded)
    return {"psnr-rgb": psnr(original, decoded), "ms-ssim-rgb": ms, "ms-ssim-rgb-db": ms_ssim_db(ms)}
