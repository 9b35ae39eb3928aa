"""Re-create a zoo ladder: the long lambdas trained from scratch, the others fine-tuned from a neighbour.

As CompressAI's zoo and most LIC papers train their ladders: one (or a few) lambda trained until its
validation curve flattens, each other lambda started from the nearest trained one (in log lambda)
and fine-tuned for fewer steps. Every run is an ordinary ``feds-lab train teacher`` run in its own
folder (``<runs>/<name>``), in its own process with one thread, several side by side (``jobs``): a
kill or a reboot loses at most ``ckpt_every`` steps, and the same command resumes every run. A run
folder that is gone can be seeded from an interim state (``interim``: a folder of ``<name>/state.pt``
kept where a long run must survive a move to another machine). Finished runs are published into
the zoo (:func:`feds_lab.zoo.publish`) with the data's sources in their record.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import ZOO_DIR, chain_in, publish, source_in, val_curve, zoo_name


@dataclass
class LadderPlan:
    """How a ladder is trained (ours: the budget and schedules below were chosen for two CPU cores)."""

    family: str = "cnn"
    preset: str = "tiny"
    #: the whole ladder: CompressAI's lambdas for qualities 1 to 7 and one more below (0.0009): on the
    #: tiny teacher 0.0035 settled at 0.25 bpp, 0.0018 at 0.19 (tune-val), so 0.15 needs a lower one
    lambdas: tuple[float, ...] = (0.0009, 0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932)
    long: tuple[float, ...] = (0.013, 0.0483)  #: trained from scratch for ``steps``
    #: {fine-tuned lambda: the lambda it starts from} where that is not the nearest long one: a lambda
    #: beyond the ladder's end is fine-tuned from its neighbour, which may be fine-tuned itself (a chain)
    sources: dict[float, float] = field(default_factory=lambda: {0.0018: 0.0035, 0.0009: 0.0018})
    #: trained (as other lambdas' sources) but not shipped, so that both families' ladders fit the zoo's
    #: 20 MB: the zoo ships the lambdas the presets' ladders and the studies use (0.0035, 0.0067, 0.025,
    #: 0.0932) and, for the CNN, the bottom (0.0009); 0.0483 is dominated by 0.025 on the tiny CNN
    #: teacher (29.04 dB at 0.660 bpp against 29.06 at 0.424 on tune-val)
    unshipped: tuple[float, ...] = (0.0018, 0.013, 0.0483)
    steps: int = 20_000  #: one-cycle over all steps, peak ``lr`` (the preset's batch and crop)
    lr: float = 2e-3
    finetune_steps: int = 5_000  #: the others: warm-started from the nearest trained lambda
    finetune_lr: float = 1e-3
    data: str | None = None  #: image folder (the built-in photographs when None)
    split: str = "tune-train"  #: never the reported images (validation on tune-val)
    val_every: int = 1_000
    ckpt_every: int = 250
    runs: str = "runs/zoo"
    extra: dict[str, Any] = field(default_factory=dict)  #: more TrainConfig values for every run

    def name(self, lmbda: float) -> str:
        return zoo_name(self.family, self.preset, "teacher", lmbda)

    def source(self, lmbda: float) -> float | None:
        """The lambda a fine-tuned lambda starts from: its entry of ``sources``, else the nearest long one
        (log distance); None for a long one."""
        return source_in(lmbda, self.long, self.sources)

    def ships(self, lmbda: float) -> bool:
        """Whether a finished lambda is published into the zoo (not one of ``unshipped``)."""
        return not any(math.isclose(lmbda, x) for x in self.unshipped)

    def check(self) -> None:
        """Every source is a lambda of the ladder and every chain ends at a long lambda."""
        from ..errors import FedsLabError

        def has(x: float) -> bool:
            return any(math.isclose(x, y) for y in self.lambdas)

        if not self.long or not all(has(x) for x in self.long):
            raise FedsLabError(f"the long lambdas {list(self.long)} must be lambdas of the ladder {list(self.lambdas)}")
        for lmbda, src in self.sources.items():
            if not has(lmbda) or not has(src) or math.isclose(lmbda, src):
                raise FedsLabError(f"--from {lmbda:g}={src:g}: both must be other lambdas of the ladder {list(self.lambdas)}")
            if any(math.isclose(lmbda, x) for x in self.long):
                raise FedsLabError(f"--from {lmbda:g}={src:g}: {lmbda:g} is a long lambda (trained from scratch)")
        for lmbda in self.lambdas:
            seen, x = [lmbda], self.source(lmbda)
            while x is not None:
                if any(math.isclose(x, y) for y in seen):
                    raise FedsLabError("the fine-tuning sources go round in a circle: " + " <- ".join(f"{v:g}" for v in seen + [x]))
                seen.append(x)
                x = self.source(x)

    def config(self, lmbda: float):
        from ..training.config import TrainConfig

        src = self.source(lmbda)
        values = dict(role="teacher", family=self.family, preset=self.preset, lmbda=lmbda, data=self.data,
                      train_split=self.split, threads=1, val_every=self.val_every, ckpt_every=self.ckpt_every,
                      schedule="onecycle", progress=False, out=str(Path(self.runs) / self.name(lmbda)),
                      steps=self.steps if src is None else self.finetune_steps,
                      lr=self.lr if src is None else self.finetune_lr,
                      warm_start=None if src is None else str(Path(self.runs) / self.name(src) / "model.safetensors"))
        return TrainConfig(**{**values, **self.extra})

    def order(self) -> list[float]:
        """The long lambdas first, then the fine-tuned ones by the length of their chain, nearest their
        source first."""
        def depth(x: float) -> int:
            return 0 if self.source(x) is None else 1 + depth(self.source(x))

        rest = [x for x in self.lambdas if self.source(x) is not None]
        return list(self.long) + sorted(rest, key=lambda x: (depth(x), abs(math.log(self.source(x) / x))))


def _finished(run: Path) -> bool:
    return (run / "model.safetensors").is_file()


def _progress(run: Path) -> str:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    step, val = 0, ""
    for line in lines[-2000:]:
        try:
            m = json.loads(line)
        except ValueError:
            continue
        step = max(step, int(m.get("step", 0)))
        if m.get("kind") == "val" and "psnr" in m:
            val = f", val {m['psnr']:.2f} dB at {m['bpp']:.3f} bpp (step {m['step']})"
    return f"step {step}{val}"


def seed_from_interim(run: Path, interim: Path | None) -> bool:
    """A run folder without a state or a model gets the interim one, if there is one: an unfinished
    run's config, state and metrics, or a finished run's config, model and metrics (its fine-tunes
    and the publication then go on from it)."""
    if interim is None or (run / "state.pt").exists() or _finished(run):
        return False
    src = interim / run.name
    if not ((src / "state.pt").is_file() or (src / "model.safetensors").is_file()):
        return False
    run.mkdir(parents=True, exist_ok=True)
    for f in ("config.yaml", "state.pt", "model.safetensors", "metrics.jsonl"):  # plain metrics: older interims
        if (src / f).is_file():
            shutil.copy2(src / f, run / f)
    if (src / "metrics.jsonl.gz").is_file():
        with gzip.open(src / "metrics.jsonl.gz", "rb") as f_in, open(run / "metrics.jsonl", "wb") as f_out:
            shutil.copyfileobj(f_in, f_out)
    return True


def save_interim(plan: LadderPlan, interim: Path, finished: bool = False) -> list[Path]:
    """Copy every unfinished run's latest state into ``interim``, and with ``finished`` every finished
    run that is not published yet as its model alone (a few MB where the state with its optimiser is
    several times that); each with its config and its metrics (gzipped)."""
    saved = []
    for lmbda in plan.lambdas:
        run = Path(plan.runs) / plan.name(lmbda)
        done = _finished(run)
        if not (done and finished or not done and (run / "state.pt").is_file()):
            continue
        dst = interim / run.name
        dst.mkdir(parents=True, exist_ok=True)
        for f in ("config.yaml", "model.safetensors" if done else "state.pt"):
            shutil.copy2(run / f, dst / f)
        if (run / "metrics.jsonl").is_file():
            with open(run / "metrics.jsonl", "rb") as f_in, gzip.GzipFile(dst / "metrics.jsonl.gz", "wb", mtime=0) as f_out:
                shutil.copyfileobj(f_in, f_out)
        saved.append(dst)
    return saved


def data_record(data: str | None, split: str) -> dict[str, Any]:
    """Which photographs trained the model, with their sha256 and the folder's sources and licences."""
    from ..data import list_images, split_files
    from . import sha256

    if data is None:
        return {"folder": "built-in (scikit-image's bundled photographs)", "split": split}
    files = split_files(list_images(data), split)
    rec: dict[str, Any] = {"folder": Path(data).name, "split": split,
                           "images": {Path(f).name: sha256(f) for f in files}}
    for name in ("SOURCES.md", "LICENSE", "LICENSE.md", "README.md"):
        if (Path(data) / name).is_file():
            rec.setdefault("sources", {})[name] = (Path(data) / name).read_text()[:20_000]
    return rec


def _commit() -> str | None:
    """The commit of the code that publishes: ``FEDS_LAB_COMMIT`` where it runs from a copy outside git
    (a frozen copy that keeps training while the checkout changes), else the checkout's HEAD."""
    if os.environ.get("FEDS_LAB_COMMIT"):
        return os.environ["FEDS_LAB_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def train_ladder(plan: LadderPlan, jobs: int = 2, interim: str | None = None, zoo_dir: str | None = None,
                 publish_when_done: bool = True, poll: float | None = None, say=print) -> list[dict[str, Any]]:
    """Train (or resume) every lambda of ``plan``, ``jobs`` processes at a time; publish each finished run."""
    plan.check()
    interim_dir = Path(interim) if interim else None
    poll = poll if poll is not None else float(os.environ.get("FEDS_LAB_ZOO_POLL", "60"))
    published = []
    started = time.time()
    pending = [x for x in plan.order() if not _finished(Path(plan.runs) / plan.name(x))]
    running: dict[float, subprocess.Popen] = {}

    def ready(lmbda: float) -> bool:  # a fine-tune starts as soon as its own source has finished
        src = plan.source(lmbda)
        return src is None or _finished(Path(plan.runs) / plan.name(src))

    while pending or running:
        for lmbda in [x for x in pending if ready(x)]:
            if len(running) >= jobs:
                break
            pending.remove(lmbda)
            cfg = plan.config(lmbda).resolved()
            run = Path(cfg.out)
            if seed_from_interim(run, interim_dir):
                say(f"{run.name}: seeded from the interim state in {interim_dir}")
            run.parent.mkdir(parents=True, exist_ok=True)
            yaml_path = run.parent / f"{run.name}.yaml"
            yaml_path.write_text(cfg.to_yaml())
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
            log = open(run.parent / f"{run.name}.log", "a")
            running[lmbda] = subprocess.Popen(
                [sys.executable, "-m", "feds_lab.cli", "train", "teacher", "--config", str(yaml_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env)
            how = ("resuming its saved state" if (run / "state.pt").is_file()
                   else f"from {Path(cfg.warm_start).parent.name}" if cfg.warm_start else "from scratch")
            say(f"{run.name}: training ({cfg.steps} steps, {how})")
        if not running:
            raise RuntimeError("nothing can start: " + ", ".join(map(str, pending)))  # unreachable with long sources
        time.sleep(poll)
        for lmbda, proc in list(running.items()):
            run = Path(plan.runs) / plan.name(lmbda)
            if proc.poll() is None:
                say(f"{run.name}: {_progress(run)} ({(time.time() - started) / 60:.0f} min)")
                continue
            del running[lmbda]
            if proc.returncode != 0 or not _finished(run):
                for other in running.values():
                    other.wait()  # the others keep their progress: they finish (or checkpoint) first
                raise RuntimeError(f"{run.name} stopped with exit code {proc.returncode}; see "
                                   f"{run.parent / (run.name + '.log')}. The same command resumes it.")
            say(f"{run.name}: finished, {_progress(run)}")
            if publish_when_done and plan.ships(lmbda):
                entry = _publish(plan, run, zoo_dir)
                published.append(entry)
                say(f"published {entry['file']} ({entry['bytes'] / 1e6:.1f} MB, sha256 {entry['sha256'][:12]}...)")
    for lmbda in plan.order():  # runs finished before this call are published too (idempotent)
        run = Path(plan.runs) / plan.name(lmbda)
        if (publish_when_done and plan.ships(lmbda) and _finished(run) and not any(e["name"] == run.name for e in published)
                and not _published(run, zoo_dir)):
            published.append(_publish(plan, run, zoo_dir))
    return published


def _published(run: Path, zoo_dir: str | None) -> bool:
    """Whether the zoo already holds this very run (same budget record and validation): a later ladder
    that adds a lambda leaves its neighbours' files and records as they are."""
    from ..checkpoint import read_record
    from . import entries

    mine = read_record(run / "model.safetensors")
    for e in entries(zoo_dir or ZOO_DIR):
        if e["name"] == run.name:
            return e["record"].get("budget") == mine.get("budget") and e["record"].get("val") == mine.get("val")
    return False


def _publish(plan: LadderPlan, run: Path, zoo_dir: str | None) -> dict[str, Any]:
    """A finished run into the zoo, its record holding the plan, the data's sources, the commit and, for a
    fine-tuned lambda, the validation curve of the long run its chain starts from."""
    from ..checkpoint import read_record

    extra = {"zoo": {k: v for k, v in dataclasses.asdict(plan).items() if k not in ("runs", "extra")},
             "data": data_record(plan.data, plan.split), "commit": _commit()}
    sources = chain_in(float(read_record(run / "model.safetensors")["lmbda"]), plan.long, plan.sources)
    source_metrics = Path(plan.runs) / plan.name(sources[-1]) / "metrics.jsonl" if sources else None
    if source_metrics is not None and source_metrics.is_file():  # the long run's curve, which may not ship itself
        extra["source_curve"] = {"lmbda": sources[-1], "curve": val_curve(source_metrics)}
    return publish(run / "model.safetensors", zoo_dir or ZOO_DIR, extra)
