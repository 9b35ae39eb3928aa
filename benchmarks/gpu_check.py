"""The GPU check: one script, under 10 minutes on one GPU, one JSON with everything it measured.

Sections, each timed and recorded even when it fails (the JSON is rewritten after each one, so a run
stopped at its limit still leaves what it had):

1. ``environment``: torch, CUDA, the GPU, compressai, this package.
2. ``train``: training steps per second of the ``paper`` preset (batch 16, 256 px crops) for the
   teacher, a FEDS student in stage 2 (teacher forward, feature alignment, channel distillation: the
   dearest stage) and the scratch student, through ``feds_lab.training.train`` as every run trains
   (median step time after warm-up steps; peak GPU memory).
3. ``coding``: CUDA encode and decode times of teacher and student (real rANS bitstreams of a
   768x512 photograph, median of repetitions after a warm-up), and the student/teacher time ratio:
   the paper claims about 73 % less time, a ratio of 0.27.
4. ``cross_device``: a stream encoded on the GPU, decoded on the CPU (CompressAI's cross-device
   pitfall: the entropy model's scales computed on two devices may differ in the last bit, and a
   stream then decodes to garbage or not at all), for each entropy-parameter path
   (:mod:`feds_lab.entropy_path`: ``float32``, format 1's, and ``float64`` on one thread, the default).
   Recorded per path: whether the CPU decodes the GPU's bytes to exactly the GPU's own reconstruction
   or refuses them (the symbol digest caught a mismatch), the largest difference in 8-bit levels, the
   PSNR of both against the original, and whether CPU and GPU write the same bytes.
5. ``ddp``: a short data-parallel run under ``torchrun`` (2 processes if there are 2 GPUs, else 1;
   NCCL on GPUs, gloo on CPU), a few steps, and what its checkpoint record says (world size, device).

On a lent GPU machine whose ``python3`` has torch, timm and scikit-image but no package index,
compressai and pytorch-msssim travel as wheels. Once, here, in the repo root::

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
        --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\
        -d .whl compressai==1.2.8 pytorch-msssim==1.0.0

then one device ``run`` with ``carry: [".whl"]`` and ``timeout_s: 600``, command::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit; nvidia-smi -L; PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

(compressai 1.2.8 declares numpy < 2; that machine has numpy 2, installed without dependencies: if
compressai fails to import there, the ``environment`` section says so and the JSON is still written.)

The CPU fallback (``--device cpu``: tiny preset, a few steps, a small image, gloo) runs everything
but the GPU-only comparisons, in under a minute; ``tests/test_gpu_check.py`` runs it in the suite::

    .venv/bin/python benchmarks/gpu_check.py --device cpu --out /tmp/gpu_check_cpu.json
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
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TQDM_DISABLE", "1")

PAPER_TIME_RATIO = 0.27  # the paper: about 73 % less coding time for the student

import feds_lab  # noqa: E402
from feds_lab.threads import configure  # noqa: E402

configure()  # first: the thread defaults precede torch
import torch  # noqa: E402


class Check:
    """The JSON being written: one entry per section, rewritten after each."""

    def __init__(self, out: Path, budget_s: float):
        self.out = out
        self.t0 = time.monotonic()
        self.budget_s = budget_s
        self.data: dict = {"format": "feds-lab-gpu-check/1", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "sections": {}}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def write(self) -> None:
        self.data["seconds"] = round(time.monotonic() - self.t0, 2)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(self.out.suffix + ".part")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.out)

    def section(self, name: str, fn, need_s: float = 0.0) -> dict | None:
        if self.left() < need_s:
            self.data["sections"][name] = {"ok": False, "skipped": f"{self.left():.0f} s of the budget left, "
                                                                     f"needs about {need_s:.0f} s"}
            print(f"[gpu-check] {name}: skipped (budget)", flush=True)
            self.write()
            return None
        print(f"[gpu-check] {name} ...", flush=True)
        t = time.monotonic()
        try:
            result = {"ok": True, **fn()}
        except Exception as e:  # a failing section is recorded, and the next one still runs
            result = {"ok": False, "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc().splitlines()[-12:]}
        result["seconds"] = round(time.monotonic() - t, 2)
        self.data["sections"][name] = result
        self.write()
        print(f"[gpu-check] {name}: {'ok' if result['ok'] else 'FAILED: ' + result['error']} "
              f"({result['seconds']:.1f} s)", flush=True)
        return result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def environment(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "feds_lab": feds_lab.__version__,
            "device": str(device), "threads": torch.get_num_threads(), "host_cpus": os.cpu_count(),
            "cuda_available": torch.cuda.is_available()}
    try:
        import compressai

        info["compressai"] = compressai.__version__
    except Exception as e:
        info["compressai"] = f"import failed: {type(e).__name__}: {e}"
    import numpy

    info["numpy"] = numpy.__version__
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def _train(role: str, args, out: Path, **extra) -> dict:
    from feds_lab.training import TrainConfig, read_metrics, train

    cfg = TrainConfig(role=role, preset=args.preset, lmbda=0.0067, steps=args.warmup + args.steps,
                      batch_size=args.batch, crop=args.crop, device=args.device, val_every=0, ckpt_every=0,
                      log_every=1, progress=False, resume=False, out=str(out), **extra)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.monotonic()
    model_path = train(cfg)
    wall = time.monotonic() - t
    at = {m["step"]: m["seconds"] for m in read_metrics(out) if m["kind"] == "train"}
    steps = [at[s] - at[s - 1] for s in range(args.warmup + 1, args.warmup + args.steps + 1) if s in at and s - 1 in at]
    median = statistics.median(steps)
    result = {"steps_per_s": round(1 / median, 3), "median_step_s": round(median, 5),
              "timed_steps": len(steps), "warmup_steps": args.warmup, "wall_s": round(wall, 2),
              "checkpoint": str(model_path)}
    if args.device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def train_section(args, tmp: Path, state: dict) -> dict:
    budget = {"preset": args.preset, "batch_size": args.batch, "crop": args.crop}
    teacher = _train("teacher", args, tmp / "teacher", compile="none")
    state["teacher"] = teacher["checkpoint"]
    feds = _train("student", args, tmp / "student_feds", teacher=teacher["checkpoint"], stage_split=(0.0, 1.0, 0.0))
    scratch = _train("student", args, tmp / "student_scratch", baseline="scratch")
    state["student"] = scratch["checkpoint"]
    try:  # compile: attention (what runs of 1,000 steps or more get): its first step compiles (minutes)
        compiled = _train("teacher", args, tmp / "teacher_compiled", compile="attention")
        compiled["over_eager"] = round(teacher["median_step_s"] / compiled["median_step_s"], 3)
    except Exception as e:  # recorded, not fatal: the eager figures above stand
        compiled = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
    return {"budget": budget, "teacher": teacher, "teacher_compiled_attention": compiled,
            "student_feds_stage2": feds, "student_scratch": scratch,
            "feds_over_teacher_step_time": round(feds["median_step_s"] / teacher["median_step_s"], 3),
            "student_over_teacher_step_time": round(scratch["median_step_s"] / teacher["median_step_s"], 3)}


def _image(args) -> torch.Tensor:
    import numpy
    from PIL import Image

    from feds_lab.data import builtin_images, to_uint8

    name, img = next((n, x) for n, x in builtin_images() if n == "coffee")
    w, h = args.image_size
    pil = Image.fromarray(to_uint8(img).permute(1, 2, 0).numpy()).resize((w, h), Image.BICUBIC)
    return torch.from_numpy(numpy.array(pil)).permute(2, 0, 1).float().div(255).unsqueeze(0)


def coding_section(args, state: dict) -> dict:
    from feds_lab.checkpoint import load_model
    from feds_lab.coding import decode, encode

    x = _image(args)
    out = {"image": f"coffee resized to {args.image_size[0]}x{args.image_size[1]}", "reps": args.reps}
    for role in ("teacher", "student"):
        model = load_model(state[role], device=args.device)
        with torch.no_grad():
            enc = encode(model, x)  # warm-up (cuDNN autotuning, allocator)
            decode(model, enc.data)
            e_times, d_times = [], []
            for _ in range(args.reps):
                enc = encode(model, x)
                e_times.append(enc.seconds)
                d_times.append(decode(model, enc.data).seconds)
        out[role] = {"encode_s": round(statistics.median(e_times), 5), "decode_s": round(statistics.median(d_times), 5),
                     "bpp": round(enc.bpp, 4), "params": sum(p.numel() for p in model.parameters())}
        del model
    t, s = out["teacher"], out["student"]
    out["ratio_encode"] = round(s["encode_s"] / t["encode_s"], 3)
    out["ratio_decode"] = round(s["decode_s"] / t["decode_s"], 3)
    out["ratio_encode_decode"] = round((s["encode_s"] + s["decode_s"]) / (t["encode_s"] + t["decode_s"]), 3)
    out["ratio_params"] = round(s["params"] / t["params"], 3)
    out["paper_time_ratio"] = PAPER_TIME_RATIO
    out["meets_paper_time_ratio"] = out["ratio_encode_decode"] <= PAPER_TIME_RATIO
    return out


def cross_device_section(args, state: dict) -> dict:
    from feds_lab.checkpoint import load_model
    from feds_lab.coding import decode, encode
    from feds_lab.data import to_uint8
    from feds_lab.evaluation.metrics import psnr

    from feds_lab.entropy_path import PATHS
    from feds_lab.errors import EntropyMismatchError

    x = _image(args)
    out = {"encode_device": args.device, "decode_device": "cpu", "same_device": args.device == "cpu"}
    for role in ("teacher", "student"):
        out[role] = {}
        for path_name, path in PATHS.items():
            r: dict = {}
            with torch.no_grad():
                dev_model = load_model(state[role], device=args.device)
                enc = encode(dev_model, x, path=path)
                ref = to_uint8(decode(dev_model, enc.data).x_hat.cpu())
                del dev_model
                cpu_model = load_model(state[role], device="cpu")
                r["streams_equal"] = encode(cpu_model, x, path=path).data == enc.data  # same bytes on both devices?
                try:
                    got = to_uint8(decode(cpu_model, enc.data).x_hat.cpu())
                except EntropyMismatchError as e:
                    r.update(decoded=False, refused=True, error=str(e))
                except Exception as e:
                    r.update(decoded=False, refused=False, error=f"{type(e).__name__}: {e}")
                else:
                    diff = (got.int() - ref.int()).abs()
                    r.update(decoded=True, identical=bool(torch.equal(got, ref)), max_abs_diff_levels=int(diff.max()),
                             differing_pixels_share=round(float((diff > 0).float().mean()), 6),
                             psnr_device_decode=round(psnr(x, ref.float() / 255), 3),
                             psnr_cpu_decode=round(psnr(x, got.float() / 255), 3))
            out[role][path_name] = r
    out["all_identical"] = all(out[r]["float64"].get("identical") for r in ("teacher", "student"))
    return out


def ddp_section(args, tmp: Path) -> dict:
    procs = args.ddp_procs or (min(2, torch.cuda.device_count()) if args.device == "cuda" else 1)
    run = tmp / "ddp"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           "-m", "feds_lab.training.cli", "train", "teacher", "--preset", args.preset, "--device", args.device,
           "--steps", str(args.ddp_steps), "--batch-size", str(max(args.batch, procs)), "--crop", str(args.crop),
           "--out", str(run), "--fresh", "--no-progress", "--set", "val_every=0", "--set", "ckpt_every=0"]
    t = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(60, min(300, args.left() - 30)),
                          cwd=str(REPO))
    out = {"processes": procs, "backend": "nccl" if args.device == "cuda" else "gloo", "rc": proc.returncode,
           "wall_s": round(time.monotonic() - t, 2), "command": " ".join(cmd[2:])}
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: " + " | ".join(proc.stderr.strip().splitlines()[-6:]))
    from feds_lab.checkpoint import read_record
    from feds_lab.training import read_metrics

    record = read_record(run / "model.safetensors")
    budget = record.get("budget", {})
    train_lines = [m for m in read_metrics(run) if m["kind"] == "train"]
    out.update(world_size=budget.get("world_size"), record_device=budget.get("device"),
               device_name=budget.get("device_name"), steps=train_lines[-1]["step"] if train_lines else 0,
               last_loss=train_lines[-1].get("loss") if train_lines else None,
               finite=all(isinstance(m.get("loss"), float) and m["loss"] == m["loss"] for m in train_lines))
    if out["world_size"] != procs:
        raise RuntimeError(f"the checkpoint says world_size {out['world_size']}, {procs} processes were started")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--preset", help="default: paper on a GPU, tiny on the CPU")
    p.add_argument("--steps", type=int, help="timed training steps per model (default 30 on a GPU, 3 on the CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 5 on a GPU, 1 on the CPU)")
    p.add_argument("--batch", type=int, help="default: the preset's (paper 16); 2 on the CPU")
    p.add_argument("--crop", type=int, help="default: the preset's (paper 256)")
    p.add_argument("--image-size", default=None, help="WxH of the coded photograph (default 768x512; CPU 192x128)")
    p.add_argument("--reps", type=int, help="coding repetitions (default 5 on a GPU, 1 on the CPU)")
    p.add_argument("--ddp-procs", type=int, help="default: 2 if there are 2 GPUs, else 1")
    p.add_argument("--ddp-steps", type=int, default=None, help="default 10 on a GPU, 2 on the CPU")
    p.add_argument("--budget-s", type=float, default=540.0, help="sections that would not fit are skipped")
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args(argv)

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: --device cuda, but torch sees no GPU")
    gpu = args.device == "cuda"
    from feds_lab.presets import train_preset

    args.preset = args.preset or ("paper" if gpu else "tiny")
    budget = train_preset(args.preset)
    args.steps = args.steps or (30 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    args.batch = args.batch or (budget["batch_size"] if gpu else 2)
    args.crop = args.crop or budget["crop"]
    args.reps = args.reps or (5 if gpu else 1)
    args.ddp_steps = args.ddp_steps or (10 if gpu else 2)
    size = args.image_size or ("768x512" if gpu else "192x128")
    args.image_size = tuple(int(v) for v in size.lower().split("x"))
    if gpu:
        torch.backends.cudnn.benchmark = True

    check = Check(Path(args.out), args.budget_s)
    args.left = check.left
    device = torch.device(args.device)
    check.data["settings"] = {k: v for k, v in vars(args).items() if k != "left"}
    tmp = Path(tempfile.mkdtemp(prefix="feds-gpu-check-"))
    state: dict = {}
    check.section("environment", lambda: environment(device))
    train = check.section("train", lambda: train_section(args, tmp, state), need_s=30)
    if train and train["ok"]:
        check.section("coding", lambda: coding_section(args, state), need_s=20)
        check.section("cross_device", lambda: cross_device_section(args, state), need_s=20)
    else:
        for name in ("coding", "cross_device"):
            check.data["sections"][name] = {"ok": False, "skipped": "no checkpoints: the train section failed"}
    check.section("ddp", lambda: ddp_section(args, tmp), need_s=45)
    secs = check.data["sections"]
    check.data["ok"] = all(s.get("ok") for s in secs.values())
    check.write()

    # a summary for the log
    print(f"\n[gpu-check] wrote {check.out} in {check.data['seconds']:.0f} s; all sections ok: {check.data['ok']}")
    if secs.get("train", {}).get("ok"):
        t = secs["train"]
        print(f"  train ({args.preset}, batch {args.batch}, {args.crop} px) steps/s: teacher {t['teacher']['steps_per_s']}, "
              f"FEDS stage-2 student {t['student_feds_stage2']['steps_per_s']}, scratch student "
              f"{t['student_scratch']['steps_per_s']}")
        c = t.get("teacher_compiled_attention", {})
        print("  teacher with compile=attention: " + (f"{c['steps_per_s']} steps/s, {c['over_eager']}x eager"
                                                       if "over_eager" in c else c.get("error", "not run")))
    if secs.get("coding", {}).get("ok"):
        c = secs["coding"]
        print(f"  coding on {args.device}: teacher enc {c['teacher']['encode_s']:.4f} s dec {c['teacher']['decode_s']:.4f} s; "
              f"student enc {c['student']['encode_s']:.4f} s dec {c['student']['decode_s']:.4f} s; "
              f"time ratio {c['ratio_encode_decode']} (paper {PAPER_TIME_RATIO}), params ratio {c['ratio_params']}")
    if secs.get("cross_device", {}).get("ok"):
        x = secs["cross_device"]
        for path_name in ("float32", "float64"):
            print(f"  {args.device} -> cpu decode ({path_name} entropy path) identical: teacher "
                  f"{x['teacher'][path_name].get('identical')} (refused: {x['teacher'][path_name].get('refused', False)}), "
                  f"student {x['student'][path_name].get('identical')} (refused: {x['student'][path_name].get('refused', False)}); "
                  f"same bytes from both devices: teacher {x['teacher'][path_name]['streams_equal']}, "
                  f"student {x['student'][path_name]['streams_equal']}")
    if secs.get("ddp", {}).get("ok"):
        d = secs["ddp"]
        print(f"  ddp: {d['processes']} process(es), {d['backend']}, {d['steps']} steps, world_size {d['world_size']}")
    return 0 if check.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
