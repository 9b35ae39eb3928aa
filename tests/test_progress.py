"""Progress reports and busy machines: the pipeline says what it is doing while a notebook runs;
thread defaults for busy machines."""

import json
import re

import pytest

from feds_lab.pipeline import PipelineConfig, run_pipeline
from feds_lab.progress import NotebookMonitor, fmt_seconds, run_status
from feds_lab.threads import AUTO_MARK, allowed_cores, configure_threads, free_cores, kernel_environment

LAMBDAS = [0.0035, 0.0067, 0.013, 0.025]
STEPS = 24


@pytest.fixture(scope="module")
def teacher_notebook_run(tmp_path_factory):
    """Notebook 01 alone: four tiny teachers of a few steps, progress every second."""
    tmp = tmp_path_factory.mktemp("progress")
    cfg = PipelineConfig().updated(dict(
        name="p", runs_dir=str(tmp / "runs"), lambdas=LAMBDAS, teacher="train", teacher_steps=STEPS, student_steps=STEPS,
        notebooks=["01_teacher_training"], figures_dir=None, threads=1,
        train={"batch_size": 2, "val_every": 0}))  # progress bars left on: the kernel must not draw them
    logs: list[str] = []
    run = run_pipeline(cfg, log=logs.append, progress_every=1.0)
    return run, logs


@pytest.mark.slow
def test_progress_lines_name_the_cell_the_run_the_step_and_the_time_left(teacher_notebook_run):
    run, logs = teacher_notebook_run
    status = [line for line in logs if line.startswith("[pipeline] 01_teacher_training: ") and " | cell " in line]
    assert len(status) >= 3, logs
    assert all(re.search(r"\| cell \d+/\d+ \(running \d+", line) for line in status)
    training = [line for line in status if re.search(r"teacher l[\d.]+ step \d+/24, loss [\d.]+", line)]
    assert training, status
    assert any("s/step" in line and "left" in line for line in training), training
    # each teacher's end is announced with its steps, and counted
    finished = [line for line in logs if "training run teacher l" in line and "finished (24 steps" in line]
    assert len(finished) >= 3, logs  # the last one may end between two ticks (then only counted)
    assert any(re.search(r"[1-4]/12 training runs finished", line) for line in status)
    # the trainer's own messages reach the log from the kernel's stderr, prefixed
    assert any(line.startswith("[01_teacher_training] ") and "model.safetensors: 24 steps" in line for line in logs)
    # the final line with the notebook's time
    assert any(re.fullmatch(r"\[pipeline\] 01_teacher_training: done in \d+ (s|min \d\d s)", line) for line in logs)


@pytest.mark.slow
def test_the_executed_notebook_holds_no_progress_bars(teacher_notebook_run):
    run, _ = teacher_notebook_run
    nb = json.loads((run / "notebooks" / "01_teacher_training.ipynb").read_text())
    outputs = [o for c in nb["cells"] for o in c.get("outputs", [])]
    assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    text = "".join("".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream")
    assert "it/s" not in text and "s/it" not in text  # tqdm's rate, in any form it prints
    assert len(text) < 20_000


@pytest.mark.slow
def test_progress_lines_do_not_flood(teacher_notebook_run):
    run, logs = teacher_notebook_run
    state = json.loads((run / "state.json").read_text())
    seconds = state["01_teacher_training"]["seconds"]
    status = [line for line in logs if " | cell " in line]
    assert len(status) <= seconds / 1.0 + 2  # one a tick


def test_run_status_from_metrics(tmp_path):
    (tmp_path / "config.yaml").write_text("steps: 100\nrole: teacher\n")
    lines = [{"step": s, "kind": "train", "loss": 2.0 - s / 100, "seconds": 0.5 * s} for s in range(1, 41)]
    lines.insert(10, {"step": 10, "kind": "val", "psnr": 20.0, "seconds": 9.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 41, "ki')
    st = run_status(tmp_path)
    assert st["step"] == 40 and st["steps"] == 100 and st["loss"] == pytest.approx(1.6)
    assert st["s_per_step"] == pytest.approx(0.5) and st["left"] == pytest.approx(30.0)
    assert not st["finished"]
    assert run_status(tmp_path / "nothing") is None


def test_monitor_picks_the_run_being_written(tmp_path):
    runs = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.yaml").write_text("steps: 10\n")
        runs[name] = folder
    lines: list[str] = []
    mon = NotebookMonitor("nb", runs, lines.append, code_cells=5)
    (runs["b"] / "metrics.jsonl").write_text(json.dumps({"step": 3, "kind": "train", "loss": 1.5, "seconds": 3.0}) + "\n")
    mon.on_cell_start({"cell_type": "markdown"})
    mon.on_cell_start({"cell_type": "code"})
    mon.tick()
    assert "cell 1/5" in lines[-1] and "b step 3/10, loss 1.5" in lines[-1] and "0/2 training runs finished" in lines[-1]
    (runs["b"] / "model.safetensors").write_bytes(b"x")
    mon.tick()
    assert any("training run b finished" in line for line in lines)
    assert "1/2 training runs finished" in lines[-1] and "b step" not in lines[-1]
    assert fmt_seconds(59) == "59 s" and fmt_seconds(61) == "1 min 01 s" and fmt_seconds(3700) == "1 h 01 min"


# --- thread defaults -----------------------------------------------------------------------------

def test_free_cores_is_within_the_affinity_mask():
    n = free_cores(0.05)
    assert 1 <= n <= len(allowed_cores())


def test_configure_threads_respects_the_user_and_waits_passively_only_beside_others(monkeypatch):
    import feds_lab.threads as th

    cores = len(allowed_cores())
    monkeypatch.setattr(th, "free_cores", lambda sample_s=0.1: cores)  # a quiet machine
    env = {}
    assert configure_threads(env) == cores
    assert "OMP_WAIT_POLICY" not in env and env["OMP_NUM_THREADS"] == str(cores) and env[AUTO_MARK] == str(cores)
    monkeypatch.setattr(th, "free_cores", lambda sample_s=0.1: 1)  # another process holds the other cores
    busy = {}
    assert configure_threads(busy) == 1
    assert (busy["OMP_WAIT_POLICY"] == "PASSIVE") == (cores > 1)
    # a child (a kernel) that inherited automatic choices chooses again, on the load it sees
    monkeypatch.setattr(th, "free_cores", lambda sample_s=0.1: cores)
    assert configure_threads(busy) == cores and "OMP_WAIT_POLICY" not in busy
    # one whose OMP_NUM_THREADS a parent set to something else keeps it
    busy["OMP_NUM_THREADS"] = "99"
    assert configure_threads(busy) is None and busy["OMP_NUM_THREADS"] == "99" and AUTO_MARK not in busy
    # the user's own settings stand
    user = {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    assert configure_threads(user) is None and user == {"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"}
    assert configure_threads({"FEDS_LAB_THREADS": "5"}) == 5
    own_wait = {"FEDS_LAB_THREADS": "1", "OMP_WAIT_POLICY": "ACTIVE"}
    configure_threads(own_wait)
    assert own_wait["OMP_WAIT_POLICY"] == "ACTIVE"
    torch_defaults = {"FEDS_LAB_THREADS": "torch"}
    assert configure_threads(torch_defaults) is None and "OMP_WAIT_POLICY" not in torch_defaults
    # under torchrun the free cores are shared among the node's processes
    assert configure_threads({"LOCAL_WORLD_SIZE": "64"}) == 1


def test_the_governor_follows_other_processes(monkeypatch):
    from feds_lab.threads import ThreadGovernor

    class FakeTorch:
        n = 2

        def get_num_threads(self):
            return self.n

        def set_num_threads(self, n):
            self.n = n

    clock = {"t": 0.0, "busy": 0, "own": 0.0}
    hz = __import__("os").sysconf("SC_CLK_TCK")

    def cpu_times():  # the busy jiffies of two cores, split evenly
        return {0: (clock["busy"] // 2, 0), 1: (clock["busy"] - clock["busy"] // 2, 0)}

    def run_for(seconds, ours, others):  # cores' worth of our work and other processes' work
        clock["t"] += seconds
        clock["own"] += ours * seconds
        clock["busy"] += int(round((ours + others) * seconds * hz))

    monkeypatch.setenv(AUTO_MARK, "2")  # the count chosen at the start
    monkeypatch.delenv("FEDS_LAB_THREADS", raising=False)
    torch = FakeTorch()
    gov = ThreadGovernor(every=10, _cpu_times=cpu_times, _own=lambda: clock["own"], _clock=lambda: clock["t"],
                         _torch=torch)
    gov.cores = [0, 1]
    assert gov.tick() is None  # the first look only samples
    run_for(11, ours=2.0, others=0.0)
    assert gov.tick() is None and torch.n == 2  # alone: keeps both
    run_for(11, ours=1.3, others=0.7)  # another process arrived (it gets a share of one core)
    assert gov.tick() == 1 and torch.n == 1
    run_for(5, ours=1.0, others=1.0)
    assert gov.tick() is None  # not yet time to look
    run_for(6, ours=1.0, others=1.0)
    assert gov.tick() is None and torch.n == 1
    run_for(11, ours=1.0, others=0.0)  # it left: back to the count chosen at the start, never past it
    assert gov.tick() == 2 and torch.n == 2
    monkeypatch.setenv(AUTO_MARK, "0")  # the user chose the threads: the governor does nothing
    assert ThreadGovernor(_torch=torch).tick() is None


def test_kernel_environment_passes_threads_or_lets_the_kernel_choose(monkeypatch):
    assert kernel_environment(2)["OMP_NUM_THREADS"] == "2"
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("FEDS_LAB_WAIT_AUTO", raising=False)
    env = kernel_environment(None)
    assert env[AUTO_MARK] and "OMP_NUM_THREADS" not in env and "OMP_WAIT_POLICY" not in env
    if len(allowed_cores()) > 1:
        assert kernel_environment(1)["OMP_WAIT_POLICY"] == "PASSIVE"  # one thread beside others: passive
    assert kernel_environment(len(allowed_cores()))["OMP_WAIT_POLICY"] is None  # all cores: OpenMP's own
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert "OMP_WAIT_POLICY" not in kernel_environment(1)  # the user's stands (inherited)


def test_the_monitor_finds_runs_while_papermill_has_changed_the_directory(tmp_path, monkeypatch):
    # the default run folder is relative (runs/demo); papermill runs a notebook in notebooks/
    from feds_lab.pipeline import PipelineConfig
    from feds_lab.progress import NotebookMonitor, pipeline_runs

    monkeypatch.chdir(tmp_path)
    cfg = PipelineConfig(teacher="train", lambdas=[0.0018, 0.0067, 0.025, 0.0932]).resolved()
    runs = pipeline_runs(cfg)
    folder = runs["teacher l0.0018"]
    assert folder.is_absolute()
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("steps: 10\n")
    (folder / "metrics.jsonl").write_text('{"step": 3, "kind": "train", "loss": 2.5, "seconds": 3.0}\n')
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # as papermill's cwd= does, around the whole execution
    line = NotebookMonitor("01_teacher_training", runs, log=lambda m: None).status_line()
    assert "teacher l0.0018 step 3/10" in line
