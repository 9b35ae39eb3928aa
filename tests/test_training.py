"""Trainers: config, stage plan, teacher / FEDS student / scratch runs, validation, non-finite steps, CLI.

Every run here is the tiny preset at a few steps on 64 px crops: it checks the machinery, not learning.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from feds_lab import build_model
from feds_lab.checkpoint import read_record, save_model
from feds_lab.errors import CheckpointError, CheckpointMismatchError
from feds_lab.losses import DEFAULT_TAPS
from feds_lab.presets import train_preset
from feds_lab.training import (CONFIG_FILE, METRICS_FILE, MODEL_FILE, STATE_FILE, ConfigError, NonFiniteLossError,
                               Stage, StagePlan, TrainConfig, read_metrics, train)
from feds_lab.training import trainer as trainer_module
from feds_lab.training.cli import add_train_parser, config_from_args
from feds_lab.training.state import load_state



pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(steps=6, batch_size=2, crop=64, val_every=0, ckpt_every=0, progress=False)


def quick(tmp_path: Path, name: str, **kw) -> TrainConfig:
    return TrainConfig(**{**FAST, "out": str(tmp_path / name), **kw})


# --- config --------------------------------------------------------------------------------------
def test_budget_defaults_come_from_the_preset():
    cfg = TrainConfig(preset="small").resolved()
    preset = train_preset("small")
    for key in ("steps", "batch_size", "crop", "lr", "schedule", "val_every", "ckpt_every"):
        assert getattr(cfg, key) == preset[key]
    assert cfg.out == str(Path("runs") / "teacher-cnn-small-l0.0067")
    assert TrainConfig(preset="tiny", steps=7).resolved().steps == 7  # an explicit value wins


def test_overrides_yaml_round_trip_and_coercion(tmp_path):
    cfg = TrainConfig(role="student", teacher="t.safetensors").with_overrides([
        "lr=1e-3", "stage_split=[0, 0.8, 0.2]", "taps=ga2,gs2", "model.M=64", "data=none", "alpha=0",
        "weighting=topk", "progress=false", "steps=6_000",
    ])
    assert cfg.lr == 1e-3 and isinstance(cfg.lr, float)
    assert cfg.stage_split == (0.0, 0.8, 0.2)
    assert cfg.taps == ("ga2", "gs2")
    assert cfg.model == {"M": 64} and cfg.data is None and cfg.alpha == 0.0 and cfg.progress is False
    assert cfg.steps == 6000
    path = cfg.resolved().save_yaml(tmp_path / "c.yaml")
    again = TrainConfig.from_yaml(path)
    assert again == cfg.resolved()
    assert TrainConfig().taps == DEFAULT_TAPS  # one source of truth: the losses' default


@pytest.mark.parametrize("assignment, message", [
    ("learning_rate=1", "unknown config field 'learning_rate'; known: role, "),
    ("lrr=1", "did you mean 'lr'"),
    ("steps=many", "expects int"),
    ("stage_split=[0.5, 0.6, 0.2]", "summing to 1"),
    ("weighting=max", "weighting must be one of"),
    ("crop=100", "multiple of 64"),
    ("metric=ms-ssim", "at least 161 px"),
])
def test_bad_values_give_clear_errors(assignment, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig().with_overrides([assignment]).resolved()


def test_role_consistency_is_checked():
    with pytest.raises(ConfigError, match="needs a teacher"):
        TrainConfig(role="student").resolved()
    with pytest.raises(ConfigError, match="takes no teacher"):
        TrainConfig(role="student", baseline="scratch", teacher="t.safetensors").resolved()
    with pytest.raises(ConfigError, match="students only"):
        TrainConfig(role="teacher", baseline="scratch").resolved()


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_configs_load(path):
    cfg = TrainConfig.from_yaml(path)
    (replace(cfg, teacher="teacher.safetensors") if cfg.distills else cfg).resolved()


def test_student_example_shows_the_true_defaults():
    example, defaults = TrainConfig.from_yaml(CONFIGS[0].parent / "student.yaml"), TrainConfig()
    for key in ("stage_split", "finetune_lr_factor", "alpha", "beta", "gamma", "weighting", "tau", "taps",
                "feature_weighting", "feature_norm", "latent_norm", "output_scale", "balance", "ramp", "clip_mode"):
        assert getattr(example, key) == getattr(defaults, key), key


# --- stage plan ----------------------------------------------------------------------------------
def test_stage_plan_splits_one_budget():
    student = StagePlan.from_config(TrainConfig(role="student", teacher="t", steps=10, stage_split=(0.3, 0.5, 0.2)).resolved())
    assert [student.stage_at(s) for s in range(10)] == (
        [Stage.FEATURE_ALIGNMENT] * 3 + [Stage.CHANNEL_DISTILLATION] * 5 + [Stage.FINE_TUNING] * 2)
    assert student.spans() == [(Stage.FEATURE_ALIGNMENT, 0, 3), (Stage.CHANNEL_DISTILLATION, 3, 8),
                               (Stage.FINE_TUNING, 8, 10)]
    no_align = StagePlan.from_config(TrainConfig(role="student", teacher="t", steps=10, stage_split=(0, 0.8, 0.2)))
    assert no_align.stage_at(0) is Stage.CHANNEL_DISTILLATION
    no_ft = StagePlan.from_config(TrainConfig(role="student", teacher="t", steps=10, stage_split=(0.3, 0.7, 0)))
    assert no_ft.stage_at(9) is Stage.CHANNEL_DISTILLATION
    scratch = StagePlan.from_config(TrainConfig(role="student", baseline="scratch", steps=10, stage_split=(0.3, 0.5, 0.2)))
    assert [s for s, _, _ in scratch.spans()] == [Stage.RATE_DISTORTION, Stage.FINE_TUNING]
    teacher = StagePlan.from_config(TrainConfig(role="teacher", steps=10))
    assert teacher.spans() == [(Stage.RATE_DISTORTION, 0, 10)]


def test_fine_tuning_scales_the_one_cycle_and_drops_the_adapters():
    w, a = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.Adam([{"params": [w], "name": "model"}, {"params": [a], "name": "adapters"}], lr=1e-3)
    ref_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched, ref = (torch.optim.lr_scheduler.OneCycleLR(o, max_lr=1e-3, total_steps=10) for o in (opt, ref_opt))
    for step in range(10):
        if step == 8:
            trainer_module.enter_fine_tuning(opt, 0.1)
            assert [g["name"] for g in opt.param_groups] == ["model"]
        factor = 0.1 if step >= 8 else 1.0
        assert opt.param_groups[0]["lr"] == pytest.approx(factor * ref_opt.param_groups[0]["lr"])
        for o in (opt, ref_opt):
            o.step()
        if step < 9:
            sched.step()
            ref.step()


# --- teacher runs --------------------------------------------------------------------------------
@pytest.mark.slow
def test_teacher_run_writes_the_run_folder(tmp_path, monkeypatch):
    cfg = quick(tmp_path, "teacher", val_every=3, val_images=1, ckpt_every=3, log_every=2)
    path = train(cfg)
    out = tmp_path / "teacher"
    assert path == out / MODEL_FILE
    assert {p.name for p in out.iterdir()} == {CONFIG_FILE, STATE_FILE, METRICS_FILE, MODEL_FILE}
    assert TrainConfig.from_yaml(out / CONFIG_FILE) == cfg.resolved()

    lines = [json.loads(s) for s in (out / METRICS_FILE).read_text().splitlines()]
    train_lines = [m for m in lines if m["kind"] == "train"]
    assert [m["step"] for m in train_lines] == [2, 4, 6]  # every log_every steps
    for m in train_lines:
        assert m["stage"] == "rate_distortion"
        assert {"loss", "bpp_loss", "mse_loss", "aux_loss", "lr", "seconds"} <= m.keys()
        assert all(math.isfinite(m[k]) for k in ("loss", "bpp_loss", "mse_loss"))
    val = [m for m in lines if m["kind"] == "val"]
    assert [m["step"] for m in val] == [3, 6]  # at val_every and at the end
    for m in val:
        assert {"psnr", "bpp", "bpp_likelihood", "loss"} <= m.keys() and m["bpp"] > 0

    record = read_record(path)
    assert record["role"] == "teacher" and record["lmbda"] == cfg.lmbda and record["run"] == "teacher"
    budget = record["budget"]
    assert {"steps", "batch_size", "crop", "schedule", "lr", "wall_seconds", "device", "threads"} <= budget.keys()
    assert budget["steps"] == 6 and budget["crop"] == 64 and budget["schedule"] == "onecycle"
    assert record["val"]["bpp"] == val[-1]["bpp"]
    assert load_state(out / STATE_FILE)["step"] == 6

    # a finished run with the same config returns at once, without building anything
    monkeypatch.setattr(trainer_module, "build_model", lambda *a, **k: pytest.fail("should not train again"))
    assert train(replace(cfg, progress=True, device="cpu")) == path  # runtime fields may differ
    with pytest.raises(ConfigError, match="another config.*lmbda"):
        train(replace(cfg, lmbda=0.013))


@pytest.mark.slow
def test_validation_does_not_change_training(tmp_path):
    """Validation updates CDF tables (buffers training never reads) and restores train mode."""
    a = train(quick(tmp_path, "with_val", role="student", baseline="scratch", val_every=2, val_images=1))
    b = train(quick(tmp_path, "without_val", role="student", baseline="scratch"))
    wa, wb = load_file(a), load_file(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_fresh_start_and_changed_config(tmp_path):
    cfg = quick(tmp_path, "run", steps=4, ckpt_every=2)
    first = load_file(train(cfg))
    (tmp_path / "run" / MODEL_FILE).unlink()  # a state at step 4 remains: resumable, but not with other values
    with pytest.raises(ConfigError, match="another config.*seed"):
        train(replace(cfg, seed=1))
    again = load_file(train(replace(cfg, resume=False)))  # --fresh: starts over, same result
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.slow
def test_warm_start(tmp_path, tiny_checkpoints):
    with pytest.raises(CheckpointMismatchError):
        train(quick(tmp_path, "bad", role="student", baseline="scratch", warm_start=str(tiny_checkpoints["teacher"])))
    torch.manual_seed(123)  # another initialisation than the run's seed gives
    source = save_model(build_model("student", preset="tiny"), tmp_path / "neighbour.safetensors")
    # a tiny constant learning rate: the weights stay where the warm start put them
    path = train(quick(tmp_path, "warm", role="student", baseline="scratch", steps=1, schedule="constant", lr=1e-12,
                       warm_start=str(source)))
    got, src = load_file(path), load_file(source)
    weights = [k for k in src if k.endswith(("weight", "bias"))]
    assert weights and all(torch.allclose(got[k], src[k], atol=1e-6) for k in weights)
    assert read_record(path)["warm_start"] == str(source)


# --- students ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_feds_student_three_stages_frozen_teacher(tmp_path, tiny_checkpoints, monkeypatch):
    teachers = []
    real_load = trainer_module.load_teacher
    monkeypatch.setattr(trainer_module, "load_teacher", lambda *a: teachers.append(real_load(*a)) or teachers[-1])

    path = train(quick(tmp_path, "student", role="student", teacher=str(tiny_checkpoints["teacher"]), steps=10,
                       schedule="constant", lr=1e-3, stage_split=(0.3, 0.5, 0.2), finetune_lr_factor=0.1))
    lines = [m for m in read_metrics(tmp_path / "student") if m["kind"] == "train"]
    assert [m["stage"] for m in lines] == ["feature_alignment"] * 3 + ["channel_distillation"] * 5 + ["fine_tuning"] * 2
    fa, cd, ft = lines[0], lines[3], lines[-1]
    assert "feat_loss" in fa and "ent_loss" not in fa and all(f"feat_{t}" in fa for t in DEFAULT_TAPS)
    assert {"feat_loss", "ent_loss"} <= cd.keys()
    assert "feat_loss" not in ft and "ent_loss" not in ft and ft["loss"] == ft["rd_loss"]
    assert [m["lr"] for m in lines] == [1e-3] * 8 + [pytest.approx(1e-4)] * 2  # fine-tuning at lr * 0.1

    teacher = teachers[0]  # frozen: eval mode, no gradients, weights as loaded
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    on_disk = load_file(tiny_checkpoints["teacher"])
    assert all(torch.equal(v, on_disk[k]) for k, v in teacher.state_dict().items() if k in on_disk)

    state = load_state(tmp_path / "student" / STATE_FILE)
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["model"]  # adapters dropped in stage 3
    assert set(state["adapters"]) == {"feature_alignment", "channel_distillation"}
    record = read_record(path)
    assert record["run"] == "student"
    assert record["teacher"]["fingerprint"] == read_record(tiny_checkpoints["teacher"])["fingerprint"]
    assert record["budget"]["stage_split"] == [0.3, 0.5, 0.2]


@pytest.mark.slow
def test_ablation_switches(tmp_path, tiny_checkpoints):
    teacher = str(tiny_checkpoints["teacher"])
    # no feature alignment, top-k channel pairing (no adapter)
    train(quick(tmp_path, "a", role="student", teacher=teacher, alpha=0.0, weighting="topk", steps=4))
    lines = [m for m in read_metrics(tmp_path / "a") if m["kind"] == "train"]
    assert not any("feat_loss" in m for m in lines) and any("ent_loss" in m for m in lines)
    adapters = load_state(tmp_path / "a" / STATE_FILE)["adapters"]
    assert set(adapters) == {"channel_distillation"} and not adapters["channel_distillation"]  # topk: no P

    # one plain tap, output distillation, no stage 1 and no stage 3
    train(quick(tmp_path, "b", role="student", teacher=teacher, taps=("ga3",), feature_weighting="plain",
                gamma=0.5, beta=0.0, stage_split=(0.0, 1.0, 0.0), steps=3))
    lines = [m for m in read_metrics(tmp_path / "b") if m["kind"] == "train"]
    assert {m["stage"] for m in lines} == {"channel_distillation"}
    assert all("feat_ga3" in m and "feat_gs1" not in m and "out_loss" in m and "ent_loss" not in m for m in lines)


@pytest.mark.slow
def test_any_family_distils_from_any_teacher(tmp_path, tiny_checkpoints):
    """Losses meet models only through forward outputs and feature_channels(): a transformer student
    learns from the CNN teacher through the same code path."""
    train(quick(tmp_path, "x", role="student", family="transformer", teacher=str(tiny_checkpoints["teacher"]),
                steps=3))
    stages = [m["stage"] for m in read_metrics(tmp_path / "x") if m["kind"] == "train"]
    assert stages == ["feature_alignment", "channel_distillation", "fine_tuning"]
    assert read_record(tmp_path / "x" / MODEL_FILE)["model"]["family"] == "transformer"


@pytest.mark.slow
def test_scratch_baseline_needs_no_teacher(tmp_path):
    path = train(quick(tmp_path, "scratch", role="student", baseline="scratch", steps=5))
    lines = [m for m in read_metrics(tmp_path / "scratch") if m["kind"] == "train"]
    assert [m["stage"] for m in lines] == ["rate_distortion"] * 4 + ["fine_tuning"]
    assert all(m["loss"] == m["rd_loss"] for m in lines)
    record = read_record(path)
    assert record["run"] == "scratch" and record["teacher"] is None and record["model"]["role"] == "student"


def test_wrong_teacher_checkpoint_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load the teacher"):
        train(quick(tmp_path, "s", role="student", teacher=str(junk)))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(quick(tmp_path, "s", role="student", teacher=str(tmp_path / "missing.safetensors")))


# --- non-finite steps ----------------------------------------------------------------------------
def _nan_at(monkeypatch, bad_steps):
    real = trainer_module.load_dataset

    def load_dataset(*args, **kwargs):
        ds = real(*args, **kwargs)
        sample = ds.sample_batch

        def sample_batch(step, batch_size, seed=None):
            x = sample(step, batch_size, seed)
            return x.fill_(float("nan")) if bad_steps(step) else x

        ds.sample_batch = sample_batch
        return ds

    monkeypatch.setattr(trainer_module, "load_dataset", load_dataset)


@pytest.mark.slow
def test_nonfinite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    _nan_at(monkeypatch, lambda step: step in (1, 2))
    path = train(quick(tmp_path, "nan", steps=5))
    lines = [m for m in read_metrics(tmp_path / "nan") if m["kind"] == "train"]
    assert [m["skipped"] for m in lines] == [0, 1, 2, 2, 2]
    assert all(math.isfinite(m["loss"]) for m in lines if "loss" in m)
    assert all(torch.isfinite(v).all() for v in load_file(path).values() if v.is_floating_point())
    assert read_record(path)["budget"]["skipped_steps"] == 2


@pytest.mark.slow
def test_too_many_nonfinite_steps_stop_the_run(tmp_path, monkeypatch):
    _nan_at(monkeypatch, lambda step: step >= 4)
    with pytest.raises(NonFiniteLossError, match=r"3 non-finite steps in a row \(max_nonfinite=2\) at step 7.*step 4"):
        train(quick(tmp_path, "nan", steps=10, ckpt_every=2, max_nonfinite=2, rewind_spike=0))
    out = tmp_path / "nan"
    assert load_state(out / STATE_FILE)["step"] == 4  # the last good checkpoint is kept
    assert not (out / MODEL_FILE).exists()


@pytest.mark.slow
def test_nonfinite_steps_that_persist_after_every_rewind_stop_the_run(tmp_path, monkeypatch):
    _nan_at(monkeypatch, lambda step: step >= 4)  # the batches themselves: no learning rate helps
    with pytest.raises(NonFiniteLossError, match=r"diverged at step 7 after 3 rewind"):
        train(quick(tmp_path, "nan", steps=10, ckpt_every=2))
    rewinds = [m for m in read_metrics(tmp_path / "nan") if m["kind"] == "rewind"]
    assert [(m["step"], m["lr_scale"]) for m in rewinds] == [(4, 0.5), (4, 0.25), (4, 0.125)]
    assert load_state(tmp_path / "nan" / STATE_FILE)["step"] == 4


# --- command line --------------------------------------------------------------------------------
def test_cli_builds_the_config(tmp_path):
    parser = argparse.ArgumentParser(prog="feds-lab")
    add_train_parser(parser.add_subparsers(dest="command"))
    yaml_file = tmp_path / "c.yaml"
    TrainConfig(lmbda=0.0035, alpha=2.0, steps=50).save_yaml(yaml_file)
    args = parser.parse_args(["train", "student", "--teacher", "t.safetensors", "--config", str(yaml_file),
                              "--steps", "12", "--set", "alpha=0.5", "--set", "model.M=24", "--fresh",
                              "--data", "imgs", "--device", "cpu", "--no-progress"])
    assert callable(args.func)
    cfg = config_from_args(args)
    assert cfg.role == "student" and cfg.teacher == "t.safetensors"  # the subcommand sets the role
    assert cfg.lmbda == 0.0035 and cfg.steps == 12 and cfg.alpha == 0.5  # yaml < flags < --set
    assert cfg.model == {"M": 24} and cfg.resume is False and cfg.data == "imgs" and cfg.progress is False
    cfg = config_from_args(parser.parse_args(["train", "teacher"]))
    assert cfg.role == "teacher" and cfg.resume is True and cfg == TrainConfig()


@pytest.mark.slow
def test_cli_runs_a_tiny_teacher(tmp_path, capsys):
    from feds_lab.training.cli import main

    out = tmp_path / "t"
    assert main(["train", "teacher", "--steps", "2", "--batch-size", "2", "--out", str(out), "--set", "val_every=0",
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(out / MODEL_FILE)
    assert main(["train", "student", "--out", str(tmp_path / "s")]) == 1  # no teacher: a one-line error
    assert "needs a teacher" in capsys.readouterr().err


def test_a_state_holds_exactly_the_keys_its_schema_declares(tmp_path):
    """TrainingState.capture and the schema load_state checks are one declaration (STATE_SCHEMA)."""
    import torch

    from feds_lab.training.state import STATE_SCHEMA

    out = tmp_path / "run"
    train(TrainConfig(role="teacher", steps=2, batch_size=1, crop=64, val_every=0, ckpt_every=1, progress=False,
                      out=str(out)))
    state = torch.load(out / "state.pt", weights_only=True)
    assert set(state) == set(STATE_SCHEMA)


def test_config_field_groups_are_declared_with_the_fields():
    import dataclasses

    from feds_lab.training.config import (DISTILLATION_FIELDS, PATH_FIELDS, RUNTIME_FIELDS, STUDENT_FIELDS,
                                          ConfigError, fields_in)

    assert {"out", "threads", "grad_log_every", "val_every"} <= RUNTIME_FIELDS
    assert {"alpha", "beta", "tau", "teacher", "clip_mode"} <= DISTILLATION_FIELDS
    assert set(PATH_FIELDS) == {"data", "teacher", "warm_start"} and STUDENT_FIELDS == {"stage_split", "finetune_lr_factor"}
    assert fields_in("preset") == {"steps", "batch_size", "crop", "lr", "schedule", "val_every", "ckpt_every"}
    # every declared choice and bound is checked, once, by check()
    for f in dataclasses.fields(TrainConfig):
        if f.metadata.get("choices") is not None:
            with pytest.raises(ConfigError, match=f"{f.name} must be one of"):
                TrainConfig(**{f.name: "no-such-value"}).resolved()
    with pytest.raises(ConfigError, match="tau must be positive, got 0"):
        TrainConfig(tau=0).resolved()
