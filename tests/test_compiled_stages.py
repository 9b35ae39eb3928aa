"""Compiled attention stages and alignment loss: the same numbers inside ``compiled_stages``, eager
everywhere else, checkpoints untouched, and a compiler failure that falls back to eager with one warning."""

import copy

import pytest
import torch

from feds_lab.models import attention
from feds_lab.models.attention import SwinV2Stage, compile_stages, compiled_stages
from feds_lab.training.config import COMPILE_MIN_STEPS, TrainConfig


def _stage():
    torch.manual_seed(0)
    return SwinV2Stage(8, 2, 2, 4)


def test_the_compiled_blocks_run_only_inside_the_context_and_stay_out_of_the_model():
    stage = _stage()
    keys = list(stage.state_dict())
    x = torch.randn(2, 8, 12, 12)
    ref = stage(x)
    calls = []
    attention._COMPILED[stage] = lambda t: calls.append(t.shape) or stage.blocks(t)  # stands for torch.compile's
    try:
        assert torch.equal(stage(x), ref) and not calls  # outside: eager
        with compiled_stages():
            assert torch.equal(stage(x), ref) and calls == [torch.Size([2, 12, 12, 8])]
        with compiled_stages(False):
            stage(x)
        assert len(calls) == 1
        assert list(stage.state_dict()) == keys  # checkpoints never see it
        with compiled_stages():
            copy.deepcopy(stage)(x)  # a copy (the coder's) is eager
        assert len(calls) == 1
    finally:
        attention._COMPILED.pop(stage, None)


def test_a_compiler_failure_falls_back_to_eager_with_one_warning():
    stage = _stage()
    x = torch.randn(1, 8, 8, 8)
    ref = stage(x)
    failure = type("BackendCompilerFailed", (RuntimeError,), {"__module__": "torch._dynamo.exc"})

    def broken(t):
        raise failure("no C++ compiler on this machine")

    attention._COMPILED[stage] = broken
    with compiled_stages(), pytest.warns(RuntimeWarning, match="training goes on uncompiled"):
        assert torch.equal(stage(x), ref)
    assert stage not in attention._COMPILED

    def wrong(t):
        raise ValueError("a bug of ours, not the compiler's")

    attention._COMPILED[stage] = wrong
    try:
        with compiled_stages(), pytest.raises(ValueError, match="a bug of ours"):
            stage(x)
    finally:
        attention._COMPILED.pop(stage, None)


def test_auto_compiles_long_runs_only():
    assert TrainConfig(role="teacher", steps=COMPILE_MIN_STEPS).resolved().compiles
    assert not TrainConfig(role="teacher", steps=COMPILE_MIN_STEPS - 1).resolved().compiles
    assert TrainConfig(role="teacher", steps=10, compile="attention").resolved().compiles
    assert not TrainConfig(role="teacher", steps=10**5, compile="none").resolved().compiles


@pytest.mark.slow
def test_torch_compile_gives_the_eager_numbers_forward_and_backward():
    stage = _stage()
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    ref = stage(x)
    ref.square().sum().backward()
    gx, gw = x.grad.clone(), stage.blocks[0].attn.qkv.weight.grad.clone()
    x.grad = None
    stage.zero_grad()
    assert compile_stages(stage) == 1 and compile_stages(stage) == 0
    try:
        with compiled_stages():
            out = stage(x)
            # a measured distillation step: one term's gradient with the graph kept, then the whole backward
            # (compiled backwards that donate their buffers refuse the second pass)
            first = torch.autograd.grad(out.square().sum(), [stage.blocks[0].attn.qkv.weight], retain_graph=True)[0]
            out.square().sum().backward()
        torch.testing.assert_close(first, gw, rtol=1e-3, atol=1e-4 * float(gw.abs().max()))
        assert stage in attention._COMPILED  # it compiled (a failure would have dropped it)
        # float rounding of reordered sums: a wrong kernel would be off by the values' own size
        for got, want in ((out, ref), (x.grad, gx), (stage.blocks[0].attn.qkv.weight.grad, gw)):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))
    finally:
        attention._COMPILED.pop(stage, None)


def _alignment():
    from feds_lab.losses import FeatureAlignment

    torch.manual_seed(0)
    fa = FeatureAlignment({"a": 4, "b": 4}, {"a": 8, "b": 6}, taps=("a", "b"), norm="channel")
    f_s = {"a": torch.randn(2, 4, 16, 16, requires_grad=True), "b": torch.randn(2, 4, 8, 8, requires_grad=True)}
    f_t = {"a": torch.randn(2, 8, 16, 16), "b": torch.randn(2, 6, 8, 8)}
    return fa, f_s, f_t


def test_a_compiler_failure_of_the_alignment_loss_falls_back_to_eager_with_one_warning():
    fa, f_s, f_t = _alignment()
    ref = fa(f_s, f_t)[0]
    failure = type("BackendCompilerFailed", (RuntimeError,), {"__module__": "torch._dynamo.exc"})

    def broken(*args):
        raise failure("no C++ compiler on this machine")

    fa._loss = broken
    with pytest.warns(RuntimeWarning, match="alignment loss failed"):
        assert torch.equal(fa(f_s, f_t)[0], ref)
    assert torch.equal(fa(f_s, f_t)[0], ref)  # eager from now on, no second warning

    def wrong(*args):
        raise ValueError("a bug of ours, not the compiler's")

    fa._loss = wrong
    with pytest.raises(ValueError, match="a bug of ours"):
        fa(f_s, f_t)


def test_the_compiled_alignment_loss_sees_one_layout_per_shape():
    fa, f_s, f_t = _alignment()
    f_t["a"] = f_t["a"].to(memory_format=torch.channels_last)  # a permuted map, as the transformer's are
    seen = []
    fa._loss = lambda s, t, *args: seen.append((s.is_contiguous(), t.is_contiguous())) or s.sum() * 0
    fa(f_s, f_t)
    assert seen == [(True, True), (True, True)]


@pytest.mark.slow
def test_the_compiled_alignment_loss_gives_the_eager_numbers_on_a_measured_step():
    from feds_lab.losses.feature_alignment import feature_alignment_loss

    fa, f_s, f_t = _alignment()
    params = [f_s["a"], f_s["b"], fa.adapters["a"].weight, fa.adapters["b"].weight]
    ref = fa(f_s, f_t)[0]
    want = torch.autograd.grad(ref, params)
    fa.compile_loss()
    got_loss = fa(f_s, f_t)[0]
    # a measured step takes one term's gradient with the graph kept, then backpropagates the sum again
    first = torch.autograd.grad(got_loss, params, retain_graph=True)
    second = torch.autograd.grad(2 * got_loss, params)
    assert fa._loss is not feature_alignment_loss  # still compiled: no fallback happened
    torch.testing.assert_close(got_loss, ref, rtol=1e-5, atol=1e-6)
    for g1, g2, w in zip(first, second, want):
        torch.testing.assert_close(g1, w, rtol=1e-4, atol=1e-5 * float(w.abs().max()))
        torch.testing.assert_close(g2, 2 * w, rtol=1e-4, atol=2e-5 * float(w.abs().max()))


_DONATING = r"""
import sys, torch
from feds_lab.models.attention import SwinV2Stage
torch.manual_seed(0)
stage = SwinV2Stage(8, 2, 2, 4)
x = torch.randn(2, 8, 16, 16, requires_grad=True)
torch.compile(stage.blocks, dynamic=False)(x.permute(0, 2, 3, 1)).square().sum().backward()  # donation on
"""

_OURS = r"""
import torch
from feds_lab.models.attention import SwinV2Stage, compile_stages, compiled_stages
torch.manual_seed(0)
stage = SwinV2Stage(8, 2, 2, 4)
x = torch.randn(2, 8, 16, 16, requires_grad=True)
stage(x).square().sum().backward()
want, x.grad = x.grad.clone(), None
compile_stages(stage)
with compiled_stages():
    out = stage(x)
    torch.autograd.grad(out.square().sum(), [stage.blocks[0].attn.qkv.weight], retain_graph=True)
    out.square().sum().backward()
print(float((x.grad - want).abs().max() / want.abs().max()))
"""


@pytest.mark.slow
def test_a_graph_cached_with_donated_buffers_elsewhere_is_not_reused(tmp_path):
    """Inductor's cache does not key graphs by buffer donation: a backward compiled with it (any
    torch.compile in the same cache folder) would overwrite saved tensors on our second pass."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "OMP_NUM_THREADS": "1"}
    for code in (_DONATING, _OURS):
        p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, p.stderr[-2000:]
    assert float(p.stdout.strip().splitlines()[-1]) < 1e-4  # float rounding; a reused graph gives 1e7
