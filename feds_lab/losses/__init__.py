"""The FEDS losses, one idea per file.

- :mod:`.rate_distortion`: ``L_RD = bpp + lambda * 255^2 * MSE`` (or the MS-SSIM variant).
- :mod:`.feature_alignment`: attention-weighted alignment of adapted student features (stage 1).
- :mod:`.channel_entropy`: per-channel entropy of the teacher's latent, and the weights from it.
- :mod:`.channel_distillation`: entropy-weighted channel distillation (stage 2), output distillation.
"""

from .channel_distillation import (
    DISTILLATION_WEIGHTINGS,
    EntropyWeightedChannelDistillation,
    output_distillation_loss,
)
from .channel_entropy import LIKELIHOOD_FLOOR, WEIGHT_MODES, channel_entropy, channel_weights, topk_pairing
from .feature_alignment import (
    DEFAULT_TAPS,
    FEATURE_NORMS,
    FEATURE_WEIGHTINGS,
    FeatureAlignment,
    feature_alignment_loss,
    spatial_attention,
    standardize,
)
from .rate_distortion import METRICS, MS_SSIM_MIN_SIDE, RateDistortionLoss, bpp_from_likelihoods

__all__ = [
    "DEFAULT_TAPS",
    "DISTILLATION_WEIGHTINGS",
    "LIKELIHOOD_FLOOR",
    "METRICS",
    "MS_SSIM_MIN_SIDE",
    "FEATURE_NORMS",
    "FEATURE_WEIGHTINGS",
    "WEIGHT_MODES",
    "EntropyWeightedChannelDistillation",
    "FeatureAlignment",
    "RateDistortionLoss",
    "bpp_from_likelihoods",
    "channel_entropy",
    "channel_weights",
    "feature_alignment_loss",
    "output_distillation_loss",
    "spatial_attention",
    "standardize",
    "topk_pairing",
]
