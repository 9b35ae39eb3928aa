"""Compiled attention stages: the same numbers inside ``compiled_stages``, eager everywhere else,
checkpoints untouched, and a compiler failure that falls back to eager with one warning."""

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
            out.square().sum().backward()
        assert stage in attention._COMPILED  # it compiled (a failure would have dropped it)
        # float rounding of reordered sums: a wrong kernel would be off by the values' own size
        for got, want in ((out, ref), (x.grad, gx), (stage.blocks[0].attn.qkv.weight.grad, gw)):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))
    finally:
        attention._COMPILED.pop(stage, None)
