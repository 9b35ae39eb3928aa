"""Hostile inputs to training: training states, run folders, pipeline values and the one atomic writer."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest
import torch

from feds_lab import build_model
from feds_lab.errors import FedsLabError, TrainingStateError
from feds_lab.io import atomic_write, check_output, stale_temporaries
from feds_lab.pipeline import PipelineConfig
from feds_lab.training.config import TrainConfig
from feds_lab.training.state import STATE_FILE, clean_stale_temporaries, load_state, save_state

PACKAGE = Path(__file__).resolve().parents[1] / "feds_lab"


@pytest.fixture(scope="module")
def state():
    """A state of the shape the trainer writes (real weights of the model its config builds)."""
    cfg = TrainConfig.from_dict({"role": "student", "preset": "tiny", "steps": 10, "baseline": "scratch"})
    torch.manual_seed(0)
    model = build_model(cfg.role, preset=cfg.preset, family=cfg.family, **(cfg.model or {}))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return {"format": "feds-lab-train-state/1", "step": 4, "stage": "rate_distortion", "nonfinite": 0, "skipped": 0,
            "seconds": 1.5, "window": {"n": 1, "sums": {"loss": torch.tensor(2.0)}}, "model": model.state_dict(),
            "adapters": {}, "optimizer": opt.state_dict(), "aux_optimizer": opt.state_dict(), "scheduler": None,
            "rng": [torch.get_rng_state()], "cuda_rng": None, "world_size": 1, "config": cfg.to_dict()}


def _save(state, tmp_path, name=STATE_FILE):
    p = tmp_path / name
    save_state(state, p)
    return p


def test_a_good_state_loads(state, tmp_path):
    got = load_state(_save(state, tmp_path), steps=10)
    assert got["step"] == 4 and set(got["model"]) == set(state["model"])


def _edit(state, **changes):
    s = dict(state)
    for k, v in changes.items():
        if v is KeyError:
            s.pop(k)
        else:
            s[k] = v
    return s


def _nan_model(state):
    model = dict(state["model"])
    k = next(k for k, v in model.items() if v.is_floating_point())
    model[k] = torch.full_like(model[k], float("nan"))
    return model


def _reshaped(state):
    model = dict(state["model"])
    k = next(k for k, v in model.items() if v.dim() == 4)
    model[k] = torch.zeros(3)
    return model


@pytest.mark.parametrize("change, message", [
    (lambda s: _edit(s, step=10**9), "beyond"),  # once a "finished" model that never trained
    (lambda s: _edit(s, step=-1), "negative"),
    (lambda s: _edit(s, step=True), "bool"),
    (lambda s: _edit(s, step=3.5), "float"),
    (lambda s: _edit(s, model=_nan_model(s)), "non-finite"),
    (lambda s: _edit(s, model=_reshaped(s)), "differ in shape"),
    (lambda s: _edit(s, stage="nope"), "stage"),
    (lambda s: _edit(s, window={"n": -1, "sums": {}}), "window"),
    (lambda s: _edit(s, rng=[torch.zeros(10, dtype=torch.uint8)]), "RNG"),
    (lambda s: _edit(s, optimizer={"state": {}, "param_groups": [{"params": [0, 0]}]}), "optimizer"),
    (lambda s: _edit(s, config={**s["config"], "preset": "nope"}), "config"),
    (lambda s: _edit(s, stage=KeyError), "stage"),
    (lambda s: [s], "list"),
])
def test_bad_states_give_one_line(state, tmp_path, change, message):
    p = tmp_path / STATE_FILE
    torch.save(change(state), p)
    with pytest.raises(TrainingStateError, match=message) as e:
        load_state(p, steps=10)
    assert "\n" not in str(e.value)


def test_step_is_checked_against_the_run_config(state, tmp_path):
    p = _save(state, tmp_path)
    with pytest.raises(TrainingStateError, match="beyond this run's 3 steps"):
        load_state(p, steps=3)


def test_a_pickle_is_refused_in_one_line_without_torch_warnings(state, tmp_path, capfd):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    p = tmp_path / STATE_FILE
    torch.save({**state, "window": Evil()}, p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TrainingStateError) as e:
            load_state(p)
    assert not caught and capfd.readouterr().err == ""
    assert "\n" not in str(e.value) and "system" in str(e.value) and "weights-only" in str(e.value)
    assert not (tmp_path / "pwned").exists()
    for data in (b"", b"garbage", p.read_bytes()[:200]):
        p.write_bytes(data)
        with pytest.raises(TrainingStateError) as e:
            load_state(p)
        assert "\n" not in str(e.value)


def test_stale_temporaries_are_cleaned(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / ".state.pt.abc123.tmp", run / ".model.safetensors.x.tmp", run / ".metrics.jsonl.q.tmp"]
    keep = [run / ".notes.txt.a.tmp", run / "state.pt", run / "other.tmp"]
    for p in stale + keep:
        p.write_bytes(b"x" * 100)
    assert set(clean_stale_temporaries(run)) == set(stale)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in keep)
    assert clean_stale_temporaries(tmp_path / "absent") == []


def test_a_killed_write_leaves_only_a_temporary_that_resume_removes(tmp_path):
    target = tmp_path / STATE_FILE

    def die(f):
        f.write(b"half")
        raise KeyboardInterrupt  # a kill between write and rename

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, die)
    assert not target.exists() and not stale_temporaries(tmp_path, [STATE_FILE])  # cleaned by the writer itself
    (tmp_path / f".{STATE_FILE}.k1ll3d.tmp").write_bytes(b"x")  # what SIGKILL leaves (no finally runs)
    assert len(clean_stale_temporaries(tmp_path)) == 1


def test_one_atomic_writer_in_the_package():
    """mkstemp and os.replace appear in feds_lab/io.py only: every atomic write goes through it."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "io.py" and path.parent == PACKAGE:
            continue
        code = re.sub(r'"""[\s\S]*?"""', "", path.read_text())
        if re.search(r"mkstemp\(|os\.replace\(|os\.rename\(", code):
            offenders.append(str(path.relative_to(PACKAGE)))
    assert offenders == []


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_writer_gives_the_umask_mode(tmp_path, umask, state):
    from feds_lab.checkpoint import save_model
    from feds_lab.coding import save_image, write_bytes

    old = os.umask(umask)
    try:
        files = [write_bytes(tmp_path / "a.feds", b"x"), save_image(torch.rand(1, 3, 8, 8), tmp_path / "a.png"),
                 save_model(build_model("student", preset="tiny"), tmp_path / "m.safetensors"),
                 _save(state, tmp_path)]
    finally:
        os.umask(old)
    assert {p.stat().st_mode & 0o777 for p in files} == {0o666 & ~umask}


def test_check_output(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"1")
    with pytest.raises(FedsLabError, match="input"):
        check_output(a, [a], force=True)
    with pytest.raises(FedsLabError, match="exists"):
        check_output(a, [])
    assert check_output(a, [], force=True) == a
    assert check_output(tmp_path / "new.png", [a]) == tmp_path / "new.png"


@pytest.mark.parametrize("values, message", [
    ({"teacher": "train", "teacher_steps": 0}, "teacher_steps"),  # once silently the preset's 400
    ({"student_steps": 0}, "student_steps"),
    ({"teacher": "train", "teacher_steps": -5}, "teacher_steps"),
    ({"student_steps": 2.5}, "student_steps"),
    ({"lambdas": [0.01, -0.1]}, "lambdas"),
    ({"lambdas": [float("nan")]}, "lambdas"),
    ({"lambdas": []}, "lambdas"),
    ({"name": "../../x"}, "run name"),
    ({"name": "a/b"}, "run name"),
    ({"name": ".."}, "run name"),
    ({"name": ""}, "run name"),
    ({"seed": -1}, "seed"),
])
def test_pipeline_values_are_checked_before_any_kernel(values, message):
    with pytest.raises(FedsLabError, match=message):
        PipelineConfig().updated(values).resolved()


def test_pipeline_defaults_and_explicit_values():
    cfg = PipelineConfig().updated({"teacher": "train", "teacher_steps": 7, "name": "my-run.2"}).resolved()
    assert cfg.teacher_steps == 7 and cfg.student_steps > 0 and cfg.name == "my-run.2"
    assert PipelineConfig(teacher="train").resolved().teacher_steps > 0  # None: the preset's
    assert PipelineConfig().resolved().teacher == "zoo"  # the default: the shipped, long-trained ladder
