"""A divergence (a loss spike, as the demo's 0.0932 teacher had just after the one-cycle peak) sends the
run back to its last checkpoint at a lower learning rate, instead of training on from a broken model."""

from __future__ import annotations

import math

import pytest

from feds_lab.training import TrainConfig, read_metrics, train
from feds_lab.training import trainer as trainer_module

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, **kw):
    return TrainConfig(role="teacher", steps=36, batch_size=2, crop=64, val_every=0, ckpt_every=10, progress=False,
                       schedule="constant", lr=1e-3, out=str(tmp_path / "run"), **kw)


def test_a_spike_rewinds_to_the_last_checkpoint_at_half_the_rate(tmp_path, monkeypatch):
    monkeypatch.setenv(trainer_module.SPIKE_HOOK_ENV, "25")
    trainer_module._spikes_fired.clear()
    path = train(_cfg(tmp_path))
    rows = read_metrics(tmp_path / "run")
    rewinds = [r for r in rows if r["kind"] == "rewind"]
    assert rewinds == [{"step": 20, "stage": "rate_distortion", "kind": "rewind", "from_step": 25, "lr_scale": 0.5}]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 37))  # the lines after the checkpoint were replaced
    assert train_rows[10]["lr"] == pytest.approx(1e-3) and train_rows[25]["lr"] == pytest.approx(5e-4)
    assert all(math.isfinite(r["loss"]) for r in train_rows)
    from feds_lab.checkpoint import read_record as record

    assert record(path)["budget"]["rewinds"] == 1


def test_no_rewinds_left_stops_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(trainer_module.SPIKE_HOOK_ENV, "25")
    trainer_module._spikes_fired.clear()
    with pytest.raises(trainer_module.NonFiniteLossError, match="diverged at step 25 after 0 rewind"):
        train(_cfg(tmp_path, max_rewinds=0))


def test_rewind_off_trains_on(tmp_path, monkeypatch):
    monkeypatch.setenv(trainer_module.SPIKE_HOOK_ENV, "25")
    trainer_module._spikes_fired.clear()
    train(_cfg(tmp_path, rewind_spike=0))
    assert not [r for r in read_metrics(tmp_path / "run") if r["kind"] == "rewind"]
