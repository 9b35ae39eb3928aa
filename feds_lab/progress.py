"""What the pipeline says while a notebook runs: the cell it is in, and the training run inside it.

The notebook kernel is another process; two things it leaves behind are read from here, with
nothing added to the training loop:

- papermill's cell progress, through nbclient's ``on_cell_start`` hook (code cell k of n, since when);
- each training run's ``metrics.jsonl`` (one line per logged step, flushed at once, with ``step``,
  ``loss`` and ``seconds``) and its ``config.yaml`` (``steps``): current run, step, loss, seconds per
  step, time left, and how many of the pipeline's runs are finished.

:class:`NotebookMonitor` prints one status line every ``every`` seconds (15 by default: progress
at least every 30 s, and about 4 lines a minute, so a log is not flooded), a line when a run
finishes, and the kernel's stderr lines (the trainer's own messages: stages, final results)
prefixed with the notebook's name. Nothing of it goes into the executed notebook: the pipeline
starts its kernels with ``TQDM_DISABLE=1``, so no progress bar lands there either.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"
MODEL = "model.safetensors"


def fmt_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _tail_lines(path: Path, nbytes: int = 16384) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = data.splitlines()
    if size > nbytes and lines:
        lines = lines[1:]  # the first one is cut
    return lines


def run_status(folder: Path, window: int = 20) -> dict | None:
    """Where one training run stands, from its files: ``step``, ``steps``, ``loss``, ``s_per_step``
    (over the last ``window`` logged steps), ``left`` (seconds), ``finished``; None before it logged."""
    records = []
    for line in _tail_lines(folder / METRICS):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # half-written
        if isinstance(rec, dict) and rec.get("kind") == "train" and "step" in rec:
            records.append(rec)
    if not records:
        return None
    last = records[-1]
    try:
        steps = int((yaml.safe_load((folder / CONFIG).read_text()) or {}).get("steps") or 0)
    except (OSError, yaml.YAMLError, ValueError, TypeError, AttributeError):
        steps = 0
    first = records[max(0, len(records) - 1 - window)]
    rate = None
    if last["step"] > first["step"] and "seconds" in last and "seconds" in first:
        rate = (last["seconds"] - first["seconds"]) / (last["step"] - first["step"])
    left = rate * max(0, steps - last["step"]) if rate is not None and steps else None
    return {"step": int(last["step"]), "steps": steps, "loss": last.get("loss"), "s_per_step": rate, "left": left,
            "seconds": last.get("seconds"), "finished": (folder / MODEL).exists()}


def describe_run(name: str, status: dict) -> str:
    parts = [f"{name} step {status['step']}" + (f"/{status['steps']}" if status["steps"] else "")]
    if isinstance(status.get("loss"), (int, float)):
        parts.append(f"loss {status['loss']:.4g}")
    if status.get("s_per_step") is not None:
        parts.append(f"{status['s_per_step']:.2f} s/step")
    if status.get("left") is not None:
        parts.append(f"about {fmt_seconds(status['left'])} left")
    return ", ".join(parts)


class NotebookMonitor:
    """Progress of one notebook run; a context manager around ``papermill.execute_notebook``.

    ``runs``: {display name: run folder} of every training run the pipeline may make; ``code_cells``:
    how many code cells the executed notebook has (papermill's injected parameters cell included).
    ``log`` is called from a background thread as well as the caller's (under a lock).
    """

    def __init__(self, notebook: str, runs: dict[str, Path], log: Callable[[str], None], every: float = 15.0,
                 code_cells: int | None = None):
        self.notebook = notebook
        self.runs = dict(runs)
        self._log = log
        self.every = every
        self.code_cells = code_cells
        self.cell = 0  # code cells started so far
        self.cell_started = self.started = time.monotonic()
        self._wall_started = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = {n for n, f in self.runs.items() if (f / MODEL).exists()}
        self._partial = ""

    # --- hooks -------------------------------------------------------------------------------
    def on_cell_start(self, cell=None, cell_index=None, **_) -> None:
        """nbclient's hook: called before every cell (markdown too; those are not counted)."""
        if cell is None or cell.get("cell_type") == "code":
            self.cell += 1
            self.cell_started = time.monotonic()

    def stderr(self) -> _LineWriter:
        """A file-like object for papermill's ``stderr_file``: each line, prefixed, to the log."""
        return _LineWriter(lambda line: self.log(f"[{self.notebook}] {line}"))

    # --- output --------------------------------------------------------------------------------
    def log(self, line: str) -> None:
        with self._lock:
            self._log(line)

    def current_run(self) -> tuple[str, dict] | None:
        """The unfinished run whose metrics were written last, since this notebook started."""
        best, best_mtime = None, self._wall_started - 1
        for name, folder in self.runs.items():
            if name in self._finished:
                continue
            try:
                mtime = (folder / METRICS).stat().st_mtime
            except OSError:
                continue
            if mtime > best_mtime:
                best, best_mtime = name, mtime
        if best is None:
            return None
        status = run_status(self.runs[best])
        return (best, status) if status else None

    def _newly_finished(self) -> list[str]:
        done = [n for n, f in self.runs.items() if n not in self._finished and (f / MODEL).exists()]
        self._finished.update(done)
        return done

    def status_line(self) -> str:
        now = time.monotonic()
        cells = f"cell {self.cell}" + (f"/{self.code_cells}" if self.code_cells else "")
        parts = [f"[pipeline] {self.notebook}: {fmt_seconds(now - self.started)}",
                 f"{cells} (running {fmt_seconds(now - self.cell_started)})"]
        current = self.current_run()
        if current:
            parts.append(describe_run(*current))
        if self.runs:
            parts.append(f"{len(self._finished)}/{len(self.runs)} training runs finished")
        return " | ".join(parts)

    def tick(self) -> None:
        for name in self._newly_finished():
            status = run_status(self.runs[name])
            took = f" ({status['step']} steps in {fmt_seconds(status['seconds'])})" if status and status.get(
                "seconds") is not None else ""
            self.log(f"[pipeline] {self.notebook}: training run {name} finished{took}")
        self.log(self.status_line())

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.tick()
            except Exception as e:  # progress must never stop the work
                self.log(f"[pipeline] {self.notebook}: (progress unavailable: {type(e).__name__}: {e})")

    def __enter__(self) -> NotebookMonitor:
        self._thread = threading.Thread(target=self._loop, name=f"progress-{self.notebook}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._newly_finished()  # counted, not announced: the final line follows

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class _LineWriter:
    """Collects written text and hands out whole lines (stripped, long ones shortened)."""

    def __init__(self, emit: Callable[[str], None], width: int = 240):
        self.emit, self.width, self.buf = emit, width, ""

    def write(self, text: str) -> int:
        self.buf += text.replace("\r", "\n")
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            if line.strip():
                self.emit(line.rstrip()[: self.width])
        return len(text)

    def flush(self) -> None:
        pass


# --- what the pipeline hands the monitor -----------------------------------------------------------
def pipeline_runs(cfg) -> dict[str, Path]:
    """{display name: folder} of every training run a resolved PipelineConfig may make, as absolute
    paths: papermill changes the process's working directory to notebooks/ while a notebook runs, and
    the monitor's thread reads these folders then (relative ones found nothing: the default run's
    progress lines named no run)."""
    layout = cfg.layout
    runs = {f"teacher l{l:g}": layout.teacher(l) for l in cfg.lambdas} if cfg.teacher == "train" else {}
    for variant in cfg.variants:
        runs.update({f"{variant} l{l:g}": layout.student(variant, l) for l in cfg.lambdas})
    return {name: Path(folder).absolute() for name, folder in runs.items()}


def code_cell_count(notebook: Path, injected: int = 1) -> int | None:
    """Code cells of a notebook, plus the parameters cell papermill injects."""
    try:
        cells = json.loads(Path(notebook).read_text()).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return None
    return sum(c.get("cell_type") == "code" for c in cells) + injected


class kernel_environment:
    """Environment variables for the notebook kernels started inside (they inherit the pipeline's):
    no progress bars (they would become huge outputs in the executed notebook; the monitor reports
    progress instead), and the thread defaults of :mod:`feds_lab.threads` (the pipeline's ``threads``,
    or a fresh choice from the cores free when the kernel starts)."""

    def __init__(self, threads: int | None = None):
        from .threads import kernel_environment as thread_env

        self.values = {"TQDM_DISABLE": "1", **thread_env(threads)}
        self._old: dict[str, str | None] = {}

    def __enter__(self):
        import os

        for key, value in self.values.items():
            self._old[key] = os.environ.get(key)
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        return self

    def __exit__(self, *exc) -> None:
        import os

        for key, value in self._old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
