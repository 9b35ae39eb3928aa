"""The one place where every preset lives: model sizes and training budgets.

Sizes follow the method (``docs/method.md``). Where the paper is silent (block depths, heads, windows,
the ``small``/``tiny`` sizes, budgets) the numbers are ours, chosen for the hardware each
preset targets; every value can be overridden by ``build_model(..., **overrides)`` or a
training config.

- ``paper``: the sizes the method gives (teacher N=192, M=320; student N=128, M=192), for GPUs.
- ``small``: a CPU study in well under an hour per model.
- ``mini``: between the two: twice tiny's widths (the teacher 4x its parameters), for a zoo ladder
  that the tiny teacher's capacity caps at high rates (measured: its PSNR flattens above 0.4 bpp).
- ``tiny``: the built-in demo and the tests (seconds per hundred steps on two CPU cores).
"""

from __future__ import annotations

import copy
from typing import Any

PRESET_NAMES = ("paper", "small", "mini", "tiny")
ROLES = ("teacher", "student")

#: The usual lambda ladder (CompressAI's MSE models, quality 1..8), for L = bpp + lambda*255^2*MSE.
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)

# --- model sizes -----------------------------------------------------------------------------
# CNN family (docs/method.md "Models"): Cheng2020-style residual transforms; the teacher adds Swin-V2
# window-attention after the x/4, x/8, x/16 stages of g_a and before the matching stages of g_s.
# ``attn_depth`` blocks per tap alternate plain and shifted windows.
_CNN = {
    "paper": {
        "teacher": dict(N=192, M=320, res_blocks=2, attention=True, attn_depth=2, attn_heads=8, window=8),
        "student": dict(N=128, M=192, res_blocks=1, attention=False),
    },
    "small": {
        "teacher": dict(N=96, M=160, res_blocks=2, attention=True, attn_depth=2, attn_heads=4, window=8),
        "student": dict(N=64, M=96, res_blocks=1, attention=False),
    },
    "mini": {
        "teacher": dict(N=64, M=96, res_blocks=2, attention=True, attn_depth=2, attn_heads=2, window=4),
        "student": dict(N=32, M=64, res_blocks=1, attention=False),  # 0.25 of the teacher's parameters, as tiny
    },
    "tiny": {
        "teacher": dict(N=32, M=48, res_blocks=2, attention=True, attn_depth=2, attn_heads=2, window=4),
        "student": dict(N=16, M=32, res_blocks=1, attention=False),
    },
}

# Transformer family (in the manner of STF/TCM; feds_lab/models/transformer.py): every
# stage of g_a and g_s is a stack of Swin-V2 blocks; patch merging goes down, patch splitting
# (pixel shuffle) goes up. ``dims`` are the widths at x/2, x/4, x/8; ``M`` the latent width at x/16;
# ``depths`` and ``heads`` are per g_a stage (x/2 .. x/16), mirrored in g_s. A depth is 0 or at least
# 2, so that every attention stage has a shifted-window block. The teacher's depths are STF's
# (2, 2, 6, 2) at ``paper``; the student has no attention at x/2, where a map has 4x the tokens of
# x/4 and attention costs most (as the CNN student has none at all). ``M`` and ``hyper_channels``
# equal the CNN family's M and N at each preset: both families have the same entropy model.
_TRANSFORMER = {
    "paper": {
        "teacher": dict(dims=(128, 192, 256), M=320, depths=(2, 2, 6, 2), heads=(4, 6, 8, 8), window=8,
                        hyper_channels=192),
        "student": dict(dims=(96, 128, 192), M=192, depths=(0, 2, 2, 2), heads=(3, 4, 6, 6), window=8,
                        hyper_channels=128),
    },
    "small": {
        "teacher": dict(dims=(64, 96, 128), M=160, depths=(2, 2, 4, 2), heads=(2, 3, 4, 4), window=8,
                        hyper_channels=96),
        "student": dict(dims=(48, 64, 96), M=96, depths=(0, 2, 2, 2), heads=(2, 2, 3, 3), window=8,
                        hyper_channels=64),
    },
    "mini": {
        "teacher": dict(dims=(32, 48, 64), M=96, depths=(2, 2, 4, 2), heads=(2, 2, 2, 2), window=4,
                        hyper_channels=48),
        "student": dict(dims=(24, 24, 32), M=64, depths=(0, 2, 2, 2), heads=(1, 1, 2, 2), window=4,
                        hyper_channels=24),
    },
    "tiny": {
        "teacher": dict(dims=(24, 32, 48), M=48, depths=(2, 2, 4, 2), heads=(2, 2, 2, 2), window=4,
                        hyper_channels=32),
        "student": dict(dims=(16, 16, 24), M=32, depths=(0, 2, 2, 2), heads=(1, 1, 2, 2), window=4,
                        hyper_channels=16),
    },
}

# CompressAI's Ballé/Minnen models, wrapped (feds_lab/models/wrappers.py). ``paper`` are CompressAI's
# own sizes (N=192, M=320 is its quality 5-8, N=128, M=192 its quality 1-4, as the method's teacher and
# student); ``small`` and ``tiny`` match the CNN family's widths at those presets.
GOOGLE_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"teacher": dict(N=192, M=320), "student": dict(N=128, M=192)},
    "small": {"teacher": dict(N=96, M=160), "student": dict(N=64, M=96)},
    "mini": {"teacher": dict(N=64, M=96), "student": dict(N=32, M=64)},
    "tiny": {"teacher": dict(N=32, M=48), "student": dict(N=16, M=32)},
}

#: family -> preset -> role -> sizes. Families registered outside the package add theirs here
#: (``feds_lab.models.register_family(name, presets=...)``).
MODEL_PRESETS: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "cnn": _CNN,
    "transformer": _TRANSFORMER,
    "compressai:mbt2018-mean": GOOGLE_PRESETS,
    "compressai:bmshj2018-hyperprior": GOOGLE_PRESETS,
}

# --- training budgets --------------------------------------------------------------------------
# Chosen from the CPU measurements in docs/method.md: crops under 128 px starve the
# hyperprior, and a one-cycle schedule with a 2e-3 peak trains far faster than a constant 5e-4.
# ``tiny`` trades that away for speed: it shows the machinery, not the method's merit.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(steps=300_000, batch_size=16, crop=256, lr=1e-4, schedule="constant",
                  val_every=5_000, ckpt_every=2_000, lambdas=LAMBDAS[:4]),
    "small": dict(steps=6_000, batch_size=8, crop=128, lr=2e-3, schedule="onecycle",
                  val_every=1_000, ckpt_every=500, lambdas=LAMBDAS[:4]),
    # tiny: 128 px crops (64 px starve the hyperprior, docs/method.md) and a wide lambda ladder, because
    # at a few hundred steps neighbouring lambdas are not yet told apart (measured: 300 steps at
    # 128 px, 0.0035 and 0.025 gave the same rate and PSNR). The ladder is every second quality
    # (about 3.7x apart): with 0.025 and 0.0483 as its top two, the demo's curves were not monotonic on
    # two machines (teacher 24.09 dB at 0.341 bpp then 23.94 at 0.369; FEDS 23.40 at 0.301, 22.82 at
    # 0.306), so its BD table was empty. 400 steps keep the whole pipeline near 10 minutes.
    "mini": dict(steps=2_000, batch_size=8, crop=128, lr=2e-3, schedule="onecycle",
                 val_every=500, ckpt_every=250, lambdas=(LAMBDAS[1], LAMBDAS[2], LAMBDAS[4], LAMBDAS[5])),
    "tiny": dict(steps=400, batch_size=8, crop=128, lr=2e-3, schedule="onecycle",
                 val_every=200, ckpt_every=100, lambdas=(LAMBDAS[1], LAMBDAS[2], LAMBDAS[4], LAMBDAS[6])),  # in the zoo's ladder
}


def model_preset(family: str, role: str, preset: str) -> dict[str, Any]:
    """A fresh copy of the sizes for ``family``/``role``/``preset``, with a clear error otherwise."""
    if family not in MODEL_PRESETS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(MODEL_PRESETS)}")
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; known: {list(ROLES)}")
    if preset not in MODEL_PRESETS[family]:
        raise ValueError(f"unknown preset {preset!r}; known: {list(MODEL_PRESETS[family])}")
    return copy.deepcopy(MODEL_PRESETS[family][preset][role])


def train_preset(preset: str) -> dict[str, Any]:
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {list(TRAIN_PRESETS)}")
    return copy.deepcopy(TRAIN_PRESETS[preset])
