"""Channel entropy and channel weights (FEDS stage 2; docs/method.md "Losses").

The teacher's entropy model says how many bits each latent channel costs. Channels that cost more
carry more of the information about the image, so the channel-level distillation weights them up::

    H_c = - mean over batch and positions of log2 p_T(y_hat_c)        (bits per element)
    w   = M_T * softmax(H / tau)                                      (mean weight 1)

``H_c`` is the teacher's code length per element (the cross-entropy of its entropy model on the
quantised latent), the quantity an entropy coder would spend. The softmax form, ``tau`` and the
``linear``/``uniform`` alternatives are ours: the paper gives no formula.
"""

from __future__ import annotations

import torch

WEIGHT_MODES = ("softmax", "linear", "uniform")

# CompressAI's likelihood lower bound: log2 stays finite (at most ~29.9 bits per element).
LIKELIHOOD_FLOOR = 1e-9


@torch.no_grad()
def channel_entropy(y_likelihoods: torch.Tensor) -> torch.Tensor:
    """Bits per element of each latent channel: (B, M, H, W) likelihoods -> (M,), no gradient."""
    if y_likelihoods.dim() != 4:
        raise ValueError(f"expected (B, M, H, W) likelihoods, got shape {tuple(y_likelihoods.shape)}")
    p = y_likelihoods.detach().clamp_min(LIKELIHOOD_FLOOR)
    return -torch.log2(p).mean(dim=(0, 2, 3))


def channel_weights(entropy: torch.Tensor, mode: str = "softmax", tau: float = 1.0) -> torch.Tensor:
    """Per-channel weights (M,), mean 1, from channel entropies (M,) in bits per element.

    ``softmax``: ``M * softmax(H / tau)``, a small ``tau`` concentrates the weight on the most
    informative channels, a large one tends to uniform; ``linear``: ``H / mean(H)`` (uniform if every
    channel costs 0 bits); ``uniform``: ones.
    """
    if mode not in WEIGHT_MODES:
        raise ValueError(f"unknown channel weighting {mode!r}; known: {list(WEIGHT_MODES)}")
    if entropy.dim() != 1 or entropy.numel() == 0:
        raise ValueError(f"expected a non-empty (M,) entropy vector, got shape {tuple(entropy.shape)}")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    h = entropy.detach()
    m = h.numel()
    if mode == "uniform":
        return torch.ones_like(h)
    if mode == "linear":
        mean = h.mean()
        return h / mean if mean > 0 else torch.ones_like(h)
    return m * torch.softmax(h / tau, dim=0)


def topk_pairing(entropy: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (k,) of the teacher's k most informative channels, by decreasing entropy.

    Ties keep channel order (a stable sort), so the pairing is deterministic.
    """
    if entropy.dim() != 1:
        raise ValueError(f"expected an (M,) entropy vector, got shape {tuple(entropy.shape)}")
    if not 1 <= k <= entropy.numel():
        raise ValueError(f"k must be between 1 and the teacher's {entropy.numel()} channels, got {k}")
    return torch.argsort(entropy.detach(), descending=True, stable=True)[:k]
