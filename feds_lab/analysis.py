"""Looking inside a codec's latent: per-channel entropy, and what each channel is worth.

These functions back notebook ``02_channel_entropy`` and its explorer widget; they work on any
codec that meets the contract :class:`feds_lab.models.base.Codec` (``forward``, ``analysis``,
``synthesis``, ``compress_latent``, ``decompress_latent``): both families and a wrapped CompressAI model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .coding import crop_image, pad_image
from .evaluation.metrics import psnr
from .losses import channel_entropy


@dataclass
class LatentView:
    """One image seen through a codec: its latent, per-channel entropy and reconstruction."""

    name: str
    x: torch.Tensor  # (1, 3, H, W) original, in [0, 1]
    y_hat: torch.Tensor  # (1, M, h, w) quantised latent (padded image)
    entropy: torch.Tensor  # (M,) bits per element, from the model's own likelihoods
    x_hat: torch.Tensor  # (1, 3, H, W) reconstruction, cropped
    pad: tuple[int, int, int, int]
    bpp: float  # likelihood estimate of the whole image (y and z)


@torch.no_grad()
def latent_view(model, name: str, x: torch.Tensor) -> LatentView:
    xp, pad = pad_image(x)
    out = model(xp)
    h, w = x.shape[-2:]
    bits = sum((-torch.log2(v.clamp_min(1e-9))).sum() for v in out["likelihoods"].values())
    return LatentView(
        name=name, x=x, y_hat=out["y_hat"], entropy=channel_entropy(out["likelihoods"]["y"]),
        x_hat=crop_image(out["x_hat"].clamp(0, 1), pad), pad=pad, bpp=float(bits) / (h * w),
    )


def entropy_matrix(views: list[LatentView]) -> torch.Tensor:
    """(M, n_images) bits per element: the heatmap of notebook 02."""
    return torch.stack([v.entropy for v in views], dim=1)


@torch.no_grad()
def reconstruct_without(model, view: LatentView, channels) -> torch.Tensor:
    """Reconstruction with the given latent channels of ``y_hat`` zeroed, cropped (1, 3, H, W)."""
    y = view.y_hat.clone()
    y[:, list(channels)] = 0
    return crop_image(model.synthesis(y).clamp(0, 1), view.pad)


@torch.no_grad()
def ablate_channels(model, x: torch.Tensor, channels) -> dict[str, float]:
    """Zero latent ``channels`` before entropy coding, code for real, and measure.

    Returns ``bpp`` (from the bytes the rANS coder wrote) and ``psnr`` (dB, 8-bit RGB): the cost
    and the worth of those channels at once.
    """
    xp, pad = pad_image(x)
    y = model.analysis(xp)
    y[:, list(channels)] = 0
    c = model.compress_latent(y)
    nbytes = sum(len(s[0]) for s in c["strings"])
    y_hat = model.decompress_latent(c["strings"], c["shape"])
    x_hat = crop_image(model.synthesis(y_hat).clamp(0, 1), pad)
    h, w = x.shape[-2:]
    return {"bpp": 8.0 * nbytes / (h * w), "psnr": float(psnr(x, x_hat))}


def channel_ablation_table(model, views: list[LatentView], k: int) -> list[dict]:
    """Real-coded bpp and PSNR per image: all channels, without the k most and the k least informative.

    Channels are ranked by their entropy over all ``views``.
    """
    order = torch.argsort(entropy_matrix(views).mean(1), descending=True).tolist()
    rows = []
    for v in views:
        for label, chans in (("all channels", []), (f"without top-{k}", order[:k]), (f"without bottom-{k}", order[-k:])):
            rows.append({"image": v.name, "variant": label, **ablate_channels(model, v.x, chans)})
    return rows
