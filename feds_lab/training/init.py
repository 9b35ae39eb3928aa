"""Initialising a student from its teacher's weights: beyond FEDS, and reported apart from it.

Students in the manner of EVC (Guo-Hua et al. 2023) and KDIC-style slimmable codecs are built by
keeping a slice of a larger model's channels. Here every student weight whose name the teacher
also has, and whose shape fits inside the teacher's, starts as the teacher's leading slice
(``teacher[:s0, :s1, ...]``); the rest keep their random initialisation. It is not part of FEDS
(the paper distils into a freshly initialised student), so ``init_from_teacher`` is off by default
and a run that uses it says so in its record.

``scope="entropy"`` copies the entropy model alone (every model family keeps it under
``latent_codec``: hyper-analysis and -synthesis, the factorised prior of ``z``, context model and
entropy parameters), as RS-LLIC-style students reuse their teacher's entropy model; the transforms
``g_a``/``g_s`` keep their random initialisation. The slices are leading channels: where a layer's
output channels hold two quantities (scales then means), a narrower student's slice mixes them, so
the copy is a starting point for training, not a working entropy model.
"""

from __future__ import annotations

import torch
import torch.nn as nn

INIT_SCOPES = ("all", "entropy")
ENTROPY_MODEL = "latent_codec."  # the parameter-name prefix of every family's entropy model


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module, scope: str = "all") -> dict[str, float]:
    """Copy channel-sliced teacher parameters into ``student`` in place (parameters only: the CDF
    tables are buffers, rebuilt by ``update()``); ``scope``: ``all`` or ``entropy`` (the entropy
    model only). Returns ``tensors`` copied and the ``fraction`` of the student's parameter count
    they cover."""
    if scope not in INIT_SCOPES:
        raise ValueError(f"unknown init scope {scope!r}; known: {list(INIT_SCOPES)}")
    t_params = dict(teacher.named_parameters())
    copied, covered, total = 0, 0, 0
    for name, p in student.named_parameters():
        total += p.numel()
        if scope == "entropy" and not name.startswith(ENTROPY_MODEL):
            continue
        t = t_params.get(name)
        if t is None or t.dim() != p.dim() or any(a > b for a, b in zip(p.shape, t.shape)):
            continue
        p.copy_(t[tuple(slice(0, n) for n in p.shape)].to(p.device, p.dtype))
        copied += 1
        covered += p.numel()
    if scope == "entropy" and not copied:
        raise ValueError(f"no entropy-model weight ({ENTROPY_MODEL}*) of the student fits the teacher's")
    return {"tensors": copied, "fraction": covered / max(1, total)}
