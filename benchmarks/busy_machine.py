"""A busy machine: the demo's training step beside one busy background process, against the same alone.

For each thread setting below, one training run (a fresh process, so that environment variables
read when torch loads take effect) measures the per-step time of the demo's training: the tiny
preset's teacher step and a FEDS student step (stage 2: teacher forward, feature alignment,
channel distillation), batch and crop of the preset, as ``feds_lab.training.train`` runs them in
the pipeline. Each run happens twice back to back, once alone and once beside a background process
that keeps one core busy (a pure-Python loop), in alternating order; repetitions are interleaved
across settings, so a machine whose load drifts slows every setting alike.

Printed: per setting, the median step times alone and busy and the median of the paired ratios
busy / alone (target for ``default``: at most 2x). Settings:

- ``default``: nothing set; what ``feds-lab`` and the pipeline do (``feds_lab/threads.py``:
  ``OMP_WAIT_POLICY=PASSIVE`` and the thread count from the cores free when the run starts);
- ``torch``: torch's own defaults (``FEDS_LAB_THREADS=torch``: one thread per core, OpenMP's spin-wait);
- ``passive-all``: passive waiting, one thread per allowed core;
- ``one-thread``: passive waiting, one thread;
- ``spin-10k``, ``spin-100k``: torch's thread count, with libgomp's spin at a barrier cut to that many
  rounds before the thread sleeps (``GOMP_SPINCOUNT``; its default is 300,000, passive is 0).

    .venv/bin/python benchmarks/busy_machine.py             # about 5 minutes on two cores
    .venv/bin/python benchmarks/busy_machine.py --reps 2 --steps 5 --settings default,torch

Run it on an otherwise quiet machine: other load makes "alone" busy too (``uptime`` is printed).
Do not set OMP_NUM_THREADS for it: each setting sets its own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {
    "default": {},
    "torch": {"FEDS_LAB_THREADS": "torch"},
    "passive-all": {"OMP_WAIT_POLICY": "PASSIVE", "FEDS_LAB_THREADS": str(len(os.sched_getaffinity(0)))},
    "one-thread": {"FEDS_LAB_THREADS": "1"},
    # torch's thread count, but libgomp spins only this many rounds at a barrier before sleeping
    "spin-10k": {"FEDS_LAB_THREADS": "torch", "GOMP_SPINCOUNT": "10000"},
    "spin-100k": {"FEDS_LAB_THREADS": "torch", "GOMP_SPINCOUNT": "100000"},
}
#: variables the settings own: removed from the environment each run starts from
CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "FEDS_LAB_THREADS", "FEDS_LAB_THREADS_AUTO",
           "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
BUSY_LOOP = "while True:\n    pass\n"


def worker(args) -> None:
    """One run in this process: the teacher and student steps; prints one JSON line."""
    from feds_lab.threads import configure

    configure()  # first: the thread defaults must precede torch
    import torch

    from feds_lab.training import TrainConfig, read_metrics, train

    tmp = Path(args.tmp)
    common = dict(preset="tiny", lmbda=0.0067, steps=args.warmup + args.steps, val_every=0, ckpt_every=0,
                  log_every=1, progress=False, resume=False, device="cpu")
    out = {"threads": torch.get_num_threads(), "wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    runs = {"teacher": TrainConfig(role="teacher", out=str(tmp / "t"), **common),
            "student": TrainConfig(role="student", teacher=args.teacher, stage_split=(0.0, 1.0, 0.0),
                                   out=str(tmp / "s"), **common)}
    for name, cfg in runs.items():
        train(cfg)
        at = {m["step"]: m["seconds"] for m in read_metrics(cfg.out) if m["kind"] == "train"}
        steps = [at[s] - at[s - 1] for s in range(args.warmup + 1, args.warmup + args.steps + 1)]
        out[name] = statistics.median(steps)
    print(json.dumps(out), flush=True)


def run_once(setting: str, busy: bool, args, teacher: Path, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(SETTINGS[setting], TQDM_DISABLE="1", PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    background = None
    if busy:
        background = subprocess.Popen([sys.executable, "-c", BUSY_LOOP], env=env)
        time.sleep(0.5)  # running before the run starts, as a user's other program would be
    try:
        proc = subprocess.run([sys.executable, __file__, "--worker", "--teacher", str(teacher), "--tmp", str(tmp),
                               "--steps", str(args.steps), "--warmup", str(args.warmup)],
                              env=env, capture_output=True, text=True, timeout=1800)
    finally:
        if background is not None:
            background.kill()
            background.wait()
    if proc.returncode != 0:
        sys.exit(f"run {setting} ({'busy' if busy else 'alone'}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (StopIteration, OSError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} allowed)"


def uptime() -> str:
    try:
        return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load average unknown"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {list(SETTINGS)}")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (medians are reported)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per run and model")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    p.add_argument("--json", help="also write the measurements here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--teacher", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        sys.exit(f"unknown setting(s) {unknown}; known: {list(SETTINGS)}")

    sys.path.insert(0, str(REPO))
    os.environ["FEDS_LAB_THREADS"] = "1"  # this parent only saves a checkpoint
    import torch

    from feds_lab import build_model
    from feds_lab.checkpoint import save_model

    tmp = Path(tempfile.mkdtemp(prefix="feds-busy-"))
    torch.manual_seed(0)
    teacher = save_model(build_model("teacher", preset="tiny"), tmp / "teacher.safetensors")
    print(f"machine: {machine()}; {uptime()} at the start")
    print(f"tiny preset, {args.steps} timed steps (after {args.warmup}) per run and model, {args.reps} interleaved "
          f"repetitions; busy = one background process in a pure-Python loop\n", flush=True)
    rows: dict[str, list[tuple[dict, dict]]] = {s: [] for s in settings}
    for rep in range(args.reps):
        for setting in settings:
            order = (False, True) if rep % 2 == 0 else (True, False)
            got = {busy: run_once(setting, busy, args, teacher, tmp / f"{setting}-{int(busy)}") for busy in order}
            rows[setting].append((got[False], got[True]))
            print(f"  rep {rep + 1} {setting:12s} threads {got[False]['threads']}/{got[True]['threads']} "
                  f"(alone/busy): teacher {got[False]['teacher']:.3f} / {got[True]['teacher']:.3f} s, "
                  f"student {got[False]['student']:.3f} / {got[True]['student']:.3f} s", flush=True)

    print(f"\n{'setting':12s} {'model':8s} {'alone s/step':>12s} {'busy s/step':>12s} {'busy/alone':>11s}   target <= 2.0")
    summary = {}
    for setting, pairs in rows.items():
        for model in ("teacher", "student"):
            alone = statistics.median(a[model] for a, _ in pairs)
            busy = statistics.median(b[model] for _, b in pairs)
            ratio = statistics.median(b[model] / a[model] for a, b in pairs)
            summary[f"{setting}/{model}"] = {"alone": alone, "busy": busy, "ratio": ratio,
                                             "threads_alone": [a["threads"] for a, _ in pairs],
                                             "threads_busy": [b["threads"] for _, b in pairs]}
            verdict = ("met" if ratio <= 2.0 else "MISSED") if setting == "default" else ""
            print(f"{setting:12s} {model:8s} {alone:12.3f} {busy:12.3f} {ratio:10.2f}x   {verdict}")
    print(f"\n{uptime()} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "summary": summary,
                                               "rows": {k: v for k, v in rows.items()}}, indent=2))


if __name__ == "__main__":
    main()
