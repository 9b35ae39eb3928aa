"""Initialising a student from its teacher's weights: beyond FEDS, and reported apart from it.

Students in the manner of EVC (Guo-Hua et al. 2023) and KDIC-style slimmable codecs are built by
keeping a slice of a larger model's channels. Here every student weight whose name the teacher
also has, and whose shape fits inside the teacher's, starts as the teacher's leading slice
(``teacher[:s0, :s1, ...]``); the rest keep their random initialisation. It is not part of FEDS
(the paper distils into a freshly initialised student), so ``init_from_teacher`` is off by default
and a run that uses it says so in its record.
"""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module) -> dict[str, float]:
    """Copy channel-sliced teacher parameters into ``student`` in place (parameters only: the CDF
    tables are buffers, rebuilt by ``update()``). Returns ``tensors`` copied and the ``fraction`` of
    the student's parameter count they cover."""
    t_params = dict(teacher.named_parameters())
    copied, covered, total = 0, 0, 0
    for name, p in student.named_parameters():
        total += p.numel()
        t = t_params.get(name)
        if t is None or t.dim() != p.dim() or any(a > b for a, b in zip(p.shape, t.shape)):
            continue
        p.copy_(t[tuple(slice(0, n) for n in p.shape)].to(p.device, p.dtype))
        copied += 1
        covered += p.numel()
    return {"tensors": copied, "fraction": covered / max(1, total)}
