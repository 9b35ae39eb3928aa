"""The evaluation subcommands of ``feds-lab``: ``eval``, ``anchors`` and ``bdrate``.

Each ``add_*_parser(subparsers)`` adds one subcommand and sets ``func`` on it; ``feds_lab.cli``
mounts them. A user error (unreadable file, undefined BD-rate ...) ends the command with a one-line
message on stderr and a non-zero status, never a traceback.

::

    feds-lab eval runs/*/model.safetensors --data kodak/ -o results/student.json
    feds-lab anchors --data kodak/ --codecs jpeg,webp -o results/anchors/
    feds-lab bdrate results/anchors/jpeg.json results/student.json --bootstrap 1000
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import FedsLabError, one_line


def _user_errors(command: str) -> Callable:
    """Turn the package's user errors (and ValueErrors) into SystemExit with a one-line message."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(args) -> None:
            try:
                fn(args)
            except (FedsLabError, ValueError) as err:
                raise SystemExit(f"feds-lab {command}: error: {one_line(err, limit=500)}") from None

        return run

    return deco


# --- shared helpers -----------------------------------------------------------------------------------


def _images(data: str | None):
    from ..data import BUILTIN_VAL, eval_images
    from .evaluate import load_folder_images

    if data:
        return load_folder_images(data)
    print(f"note: no --data folder: using the built-in held-out photographs ({', '.join(BUILTIN_VAL)}); "
          "name a folder such as Kodak for a real evaluation", file=sys.stderr)
    return eval_images(None, "val")


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.{digits}f}"
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, int]]) -> str:
    """Plain-text table. columns: (key, header, decimals)."""
    cells = [[h for _, h, _ in columns]] + [[_fmt(r.get(k, ""), d) for k, _, d in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_ROW_COLUMNS = [
    ("image", "image", 0), ("bpp", "bpp", 4), ("bpp-estimate", "bpp est.", 4), ("bpp-gap-percent", "gap %", 2),
    ("psnr-rgb", "PSNR dB", 2), ("ms-ssim-rgb", "MS-SSIM", 4), ("ms-ssim-rgb-db", "MS-SSIM dB", 2),
    ("encoding_time", "enc s", 3), ("decoding_time", "dec s", 3),
]


def print_results(results: dict[str, Any]) -> None:
    """Per-image rows and the mean of every RD point of a results dict."""
    columns = [c for c in _ROW_COLUMNS if any(c[0] in r for p in results["per_image"] for r in p) or c[0] == "image"]
    settings = results.get("settings") or [{}] * len(results["per_image"])
    for i, (rows, setting) in enumerate(zip(results["per_image"], settings)):
        shown = ("lmbda", "quality", "target_bpp", "checkpoint")
        label = ", ".join(f"{k}={v}" for k, v in setting.items() if k in shown)
        print(f"\n{results['name']}  point {i + 1}/{len(results['per_image'])}  {label}")
        mean = {"image": "mean", **{k: v[i] for k, v in results["results"].items()}}
        print(format_table(list(rows) + [mean], columns))


# --- eval -------------------------------------------------------------------------------------------


def add_eval_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="rate-distortion of checkpoints with real bitstreams",
        description="Code every image with each checkpoint (real bitstreams), measure bpp, the likelihood "
        "estimate beside it, PSNR, MS-SSIM and times; checkpoints of one model form one RD curve.",
    )
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="model checkpoints (.safetensors)")
    p.add_argument("--data", metavar="DIR", help="folder of images (default: scikit-image's bundled photos)")
    p.add_argument("-o", "--output", metavar="JSON", help="results file; with several curves, JSON-<curve>.json each")
    p.add_argument("--name", help="curve name in the results (default: family-role-preset[-run])")
    p.add_argument("--description", default="", help="free text stored in the results")
    p.add_argument("--quiet", action="store_true", help="no per-image table, no progress bars")
    p.add_argument("--cache", metavar="DIR|off", default=None,
                   help="evaluation cache: reuse the results of a checkpoint already evaluated on the same images "
                   "with the same settings and code (default: $FEDS_LAB_EVAL_CACHE, else off; notebook 04 uses "
                   "runs/.eval-cache)")
    p.set_defaults(func=_cmd_eval)


@_user_errors("eval")
def _cmd_eval(args) -> None:
    from .cache import resolve_cache
    from .curves import evaluate_checkpoints
    from .results import save_results

    images = _images(args.data)
    cache = resolve_cache(getattr(args, "cache", None))
    curves = evaluate_checkpoints(args.checkpoints, images, progress=not args.quiet, cache=cache)
    if cache.enabled:
        print(cache.summary(), file=sys.stderr)
    for curve in curves:
        if args.name:
            curve["name"] = args.name if len(curves) == 1 else f"{args.name}-{curve['name']}"
        if args.description:
            curve["description"] = args.description
        if not args.quiet:
            print_results(curve)
    if args.output:
        out = Path(args.output)
        for curve in curves:
            path = out if len(curves) == 1 else out.with_name(f"{out.stem}-{curve['name']}{out.suffix or '.json'}")
            print(f"wrote {save_results(curve, path)}")


# --- anchors ----------------------------------------------------------------------------------------


def add_anchors_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "anchors", help="RD curves of the classical codecs (JPEG, WebP, AVIF, JPEG 2000) through Pillow",
        description="Sweep each classical codec over its quality setting; write one results JSON per codec.",
    )
    p.add_argument("--data", metavar="DIR", help="folder of images (default: scikit-image's bundled photos)")
    p.add_argument("--codecs", default=None,
                   help="comma-separated, from jpeg,webp,avif,jpeg2000 (default: all this Pillow has)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for <codec>.json")
    p.add_argument("--quiet", action="store_true", help="no tables, no progress bars")
    p.set_defaults(func=_cmd_anchors)


@_user_errors("anchors")
def _cmd_anchors(args) -> None:
    from ..run_folder import anchor_results_name
    from .anchors import get_codec, run_anchors

    codecs = [c for c in args.codecs.split(",") if c.strip()] if args.codecs else None
    for c in codecs or []:
        get_codec(c)  # a bad name fails before the images are read
    results = run_anchors(_images(args.data), codecs, out_dir=args.output, progress=not args.quiet)
    for key, res in results.items():
        if not args.quiet:
            points = [{"setting": next(iter(s.values())), **{k: v[i] for k, v in res["results"].items()}}
                      for i, s in enumerate(res["settings"])]
            print(f"\n{res['name']} ({res['meta']['swept']})")
            measured = [c for c in _ROW_COLUMNS if c[0] not in ("image", "bpp-estimate", "bpp-gap-percent")]
            print(format_table(points, [("setting", res["meta"]["swept"], 2)] + measured))
        print(f"wrote {Path(args.output) / anchor_results_name(res['name'])}")


# --- bdrate -----------------------------------------------------------------------------------------


def add_bdrate_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bdrate", help="BD-rate and BD-PSNR of results files against an anchor",
        description="Bjøntegaard deltas of each TEST curve against the ANCHOR curve (negative BD-rate: the test "
        "saves bits). Quality: PSNR, or MS-SSIM in dB.",
    )
    p.add_argument("anchor", metavar="ANCHOR.json")
    p.add_argument("tests", nargs="+", metavar="TEST.json")
    p.add_argument("--metric", choices=["psnr", "ms-ssim"], default="psnr")
    p.add_argument("--method", choices=["pchip", "cubic"], default="pchip",
                   help="pchip: piecewise cubic, as JVET CTC (default); cubic: one polynomial, as VCEG-M33")
    p.add_argument("--bootstrap", type=int, default=0, metavar="N",
                   help="confidence interval from N resamples of the images (needs per-image rows)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_bdrate)


@_user_errors("bdrate")
def _cmd_bdrate(args) -> None:
    from .bdrate import bd_table

    if args.bootstrap < 0:
        raise ValueError("--bootstrap must be >= 0")
    rows = bd_table(args.anchor, args.tests, args.metric, args.method, args.bootstrap, args.confidence, args.seed)
    quality = "BD-PSNR dB" if args.metric == "psnr" else "BD-MS-SSIM dB"
    columns = [("test", "test", 0), ("anchor", "anchor", 0), ("bd_rate", "BD-rate %", 2), ("bd_quality", quality, 3),
               ("coverage", "overlap", 2)]
    if args.bootstrap:
        pct = f"{args.confidence * 100:g}%"
        columns += [("ci_low", f"{pct} CI low %", 2), ("ci_high", f"{pct} CI high %", 2),
                    ("resamples", "resamples", 0), ("failed", "failed", 0)]
    print(f"{args.metric} / {args.method}; negative BD-rate = the test needs fewer bits than the anchor")
    print(format_table(rows, columns))
    for row in rows:  # cautions: a sliver of overlap, or an interval many resamples dropped out of
        if row.get("note"):
            print(f"note: {row['test']} against {row['anchor']}: {row['note']}")
