"""Training throughput: our loop against CompressAI's textbook loop, and the price of distillation.

Four loops on the same model sizes, batch and crop, measured in one run with interleaved repetitions
(steps per second = 1 / the median step time of a repetition; warm-up steps excluded):

- ``ours teacher``: :func:`feds_lab.training.train` for a teacher (everything in the loop: data,
  clipping, non-finite checks, schedule, metrics.jsonl), timed from its own per-step records;
- ``plain teacher``: the loop of CompressAI's ``examples/train.py``, written inline below;
- ``ours distill``: a FEDS student in stage 2 (teacher forward, feature alignment and entropy-weighted
  channel distillation); ``ours student``: the same student on L_RD alone (the scratch baseline).

Printed ratios: ours / plain (target >= 0.95) and distill / student (the price of distillation), each
as the median of per-repetition ratios (the two loops of a pair run back to back, so a busy machine
slows both) beside the ratio of the medians.

    .venv/bin/python benchmarks/train_throughput.py                  # tiny, about 1-2 minutes on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --preset small --steps 10 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from feds_lab import build_model  # noqa: E402
from feds_lab.checkpoint import save_model  # noqa: E402
from feds_lab.data import load_dataset  # noqa: E402
from feds_lab.losses import RateDistortionLoss  # noqa: E402
from feds_lab.presets import train_preset  # noqa: E402
from feds_lab.training import TrainConfig, read_metrics, train  # noqa: E402


def plain_compressai_loop(preset: str, lmbda: float, batch: int, crop: int, lr: float, warmup: int, steps: int,
                          seed: int = 0) -> list[float]:
    """Seconds of each timed step of the textbook loop (CompressAI ``examples/train.py``: ``configure_optimizers``
    and ``train_one_epoch``), on the same model, batches and learning rate as ours."""
    torch.manual_seed(seed)
    net = build_model("teacher", preset=preset)
    net.train()
    criterion = RateDistortionLoss(lmbda)
    dataset = load_dataset(None, "train", crop, seed=seed)

    parameters = {n for n, p in net.named_parameters() if not n.endswith(".quantiles") and p.requires_grad}
    aux_parameters = {n for n, p in net.named_parameters() if n.endswith(".quantiles") and p.requires_grad}
    params_dict = dict(net.named_parameters())
    optimizer = torch.optim.Adam((params_dict[n] for n in sorted(parameters)), lr=lr)
    aux_optimizer = torch.optim.Adam((params_dict[n] for n in sorted(aux_parameters)), lr=1e-3)
    clip_max_norm = 1.0

    times, t0 = [], time.perf_counter()
    for i in range(warmup + steps):
        d = dataset.sample_batch(i, batch, seed)
        optimizer.zero_grad()
        aux_optimizer.zero_grad()
        out_net = net(d)
        out_criterion = criterion(out_net, d)
        out_criterion["loss"].backward()
        if clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip_max_norm)
        optimizer.step()
        aux_loss = net.aux_loss()
        aux_loss.backward()
        aux_optimizer.step()
        if i % 10 == 0:  # the textbook loop prints its losses every 10 batches
            _ = (out_criterion["loss"].item(), out_criterion["mse_loss"].item(), aux_loss.item())
        t1 = time.perf_counter()
        times.append(t1 - t0)
        t0 = t1
    return times[warmup:]


def our_loop(cfg: TrainConfig, warmup: int, steps: int) -> list[float]:
    """Seconds of each timed step of :func:`train`, from the ``seconds`` of its per-step metrics records."""
    train(cfg)
    at = {m["step"]: m["seconds"] for m in read_metrics(cfg.out) if m["kind"] == "train"}
    return [at[s] - at[s - 1] for s in range(warmup + 1, warmup + steps + 1)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", choices=("tiny", "small"))
    p.add_argument("--batch", type=int, help="batch size (default: the preset's)")
    p.add_argument("--crop", type=int, help="crop side, px (default: the preset's)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per repetition")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (the median is reported)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared machine, 2 threads per process vary wildly)")
    p.add_argument("--lmbda", type=float, default=0.0067)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    budget = train_preset(args.preset)
    batch, crop = args.batch or budget["batch_size"], args.crop or budget["crop"]
    n = args.warmup + args.steps
    tmp = Path(tempfile.mkdtemp(prefix="feds-bench-"))
    torch.manual_seed(0)
    teacher_ckpt = save_model(build_model("teacher", preset=args.preset), tmp / "teacher.safetensors")

    common = dict(preset=args.preset, lmbda=args.lmbda, steps=n, batch_size=batch, crop=crop, val_every=0,
                  ckpt_every=0, log_every=1, progress=False, resume=False, device="cpu", threads=args.threads)
    stage2 = dict(role="student", stage_split=(0.0, 1.0, 0.0))
    loops = {
        "ours teacher": lambda: our_loop(TrainConfig(role="teacher", out=str(tmp / "t"), **common), args.warmup,
                                         args.steps),
        "plain teacher": lambda: plain_compressai_loop(args.preset, args.lmbda, batch, crop, budget["lr"],
                                                       args.warmup, args.steps),
        "ours distill": lambda: our_loop(TrainConfig(**stage2, teacher=str(teacher_ckpt), out=str(tmp / "d"),
                                                     **common), args.warmup, args.steps),
        "ours student": lambda: our_loop(TrainConfig(**stage2, baseline="scratch", out=str(tmp / "s"), **common),
                                         args.warmup, args.steps),
    }
    print(f"preset {args.preset}, batch {batch}, crop {crop}, {args.steps} timed steps (+{args.warmup} warm-up) "
          f"x {args.reps} interleaved repetitions, {args.threads} thread(s), cpu", file=sys.stderr)
    # steps/s of a repetition = 1 / its median step time: robust to bursts of load from other processes
    rates: dict[str, list[float]] = {k: [] for k in loops}
    try:
        for rep in range(args.reps):
            for name, loop in loops.items():
                rates[name].append(1.0 / statistics.median(loop()))
            print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items()), file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{'loop':<14} {'steps/s (median)':>17}  runs")
    for k, v in med.items():
        print(f"{k:<14} {v:>17.3f}  {', '.join(f'{r:.2f}' for r in rates[k])}")

    def paired(a: str, b: str) -> tuple[float, float]:
        """Median of the per-repetition ratios (a and b ran back to back, under the same machine load),
        and the ratio of the medians."""
        return statistics.median(x / y for x, y in zip(rates[a], rates[b])), med[a] / med[b]

    ours_vs_plain, ours_vs_plain_medians = paired("ours teacher", "plain teacher")
    distill_price, distill_price_medians = paired("ours distill", "ours student")
    print(f"ours / plain CompressAI loop (teacher): {ours_vs_plain:.3f} median of paired ratios, "
          f"{ours_vs_plain_medians:.3f} ratio of medians  (target >= 0.95: {'met' if ours_vs_plain >= 0.95 else 'NOT met'})")
    print(f"stage-2 distillation step / plain student step: {distill_price:.3f} median of paired ratios, "
          f"{distill_price_medians:.3f} ratio of medians  (a distillation step costs {1 / distill_price:.2f}x a "
          "plain student step, teacher forward included)")
    print(json.dumps({"preset": args.preset, "batch": batch, "crop": crop, "threads": args.threads,
                      "steps_per_second": med, "ours_over_plain": ours_vs_plain,
                      "distill_over_student": distill_price}))


if __name__ == "__main__":
    main()
