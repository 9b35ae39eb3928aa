"""What the zoo's float16 storage costs: each shipped λ of a ladder coded with its float16 zoo file and
with the float32 weights it was published from, on the same images; BD-rate of float16 against
float32 with a 95 % bootstrap over images. Target: under 0.1 % (the zoo's rule for float16 storage).

The float32 weights are the run folders ``feds-lab zoo train`` left (``runs/zoo`` by default); they do
not ship, so this runs where the ladder was trained::

    python benchmarks/zoo_storage.py --family cnn --data ../photos          # the photographs' val split
    python benchmarks/zoo_storage.py --family transformer --runs runs/zoo --data ../photos --split val
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from feds_lab.checkpoint import load_model
from feds_lab.data import eval_images
from feds_lab.evaluation.bdrate import bootstrap_bd
from feds_lab.evaluation.evaluate import evaluate_model
from feds_lab.zoo import entries, verified_path

TARGET_PERCENT = 0.1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="cnn")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--runs", default="runs/zoo", help="the ladder's run folders (float32 weights)")
    p.add_argument("--data", help="image folder (default: the built-in photographs)")
    p.add_argument("--split", default="val")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = eval_images(args.data, args.split)
    rows = entries(family=args.family, preset=args.preset)
    if not rows:
        print(f"the zoo ships no {args.family} {args.preset} ladder", file=sys.stderr)
        return 1
    rate = {"float32": [], "float16": []}
    psnr = {"float32": [], "float16": []}
    started = time.time()
    for e in rows:
        full = Path(args.runs) / e["name"] / "model.safetensors"
        if not full.is_file():
            print(f"{full} is missing: the float32 weights of {e['name']} are needed", file=sys.stderr)
            return 1
        for storage, path in (("float32", full), ("float16", verified_path(e))):
            res = evaluate_model(load_model(path), images, warmup=False)
            rate[storage].append([r["bpp"] for r in res["rows"]])
            psnr[storage].append([r["psnr-rgb"] for r in res["rows"]])
        print(f"λ {e['lmbda']:g}: float32 {np.mean(psnr['float32'][-1]):.3f} dB at {np.mean(rate['float32'][-1]):.4f} bpp, "
              f"float16 {np.mean(psnr['float16'][-1]):.3f} dB at {np.mean(rate['float16'][-1]):.4f} bpp", flush=True)
    arrays = {k: (np.array(rate[k]).T, np.array(psnr[k]).T) for k in rate}  # (images, points)
    bd = bootstrap_bd(*arrays["float32"], *arrays["float16"], statistic="rate")
    verdict = "met" if max(abs(bd.low), abs(bd.high)) < TARGET_PERCENT else (
        "met by the estimate" if abs(bd.estimate) < TARGET_PERCENT else "NOT met")
    print(f"{args.family} {args.preset} ladder ({len(rows)} λ, {len(images)} images of {args.data or 'the built-in set'} "
          f"split {args.split}, {time.time() - started:.0f} s): float16 storage against float32, BD-rate "
          f"{bd.estimate:+.3f} % ({bd.low:+.3f} … {bd.high:+.3f}); target under {TARGET_PERCENT} %: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
