"""Exact resume: a run killed mid-way (SIGKILL, or SIGTERM) and resumed ends with the same weights,
optimiser state and logged losses as a run that never stopped.

The SIGKILL comes from the trainer's documented test hook ``FEDS_LAB_TEST_KILL_AT_STEP=k``: the
process kills itself right after writing the checkpoint of step k, like a machine that dies there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from feds_lab.training import MODEL_FILE, STATE_FILE, TrainConfig, TrainingInterrupted, read_metrics, train
from feds_lab.training import trainer as trainer_module
from feds_lab.training.state import load_state

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]



# 10 steps: stage 1 = steps 1-3, stage 2 = 4-8, stage 3 = 9-10; checkpoints every 2 steps
ARGS = ["--steps", "10", "--batch-size", "2", "--crop", "64", "--set", "ckpt_every=2", "--set", "val_every=0",
        "--set", "log_every=3"]  # a log window open across the kill


def _cli(out: Path, teacher: Path, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "FEDS_LAB_THREADS": "1", **(env_extra or {})}  # one thread, fixed: exact resume compares floats
    cmd = [sys.executable, "-m", "feds_lab.training.cli", "train", "student", "--teacher", str(teacher),
           "--out", str(out), *ARGS]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def assert_same_run(a: Path, b: Path) -> None:
    """Final weights, training state and logged train losses identical (torch.equal, ==)."""
    wa, wb = load_file(a / MODEL_FILE), load_file(b / MODEL_FILE)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"model tensor {k} differs"
    sa, sb = load_state(a / STATE_FILE), load_state(b / STATE_FILE)
    assert sa["step"] == sb["step"] and sa["stage"] == sb["stage"]
    _assert_tree_equal(sa["adapters"], sb["adapters"], "adapters")
    _assert_tree_equal(sa["optimizer"], sb["optimizer"], "optimizer")
    _assert_tree_equal(sa["aux_optimizer"], sb["aux_optimizer"], "aux_optimizer")
    _assert_tree_equal(sa["rng"], sb["rng"], "rng")

    def train_lines(run):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in read_metrics(run) if r["kind"] == "train"]

    assert train_lines(a) == train_lines(b)


def _assert_tree_equal(x, y, where: str) -> None:
    if isinstance(x, torch.Tensor):
        assert torch.equal(x, y), f"{where} differs"
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), f"{where}: keys differ"
        for k in x:
            _assert_tree_equal(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, (list, tuple)):
        assert len(x) == len(y), f"{where}: lengths differ"
        for i, (u, v) in enumerate(zip(x, y)):
            _assert_tree_equal(u, v, f"{where}[{i}]")
    else:
        assert x == y, f"{where}: {x!r} != {y!r}"


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, tiny_checkpoints):
    teacher = tiny_checkpoints["teacher"]
    full, killed = tmp_path / "full", tmp_path / "killed"

    r = _cli(full, teacher)
    assert r.returncode == 0, r.stderr

    # killed right after the checkpoint of step 4 (stage 2): the state holds step 4, no final model
    r = _cli(killed, teacher, {trainer_module.KILL_HOOK_ENV: "4"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert load_state(killed / STATE_FILE)["step"] == 4
    assert not (killed / MODEL_FILE).exists()

    # the same command resumes from step 4, through stage 3 (adapters dropped) to the end
    r = _cli(killed, teacher)
    assert r.returncode == 0, r.stderr
    assert "resuming at step 4" in r.stderr
    steps = [m["step"] for m in read_metrics(killed) if m["kind"] == "train"]
    assert steps == [3, 6, 9, 10], "each log line written exactly once across the kill"
    assert_same_run(full, killed)


def test_sigterm_saves_stops_cleanly_and_resumes_exactly(tmp_path, tiny_checkpoints, monkeypatch):
    """SIGTERM (or SIGINT) during step 6: the step finishes, the state is saved, the run stops with a
    message; the resumed run ends exactly where an uninterrupted one does. Teacher role, in-process."""
    cfg = TrainConfig(role="teacher", steps=8, batch_size=2, crop=64, val_every=0, ckpt_every=100, progress=False)
    train(replace(cfg, out=str(tmp_path / "full")))

    real = trainer_module.load_dataset

    def load_dataset_signalling(*args, **kwargs):
        ds = real(*args, **kwargs)
        sample = ds.sample_batch

        def sample_batch(step, batch_size, seed=None):
            if step == 5:  # 0-based: the sixth step
                os.kill(os.getpid(), signal.SIGTERM)
            return sample(step, batch_size, seed)

        ds.sample_batch = sample_batch
        return ds

    stopped = tmp_path / "stopped"
    monkeypatch.setattr(trainer_module, "load_dataset", load_dataset_signalling)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="after step 6"):
        train(replace(cfg, out=str(stopped)))
    assert load_state(stopped / STATE_FILE)["step"] == 6
    assert signal.getsignal(signal.SIGTERM) == before  # the loop's handler is gone again

    monkeypatch.setattr(trainer_module, "load_dataset", real)
    train(replace(cfg, out=str(stopped)))
    assert_same_run(tmp_path / "full", stopped)
