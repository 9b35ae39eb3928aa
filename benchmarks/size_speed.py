"""Parameters and coding time of teacher and student, measured side by side in one process.

Targets at the ``paper`` preset (docs/method.md): student parameters <= 0.37 of the teacher's, student
encode+decode time <= 0.27 of the teacher's on a 768x512 image. Times are medians over
interleaved repetitions (teacher, student, teacher, ...) so that machine noise hits both alike.
Weights are untrained: coding time depends on the architecture, not on what it learned (the
entropy coder's share does depend on the rate; trained-model timings come from ``feds-lab eval``).

    python benchmarks/size_speed.py                      # paper preset, both families
    python benchmarks/size_speed.py --preset small --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from feds_lab import build_model
from feds_lab.coding import decode, encode
from feds_lab.data import builtin_images


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def image(h: int, w: int) -> torch.Tensor:
    """A natural photograph cropped/tiled to h x w (bundled with scikit-image; no download)."""
    _, x = max(builtin_images(), key=lambda t: t[1].shape[-1] * t[1].shape[-2])
    x = x.unsqueeze(0) if x.dim() == 3 else x
    reps = (1, 1, -(-h // x.shape[-2]), -(-w // x.shape[-1]))
    return x.repeat(*reps)[..., :h, :w].contiguous()


def time_coding(models: dict[str, torch.nn.Module], x: torch.Tensor, repeats: int) -> dict[str, dict[str, float]]:
    for m in models.values():  # warm-up: allocators, oneDNN kernels, fingerprint cache
        decode(m, encode(m, x).data)
    enc = {k: [] for k in models}
    dec = {k: [] for k in models}
    bpp = {}
    for _ in range(repeats):
        for k, m in models.items():
            r = encode(m, x)
            d = decode(m, r.data)
            enc[k].append(r.seconds)
            dec[k].append(d.seconds)
            bpp[k] = r.bpp
    return {k: dict(enc=statistics.median(enc[k]), dec=statistics.median(dec[k]), bpp=bpp[k]) for k in models}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--families", default="cnn,transformer")
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    torch.manual_seed(0)
    fams = args.families.split(",")
    models = {}
    for fam in fams:
        for role in ("teacher", "student"):
            m = build_model(role, args.preset, family=fam)
            m.update(force=True)
            models[f"{fam}/{role}"] = m.eval()
    x = image(args.height, args.width)
    print(f"preset={args.preset} image={args.width}x{args.height} threads={torch.get_num_threads()} "
          f"device=cpu repeats={args.repeats} (median, interleaved)")
    t = time_coding(models, x, args.repeats)

    print(f"\n{'model':24s} {'params':>12s} {'encode s':>9s} {'decode s':>9s} {'enc+dec s':>10s}")
    for k, m in models.items():
        print(f"{k:24s} {params(m):12,d} {t[k]['enc']:9.3f} {t[k]['dec']:9.3f} {t[k]['enc'] + t[k]['dec']:10.3f}")

    pairs = [(f"{f}/teacher", f"{f}/student") for f in fams]
    if "transformer" in fams and "cnn" in fams:
        pairs.append(("transformer/teacher", "cnn/student"))
    print(f"\n{'pair (teacher -> student)':44s} {'param ratio':>12s} {'time ratio':>11s}   targets: <= 0.37, <= 0.27")
    for te, st in pairs:
        pr = params(models[st]) / params(models[te])
        tr = (t[st]["enc"] + t[st]["dec"]) / (t[te]["enc"] + t[te]["dec"])
        ok = "meets both" if pr <= 0.37 and tr <= 0.27 else "MISSES " + " and ".join(
            n for n, bad in (("params", pr > 0.37), ("time", tr > 0.27)) if bad)
        print(f"{te + ' -> ' + st:44s} {pr:12.3f} {tr:11.3f}   {ok}")


if __name__ == "__main__":
    main()
