"""Real bitstream rate against the entropy model's estimate, at 768x512 (Kodak's size).

The gap between the two is the cost of coding for real: the ``.feds`` container's header, the
latent shapes, and what CompressAI's rANS coder spends beyond -log2 p (flushing, the finite
precision of its CDF tables, the tails it codes by escape). Target: under 1 % of the estimate.

An untrained model codes almost nothing, so its gap is all header; the benchmark therefore measures
a trained model: the checkpoints you name, or else a tiny student it trains for a few hundred steps
(the scratch baseline: no teacher needed). Images: the built-in photographs, resized to cover
768x512 and centre-cropped.

    python benchmarks/coding_overhead.py                          # trains a tiny student (~minutes)
    python benchmarks/coding_overhead.py --checkpoint runs/student-cnn-tiny-l0.0067/model.safetensors
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from feds_lab.evaluation.cli import format_table
from feds_lab.evaluation.evaluate import evaluate_model

HEIGHT, WIDTH = 512, 768
TARGET_PERCENT = 1.0


def photos(height: int = HEIGHT, width: int = WIDTH) -> list[tuple[str, torch.Tensor]]:
    """The built-in photographs as (name, (1, 3, height, width)): resized to cover, centre-cropped."""
    from feds_lab.data import builtin_images

    out = []
    for name, x in builtin_images():
        x = x.unsqueeze(0) if x.dim() == 3 else x
        h, w = x.shape[-2:]
        if w < h:  # portrait: turn it, as Kodak's portrait images are usually evaluated landscape
            x, (h, w) = x.transpose(-1, -2), (w, h)
        scale = max(height / h, width / w)
        size = (max(height, round(h * scale)), max(width, round(w * scale)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        top, left = (size[0] - height) // 2, (size[1] - width) // 2
        out.append((name, x[..., top : top + height, left : left + width].contiguous()))
    return out


# --- a trained model when none is given -----------------------------------------------------------


def train_tiny_student(steps: int, lmbda: float, out: Path) -> Path:
    """Train the scratch-baseline tiny student with the package's trainer; returns its checkpoint."""
    from feds_lab.training.config import TrainConfig
    from feds_lab.training.trainer import train

    config = TrainConfig(role="student", baseline="scratch", preset="tiny", steps=steps, lmbda=lmbda,
                         out=str(out), val_every=0, ckpt_every=0, resume=False)
    return train(config)


def train_fallback(steps: int, lmbda: float) -> torch.nn.Module:
    """FALLBACK, only when ``feds_lab.training`` cannot be imported: a minimal CompressAI-style loop.

    Adam on L = bpp + lmbda * 255^2 * MSE over random 128 px crops, with the separate auxiliary
    optimiser for the entropy bottleneck's quantiles. Not the project's trainer: no schedule, no
    checkpoints, no validation.
    """
    from feds_lab.models import build_model

    torch.manual_seed(0)
    model = build_model("student", "tiny").train()
    main = [p for n, p in model.named_parameters() if not n.endswith("quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith("quantiles")]
    opt, aux_opt = torch.optim.Adam(main, lr=1e-3), torch.optim.Adam(aux, lr=1e-3)
    images = [x for _, x in photos()]
    for step in range(steps):
        batch = []
        for _ in range(8):
            x = images[torch.randint(len(images), ()).item()]
            top, left = (torch.randint(s - 128 + 1, ()).item() for s in x.shape[-2:])
            batch.append(x[..., top : top + 128, left : left + 128])
        x = torch.cat(batch)
        out = model(x)
        bits = sum((-torch.log2(lik)).sum() for lik in out["likelihoods"].values())
        loss = bits / (x.shape[0] * 128 * 128) + lmbda * 255**2 * F.mse_loss(out["x_hat"], x)
        opt.zero_grad()
        aux_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(main, 1.0)
        opt.step()
        model.aux_loss().backward()
        aux_opt.step()
        if step % 50 == 0:
            print(f"  fallback step {step}: loss {loss.item():.4f}")
    model.update(force=True)
    return model.eval()


# --- the measurement ----------------------------------------------------------------------------


def report(model: torch.nn.Module, images, label: str) -> float:
    """Print per-image and overall gaps; return the overall gap of the whole file, percent."""
    res = evaluate_model(model, images, name=label, progress=True)
    rows = res["rows"]
    for r in rows:
        r["gap-streams"] = 100 * (r["bpp-streams"] - r["bpp-estimate"]) / r["bpp-estimate"]
        r["header-bytes"] = r["bytes"] - round(r["bpp-streams"] * r["height"] * r["width"] / 8)
    # overall: total bits over total pixels (all images are the same size, so this is the mean)
    pixels = sum(r["height"] * r["width"] for r in rows)
    total = {k: sum(r[k] * r["height"] * r["width"] for r in rows) / pixels
             for k in ("bpp", "bpp-streams", "bpp-estimate")}
    overall = {"image": "overall", **total, "header-bytes": sum(r["header-bytes"] for r in rows) / len(rows),
               "bpp-gap-percent": 100 * (total["bpp"] - total["bpp-estimate"]) / total["bpp-estimate"],
               "gap-streams": 100 * (total["bpp-streams"] - total["bpp-estimate"]) / total["bpp-estimate"],
               "psnr-rgb": res["mean"]["psnr-rgb"]}
    print(f"\n{label}: real bitstream vs likelihood estimate, {WIDTH}x{HEIGHT}, {res['meta']['threads']} threads")
    print(format_table(rows + [overall], [
        ("image", "image", 0), ("bpp-estimate", "estimate bpp", 4), ("bpp-streams", "streams bpp", 4),
        ("bpp", "file bpp", 4), ("header-bytes", "header B", 0), ("gap-streams", "streams gap %", 3),
        ("bpp-gap-percent", "file gap %", 3), ("psnr-rgb", "PSNR dB", 2),
    ]))
    gap = overall["bpp-gap-percent"]
    verdict = "PASS" if abs(gap) < TARGET_PERCENT else "FAIL"
    print(f"{verdict}: the whole file costs {gap:+.3f} % over the estimate overall "
          f"(streams alone {overall['gap-streams']:+.3f} %); target |gap| < {TARGET_PERCENT} %")
    return gap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=[], metavar="CKPT",
                    help="a trained checkpoint (repeatable); without it a tiny student is trained")
    ap.add_argument("--steps", type=int, default=300, help="training steps when no checkpoint is given")
    ap.add_argument("--lmbda", type=float, default=0.0067)
    ap.add_argument("--images", type=int, default=None, help="use only the first N photographs")
    args = ap.parse_args()

    images = photos()[: args.images]
    if args.checkpoint:
        from feds_lab.checkpoint import load_model

        for path in args.checkpoint:
            report(load_model(path), images, Path(path).parent.name or path)
        return

    t0 = time.perf_counter()
    try:
        import feds_lab.training.trainer  # noqa: F401
    except ImportError:
        print(f"feds_lab.training is not importable: FALLBACK training loop, {args.steps} steps")
        model = train_fallback(args.steps, args.lmbda)
        label = f"fallback tiny student, {args.steps} steps"
    else:
        from feds_lab.checkpoint import load_model

        with tempfile.TemporaryDirectory() as tmp:
            print(f"training a tiny student (scratch baseline) for {args.steps} steps with feds_lab.training")
            model = load_model(train_tiny_student(args.steps, args.lmbda, Path(tmp) / "run"))
        label = f"tiny student, {args.steps} steps"
    print(f"trained in {time.perf_counter() - t0:.0f} s")
    report(model, images, label)


if __name__ == "__main__":
    main()
