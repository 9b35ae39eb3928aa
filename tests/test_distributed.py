"""Data-parallel training: the same entry point under ``torchrun --nproc_per_node 2`` (gloo, CPU).

A FEDS student through all three stages (stage 3 leaves the adapters unused, which DDP must
tolerate), validation on rank 0 while rank 1 waits, checkpoints and the final model from rank 0 only.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from feds_lab.checkpoint import read_record
from feds_lab.training import MODEL_FILE, STATE_FILE, read_metrics
from feds_lab.training.state import load_state

pytestmark = pytest.mark.slow

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_torchrun_two_cpu_processes(tmp_path, tiny_checkpoints):
    out = tmp_path / "ddp"
    env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "feds_lab.training.cli", "train", "student",
           "--teacher", str(tiny_checkpoints["teacher"]), "--steps", "5", "--batch-size", "4", "--crop", "64",
           "--device", "cpu", "--out", str(out), "--set", "ckpt_every=2", "--set", "val_every=3",
           "--set", "val_images=1", "--set", "stage_split=[0.3, 0.5, 0.2]", "--set", "grad_log_every=2"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1] == str(out / MODEL_FILE)  # printed once, by rank 0

    lines = read_metrics(out)
    train_steps = [m["step"] for m in lines if m["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4, 5], "one line per step: only rank 0 writes"
    assert [m["stage"] for m in lines if m["kind"] == "train"] == (
        ["feature_alignment", "feature_alignment", "channel_distillation", "channel_distillation", "fine_tuning"])
    assert [m["step"] for m in lines if m["kind"] == "val"] == [3, 5]
    # the default's balancing measures gradient norms under DDP too (averaged over ranks)
    assert [m["step"] for m in lines if m["kind"] == "grad"] and all(m["rd"] > 0 for m in lines if m["kind"] == "grad")

    state = load_state(out / STATE_FILE)
    assert state["step"] == 5 and state["world_size"] == 2 and len(state["rng"]) == 2
    record = read_record(out / MODEL_FILE)
    assert record["budget"]["world_size"] == 2 and record["budget"]["batch_size"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.jsonl", "model.safetensors", "state.pt"]
