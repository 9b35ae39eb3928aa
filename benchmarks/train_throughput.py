"""Training throughput: our loop against CompressAI's textbook loop, and the price of distillation.

Four loops on the same model sizes, batch and crop, measured in one run with interleaved repetitions
(steps per second = 1 / the median step time of a repetition; warm-up steps excluded):

- ``ours teacher``: :func:`feds_lab.training.train` for a teacher (everything in the loop: data,
  clipping, non-finite checks, schedule, metrics.jsonl), timed from its own per-step records, with
  ``--compile`` (default ``attention``, what a run of 1,000 steps or more gets) and ``--precision``
  (default: the training default); ``ours teacher eager`` the same with ``compile: none`` and
  ``precision: fp32`` (the loop before either existed);
- ``plain teacher``: the loop of CompressAI's ``examples/train.py``, written inline below;
- ``ours distill``: a FEDS student in stage 2 (teacher forward, feature alignment and entropy-weighted
  channel distillation); ``ours student``: the same student on L_RD alone (the scratch baseline).

Printed ratios: ours (eager) / plain (target >= 0.95) and distill / student (the price of distillation), each
as the median of per-repetition ratios (the two loops of a pair run back to back, so a busy machine
slows both) beside the ratio of the medians.

The floor of a distillation step, measured in the same run: one teacher forward pass without
gradient (``teacher forward``, with the features the losses read) plus one scratch student step.
``ours distill`` is timed by its mean step time (the steps that measure each term's gradient for the
balance are part of its cost; a median would hide them); ``distill total clip`` is the same student
with ``clip_mode=total`` (one backward pass, one clip), ``distill apart`` with ``clip_measure_every=1``
(L_RD's and the distillation's gradients apart on every step: two backward passes), ``distill eager
loss`` with the feature alignment loss eager (what compiling it buys).

``--options`` also times the teacher's step with each speed option, each in its own process (an
option that crashes the process is reported as such): ``attention=sdpa``, ``bf16`` autocast,
``bf16-transforms`` (``precision: bf16``: the transforms alone), ``channels_last``, ``torch.compile`` of
the whole model, of the attention stages only, and the last with ``precision: bf16``. ``--profile`` prints where one teacher step and one
distillation step spend their time, by operator (torch.profiler) and by module (forward).

    .venv/bin/python benchmarks/train_throughput.py                  # tiny, about 2-3 minutes on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --preset small --steps 10 --reps 3
    .venv/bin/python benchmarks/train_throughput.py --options --profile --reps 3
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
from feds_lab.training.config import PRECISIONS  # noqa: E402


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


def teacher_forward_loop(ckpt: Path, preset: str, batch: int, crop: int, warmup: int, steps: int,
                         seed: int = 0, compiled: bool = False, precision: str = "fp32") -> list[float]:
    """Seconds of each teacher forward pass as a distillation step makes it (eval, no gradient, features;
    ``compiled``: its attention stages compiled, as the trainer runs them with ``compile: attention``;
    ``precision`` as the trainer's)."""
    from feds_lab.models.attention import compile_stages, compiled_stages
    from feds_lab.models.base import transform_precision
    from feds_lab.training.trainer import load_teacher, transform_dtype

    teacher = load_teacher(ckpt, torch.device("cpu"))
    if compiled:
        compile_stages(teacher)
    dataset = load_dataset(None, "train", crop, seed=seed)
    dtype = transform_dtype(precision, torch.device("cpu"))  # once: "auto" reads /proc/cpuinfo
    times = []
    for i in range(warmup + steps):
        x = dataset.sample_batch(i, batch, seed)
        t0 = time.perf_counter()
        with torch.no_grad(), compiled_stages(compiled), transform_precision(dtype):
            teacher(x, return_features=True)
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def eager_alignment_loss(loop):
    """Run ``loop`` with the feature alignment loss left eager under ``compile: attention`` (the step
    before the loss was compiled), to measure what compiling it buys."""
    from feds_lab.losses import FeatureAlignment

    saved = FeatureAlignment.compile_loss
    FeatureAlignment.compile_loss = lambda self: None
    try:
        return loop()
    finally:
        FeatureAlignment.compile_loss = saved


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
    p.add_argument("--compile", default="attention", choices=("attention", "none"),
                   help="our loops' compile setting (default attention: what runs of 1,000 steps or more get with "
                        "compile: auto); 'ours teacher eager' is always timed beside them")
    p.add_argument("--precision", choices=PRECISIONS, default=TrainConfig.precision,
                   help="our loops' precision (default: the training default); 'ours teacher eager' is always fp32")
    p.add_argument("--options", action="store_true", help="time the teacher step with each speed option")
    p.add_argument("--profile", action="store_true", help="where a teacher step and a distillation step spend time")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    budget = train_preset(args.preset)
    batch, crop = args.batch or budget["batch_size"], args.crop or budget["crop"]
    n = args.warmup + args.steps
    tmp = Path(tempfile.mkdtemp(prefix="feds-bench-"))
    torch.manual_seed(0)
    teacher_ckpt = save_model(build_model("teacher", preset=args.preset), tmp / "teacher.safetensors")

    common = dict(preset=args.preset, lmbda=args.lmbda, steps=n, batch_size=batch, crop=crop, val_every=0,
                  ckpt_every=0, log_every=1, progress=False, resume=False, device="cpu", threads=args.threads,
                  compile=args.compile, precision=args.precision)
    stage2 = dict(role="student", stage_split=(0.0, 1.0, 0.0))
    loops = {
        "ours teacher": lambda: our_loop(TrainConfig(role="teacher", out=str(tmp / "t"), **common), args.warmup,
                                         args.steps),
        "ours teacher eager": lambda: our_loop(TrainConfig(role="teacher", out=str(tmp / "te"),
                                                           **{**common, "compile": "none", "precision": "fp32"}),
                                               args.warmup, args.steps),
        "plain teacher": lambda: plain_compressai_loop(args.preset, args.lmbda, batch, crop, budget["lr"],
                                                       args.warmup, args.steps),
        "ours distill": lambda: our_loop(TrainConfig(**stage2, teacher=str(teacher_ckpt), out=str(tmp / "d"),
                                                     **common), args.warmup, args.steps),
        "ours student": lambda: our_loop(TrainConfig(**stage2, baseline="scratch", out=str(tmp / "s"), **common),
                                         args.warmup, args.steps),
        "teacher forward": lambda: teacher_forward_loop(teacher_ckpt, args.preset, batch, crop, args.warmup, args.steps,
                                                        compiled=args.compile == "attention", precision=args.precision),
        "distill total clip": lambda: our_loop(TrainConfig(**stage2, teacher=str(teacher_ckpt), out=str(tmp / "dt"),
                                                           clip_mode="total", **common), args.warmup, args.steps),
        "distill apart": lambda: our_loop(TrainConfig(**stage2, teacher=str(teacher_ckpt), out=str(tmp / "da"),
                                                      clip_measure_every=1, **common), args.warmup, args.steps),
        "distill eager loss": lambda: eager_alignment_loss(lambda: our_loop(
            TrainConfig(**stage2, teacher=str(teacher_ckpt), out=str(tmp / "de"), **common), args.warmup, args.steps)),
    }
    mean_timed = {"ours distill", "distill total clip", "distill apart", "distill eager loss"}  # measuring steps are part of their cost
    print(f"preset {args.preset}, batch {batch}, crop {crop}, {args.steps} timed steps (+{args.warmup} warm-up) "
          f"x {args.reps} interleaved repetitions, {args.threads} thread(s), cpu", file=sys.stderr)
    # steps/s of a repetition = 1 / its median step time: robust to bursts of load from other processes
    rates: dict[str, list[float]] = {k: [] for k in loops}
    try:
        for rep in range(args.reps):
            for name, loop in loops.items():
                times = loop()
                rates[name].append(1.0 / (statistics.mean(times) if name in mean_timed else statistics.median(times)))
            print(f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items()), file=sys.stderr)
        if args.profile:
            profile_steps(args, batch, crop, teacher_ckpt)
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

    ours_vs_plain, ours_vs_plain_medians = paired("ours teacher eager", "plain teacher")  # the loop, not the kernels
    compiled_gain, compiled_gain_medians = paired("ours teacher", "ours teacher eager")
    print(f"teacher step, compile={args.compile} precision={args.precision} against eager fp32: {compiled_gain:.2f}x "
          f"the steps/s (median of paired ratios; {compiled_gain_medians:.2f}x ratio of medians; target >= 1.5: "
          f"{'met' if compiled_gain >= 1.5 else 'NOT met'})")
    distill_price, distill_price_medians = paired("ours distill", "ours student")
    print(f"ours / plain CompressAI loop (teacher): {ours_vs_plain:.3f} median of paired ratios, "
          f"{ours_vs_plain_medians:.3f} ratio of medians  (target >= 0.95: {'met' if ours_vs_plain >= 0.95 else 'NOT met'})")
    print(f"stage-2 distillation step / plain student step: {distill_price:.3f} median of paired ratios, "
          f"{distill_price_medians:.3f} ratio of medians  (a distillation step costs {1 / distill_price:.2f}x a "
          "plain student step, teacher forward included)")
    # the floor: a teacher forward pass plus a scratch student step, per repetition
    floor = [1.0 / (1.0 / f + 1.0 / s) for f, s in zip(rates["teacher forward"], rates["ours student"])]
    over_floor = statistics.median(f / d for f, d in zip(floor, rates["ours distill"]))
    over_floor_total = statistics.median(f / d for f, d in zip(floor, rates["distill total clip"]))
    floor_price = statistics.median(s / f for s, f in zip(rates["ours student"], floor))
    total_price = statistics.median(s / d for s, d in zip(rates["ours student"], rates["distill total clip"]))
    over_floor_apart = statistics.median(f / d for f, d in zip(floor, rates["distill apart"]))
    compiled_loss = statistics.median(e / d for d, e in zip(rates["ours distill"], rates["distill eager loss"]))
    if args.compile == "attention":
        print(f"distillation step with the alignment loss compiled: {1 / compiled_loss:.2f}x the steps/s of the same "
              "step with it eager (median of paired ratios)")
    print(f"floor (teacher forward + scratch step): {statistics.median(floor):.3f} steps/s, {floor_price:.2f}x a scratch "
          f"step; the distillation step costs {over_floor:.2f}x its floor (target <= 1.10: "
          f"{'met' if over_floor <= 1.10 else 'NOT met'}) and {1 / distill_price:.2f}x a scratch step (target <= 2.5: "
          f"{'met' if 1 / distill_price <= 2.5 else 'NOT met'}); with clip_mode=total {over_floor_total:.2f}x its floor, "
          f"{total_price:.2f}x a scratch step; with the gradients apart on every step {over_floor_apart:.2f}x its floor")
    report = {"preset": args.preset, "batch": batch, "crop": crop, "threads": args.threads, "compile": args.compile,
              "precision": args.precision, "apart_over_floor": over_floor_apart,
              "teacher_compiled_over_eager": compiled_gain,
              "steps_per_second": med, "ours_over_plain": ours_vs_plain, "distill_over_student": distill_price,
              "distill_over_floor": over_floor, "floor_over_student": 1 / floor_price,
              "total_clip_over_floor": over_floor_total, "distill_over_eager_loss": 1 / compiled_loss}
    if args.options:
        report["teacher_options"] = teacher_options(args, batch, crop)
    print(json.dumps(report))


# --- speed options of the teacher step, each in its own process ------------------------------------
_OPTION_CODE = r"""
import statistics, sys, time, torch
from feds_lab import build_model
from feds_lab.data import load_dataset
from feds_lab.losses import RateDistortionLoss
from feds_lab.models.attention import attention_kernel
option, preset, batch, crop, steps, family = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(1)
torch.manual_seed(0)
net = build_model("teacher", preset=preset, family=family)
net.train()
data = load_dataset(None, "train", crop, seed=0)
fmt = torch.channels_last if option == "channels_last" else torch.contiguous_format
if option == "channels_last":
    net = net.to(memory_format=fmt)
forward = torch.compile(net) if option == "compile" else net
if option.startswith("compile-attention"):
    from feds_lab.models.attention import compile_stages, compiled_stages
    compile_stages(net)
else:
    from contextlib import nullcontext as compiled_stages
from feds_lab.models.base import transform_precision
dtype = torch.bfloat16 if option in ("bf16-transforms", "compile-attention-bf16") else None
crit = RateDistortionLoss(0.0067)
opt = torch.optim.Adam(net.parameters(), 1e-4)
times = []
with attention_kernel("sdpa" if option == "sdpa" else "timm"), compiled_stages(), transform_precision(dtype):
    for i in range(3 + steps):
        x = data.sample_batch(i, batch, 0).contiguous(memory_format=fmt)
        t0 = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=option == "bf16"):
            out = forward(x)
        crit(out, x)["loss"].backward()
        opt.step()
        times.append(time.perf_counter() - t0)
print(statistics.median(times[3:]))
"""


def teacher_options(args, batch: int, crop: int) -> dict:
    import subprocess

    out: dict = {}
    for family in ("cnn", "transformer"):
        res: dict = {}
        for rep in range(max(1, min(args.reps, 3))):
            for option in ("default", "sdpa", "bf16", "bf16-transforms", "channels_last", "compile", "compile-attention",
                           "compile-attention-bf16"):
                if isinstance(res.get(option), str):
                    continue  # crashed once: not again
                p = subprocess.run([sys.executable, "-c", _OPTION_CODE, option, args.preset, str(batch), str(crop),
                                    str(min(args.steps, 10)), family], capture_output=True, text=True, timeout=900)
                if p.returncode != 0:
                    res[option] = f"crashed (exit {p.returncode}: {(p.stderr.strip().splitlines() or ['?'])[-1][:120]})"
                else:
                    res.setdefault(option, []).append(float(p.stdout.strip().splitlines()[-1]))
        base = statistics.median(res["default"])
        print(f"teacher step options ({family}, {args.preset}, 1 thread, each in its own process):")
        for option, v in res.items():
            if isinstance(v, str):
                print(f"  {option:<14} {v}")
            else:
                print(f"  {option:<14} {statistics.median(v):.4f} s/step, {base / statistics.median(v):.2f}x the default")
        out[family] = {k: (v if isinstance(v, str) else statistics.median(v)) for k, v in res.items()}
    return out


def profile_steps(args, batch: int, crop: int, teacher_ckpt: Path) -> None:
    """Operator table (torch.profiler, self CPU time) and forward time per module, for a teacher step and a
    stage-2 distillation step."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    from feds_lab.training.stages import Stage, TrainingObjective
    from feds_lab.training.trainer import load_teacher

    data = load_dataset(None, "train", crop, seed=0)
    x = data.sample_batch(0, batch, 0)
    torch.manual_seed(0)
    teacher_train = build_model("teacher", preset=args.preset)
    teacher_train.train()
    crit = RateDistortionLoss(args.lmbda)
    frozen = load_teacher(teacher_ckpt, torch.device("cpu"))
    cfg = TrainConfig(role="student", preset=args.preset, teacher=str(teacher_ckpt), lmbda=args.lmbda).resolved()
    objective = TrainingObjective.for_config(cfg, build_model("student", preset=args.preset), frozen)

    def teacher_step():
        teacher_train.zero_grad()
        crit(teacher_train(x), x)["loss"].backward()

    def distill_step():
        objective.zero_grad()
        with torch.no_grad():
            t_out = frozen(x, return_features=True)
        objective(x, Stage.CHANNEL_DISTILLATION, t_out)["loss"].backward()

    for name, fn, model in (("teacher step", teacher_step, teacher_train), ("distillation step", distill_step, None)):
        for _ in range(2):
            fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"\n{name}: operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
        modules = ({"teacher forward (no grad)": frozen, "student": objective.model} if model is None
                   else {"teacher": model})
        for label, m in modules.items():
            spent: dict[str, float] = defaultdict(float)
            hooks = []
            for path, sub in m.named_modules():
                if path.count(".") == 2 and path.startswith(("g_a.stages", "g_s.stages")) or path == "latent_codec":
                    start = {}
                    hooks.append(sub.register_forward_pre_hook(lambda _m, _a, s=start: s.__setitem__("t", time.perf_counter())))
                    hooks.append(sub.register_forward_hook(
                        lambda _m, _a, _o, s=start, k=f"{path} ({type(sub).__name__})": spent.__setitem__(k, spent[k] + time.perf_counter() - s["t"])))
            fn()
            for h in hooks:
                h.remove()
            total = sum(spent.values()) or 1.0
            print(f"{name}, {label}: forward time by module")
            for k, v in sorted(spent.items(), key=lambda kv: -kv[1])[:10]:
                print(f"  {k:<60} {1000 * v:7.1f} ms  {100 * v / total:4.0f} %")


if __name__ == "__main__":
    main()
