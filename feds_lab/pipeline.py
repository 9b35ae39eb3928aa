"""The workbench's main job: the four notebooks, run headless with papermill, one after another.

::

    01_teacher_training ─► 02_channel_entropy ─► 03_distillation ─► 04_rd_analysis ─► report/index.html

A run folder ``runs/<name>/`` holds everything one pipeline run made (its layout:
``feds_lab.run_folder``). The pipeline writes the resolved :class:`~feds_lab.pipeline_config.PipelineConfig`
to the run's ``pipeline.yaml`` and hands each notebook the run folder only; every notebook reads its
parameters from that file. ``--resume`` skips a notebook whose source and parameters are those of its
last completed run (the run folder's ``state.json`` keeps a digest of both).

The key figures are also copied to the repository's ``figures/`` when ``figures_dir`` is set.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import FedsLabError
from .pipeline_checks import checked_lambdas
from .pipeline_config import PipelineConfig
from .presets import PRESET_NAMES
from .report import write_report
from .run_folder import KEY_FIGURES, KEY_TABLES, NOTEBOOKS, RunLayout

__all__ = ["KEY_FIGURES", "KEY_TABLES", "NOTEBOOKS", "NOTEBOOK_DIR", "PipelineConfig", "PipelineError",
           "copy_key_figures", "run_pipeline", "train_runs"]

#: The notebooks' committed sources (NN_name.py, jupytext percent format) and their .ipynb.
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


class PipelineError(FedsLabError):
    """A notebook failed; the message names it and the failing cell's error."""


# --- running -------------------------------------------------------------------------------------

def _digest(params: dict[str, Any], notebook: Path) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    h.update(notebook.read_bytes())
    return h.hexdigest()[:16]


def _failure_message(name: str, err: Exception) -> str:
    ename = getattr(err, "ename", type(err).__name__)
    evalue = getattr(err, "evalue", str(err))
    cell = getattr(err, "exec_count", None)
    where = f" in cell [{cell}]" if cell else ""
    return f"notebook {name} failed{where}: {ename}: {evalue}"


#: The kernel's own log stays quiet: at shutdown the kernel manager interrupts it first, and ipykernel logs
#: that interrupt as "ERROR | KeyboardInterrupt caught in kernel" after a notebook that succeeded. A cell's
#: errors reach the pipeline through the notebook's outputs, not through this log.
KERNEL_ARGUMENTS = ["--IPKernelApp.log_level=CRITICAL"]


def _check_images(cfg: PipelineConfig) -> None:
    from .data import check_data_folder

    check_data_folder(cfg.data, "all", what="data")
    check_data_folder(cfg.eval_data, cfg.eval_split, what="eval_data")


def run_pipeline(config: PipelineConfig, resume: bool = False, log=print, progress_every: float = 15.0) -> Path:
    """Run the notebooks in order; returns the run folder. Stops at the first failing notebook.

    While a notebook runs, ``log`` gets a progress line every ``progress_every`` seconds (cell, training
    run, step, loss, time left; :mod:`feds_lab.progress`), the kernel's stderr lines, and a final line
    with the notebook's time."""
    import papermill as pm

    from .progress import NotebookMonitor, code_cell_count, fmt_seconds, kernel_environment, pipeline_runs

    cfg = config.resolved()
    _check_images(cfg)  # before any kernel starts: a folder with no readable image says so now
    layout = RunLayout(cfg.run_dir.resolve())  # absolute: papermill runs each notebook in notebooks/
    layout.notebooks.mkdir(parents=True, exist_ok=True)
    layout.pipeline_file.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))  # what the notebooks read
    state_path = layout.state_file
    state = json.loads(state_path.read_text()) if resume and state_path.exists() else {}
    params = cfg.notebook_parameters()
    t_all = time.perf_counter()
    for name in cfg.notebooks:
        src = NOTEBOOK_DIR / f"{name}.ipynb"
        if not src.is_file():
            raise PipelineError(f"notebook {src} is missing")
        digest = _digest(cfg.resume_key(), src)
        out = layout.notebook(name)
        if resume and state.get(name, {}).get("digest") == digest and out.exists():
            log(f"[pipeline] {name}: already completed with the same parameters, skipped (--resume)")
            continue
        log(f"[pipeline] {name}: running ...")
        t0 = time.perf_counter()
        try:
            with kernel_environment(cfg.threads), NotebookMonitor(
                    name, pipeline_runs(cfg), log, every=progress_every, code_cells=code_cell_count(src)) as monitor:
                pm.execute_notebook(str(src), str(out), parameters=params, kernel_name="python3",
                                    cwd=str(NOTEBOOK_DIR), progress_bar=False, log_output=False,
                                    stderr_file=monitor.stderr(), on_cell_start=monitor.on_cell_start,
                                    extra_arguments=KERNEL_ARGUMENTS)
        except Exception as e:  # papermill's PapermillExecutionError carries the cell's error
            state.pop(name, None)
            state_path.write_text(json.dumps(state, indent=2))
            raise PipelineError(_failure_message(name, e) + f" (executed copy: {out})") from None
        seconds = time.perf_counter() - t0
        state[name] = {"digest": digest, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        state_path.write_text(json.dumps(state, indent=2))
        log(f"[pipeline] {name}: done in {fmt_seconds(seconds)}")
    index = write_report(layout.root)
    log(f"[pipeline] report: {index}")
    if config.figures_dir:
        copied = copy_key_figures(layout, Path(config.figures_dir))
        log(f"[pipeline] {len(copied)} key figures and tables copied to {config.figures_dir}/")
    total = time.perf_counter() - t_all
    log(f"[pipeline] finished in {total / 60:.1f} min: {layout.root}")
    return layout.root


def copy_key_figures(layout: RunLayout, dest: Path) -> list[Path]:
    """The key figures, and the tables they were drawn from (bd_rate.csv, params_speed.csv,
    learning_curve.csv), so that a README's numbers can be checked against files in git."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    sources = [layout.figures / n for n in KEY_FIGURES] + [layout.results / n for n in KEY_TABLES]
    for src in sources:
        if src.exists():
            copied.append(Path(shutil.copy2(src, dest / src.name)))
    return copied


# --- CLI -----------------------------------------------------------------------------------------

def _cmd_pipeline(args) -> None:
    cfg = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
    values: dict[str, Any] = {}
    for item in args.set or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise FedsLabError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = yaml.safe_load(raw)
    for key in ("name", "preset", "family", "teacher", "data", "eval_data", "device", "runs_dir"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if args.lambdas:
        values["lambdas"] = checked_lambdas(args.lambdas.split(","))
    cfg = cfg.updated(values)
    if args.train_only:
        train_runs(cfg, [v.strip() for v in args.train_only.split(",") if v.strip()])
        return
    run_pipeline(cfg, resume=args.resume)


def train_runs(config: PipelineConfig, variants: list[str], log=print) -> list[Path]:
    """Train the teachers and the ladders of ``variants`` of a pipeline run, without its notebooks.

    For sharing work: several such processes (one thread each on a small machine, or one per GPU) can
    fill one run folder side by side, each with other variants, and the pipeline then finds every
    finished run (a finished run with the same config returns at once; a killed one resumes). The
    teachers come first in every process: start the processes after the teachers, or give the first
    process the teachers alone (``--train-only teacher``)."""
    from .training import train

    cfg = config.resolved()
    _check_images(cfg)
    unknown = [v for v in variants if v != "teacher" and v not in cfg.variants]
    if unknown:
        raise FedsLabError(f"--train-only: unknown variant(s) {unknown}; known: teacher, {', '.join(cfg.variants)}")
    done = [cfg.teacher_model(l) for l in cfg.lambdas]  # the zoo's, or trained here
    for v in variants:
        if v != "teacher":
            done += [train(cfg.train_config("student", l, variant=v)) for l in cfg.lambdas]
    log(f"[pipeline] {len(done)} training runs finished in {cfg.run_dir}")
    return done


def add_pipeline_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="run the four notebooks headless, in order (the main job)")
    p.add_argument("--config", help="pipeline YAML (e.g. configs/pipelines/tiny.yaml, configs/pipelines/study.yaml)")
    p.add_argument("--name", help="run folder name under runs/ (default: demo)")
    p.add_argument("--preset", choices=PRESET_NAMES)
    p.add_argument("--family")
    p.add_argument("--teacher", choices=("zoo", "train"),
                   help="the shipped, long-trained teachers (zoo, the default) or teachers trained here (train)")
    p.add_argument("--data", help="training images folder (default: scikit-image's bundled photographs)")
    p.add_argument("--eval-data", dest="eval_data", help="evaluation images folder, e.g. Kodak")
    p.add_argument("--lambdas", help="comma-separated, e.g. 0.0035,0.0067,0.013,0.025")
    p.add_argument("--device")
    p.add_argument("--runs-dir", dest="runs_dir")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any PipelineConfig field (YAML value)")
    p.add_argument("--resume", action="store_true", help="skip notebooks that completed with the same parameters")
    p.add_argument("--train-only", dest="train_only", metavar="VARIANTS",
                   help="train the teachers and these student variants' ladders (comma-separated; 'teacher' for "
                        "the teachers alone) and stop: several processes can fill one run folder side by side")
    p.set_defaults(func=_cmd_pipeline)


def _cmd_lab(args) -> None:
    import os
    import subprocess

    # register this environment as the "feds-lab" kernel, so notebooks never meet a kernel
    # that cannot import feds_lab
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "feds-lab",
                    "--display-name", "feds-lab (.venv)"], check=True, capture_output=True)
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={NOTEBOOK_DIR}", "--ip", args.ip,
           "--port", str(args.port)]
    if args.no_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers and CI run as root; the server refuses root without it
    os.execv(sys.executable, cmd)


def add_lab_parser(sub) -> None:
    p = sub.add_parser("lab", help="open JupyterLab on notebooks/ with the project's own kernel")
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8888)
    p.add_argument("--no-browser", action="store_true")
    p.set_defaults(func=_cmd_lab)
