"""The ``feds-lab`` command. Each part of the package mounts its own subcommands here.

Errors meant for the user (:class:`~feds_lab.errors.FedsLabError`) are printed as one line and
exit with status 1; set ``FEDS_LAB_DEBUG=1`` to see tracebacks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__
from .errors import BitstreamError, CheckpointError, FedsLabError


def _cmd_compress(args) -> None:
    from .checkpoint import load_model
    from .coding import encode, load_image, write_bytes

    notes: list[str] = []
    x = load_image(args.image, notes)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    t0 = time.perf_counter()
    model = load_model(args.model)
    t_load = time.perf_counter() - t0
    r = encode(model, x)
    out = Path(args.output or Path(args.image).with_suffix(".feds"))
    write_bytes(out, r.data)
    print(f"{out}: {len(r.data)} bytes, {r.width}x{r.height}, {r.bpp:.4f} bpp "
          f"(streams {r.stream_bpp:.4f} bpp), encode {r.seconds * 1000:.1f} ms (model load {t_load:.2f} s)")


def _find_model_for(fp: str, search: list[str]) -> Path:
    from .checkpoint import read_record

    seen = 0
    for root in search:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob("*.safetensors")) if root.is_dir() else []
        for f in files:
            try:
                rec = read_record(f)
            except CheckpointError:
                continue
            seen += 1
            if rec.get("fingerprint") == fp:
                return f
    raise BitstreamError(
        f"no checkpoint with fingerprint {fp} found among {seen} checkpoint(s) under {', '.join(search)}; "
        "name the model that wrote the file with -m CHECKPOINT"
    )


def _cmd_decompress(args) -> None:
    from .bitstream import Bitstream
    from .checkpoint import load_model
    from .coding import decode, save_image

    path = Path(args.file)
    if not path.is_file():
        raise BitstreamError(f"{path}: no such file")
    data = path.read_bytes()
    bs = Bitstream.from_bytes(data)  # checks the container before any model is loaded
    model_path = args.model or _find_model_for(bs.fingerprint, args.search or ["runs", "."])
    model = load_model(model_path)
    r = decode(model, data)
    out = Path(args.output or path.with_suffix(".png"))
    save_image(r.x_hat, out)
    bpp = 8 * len(data) / (bs.width * bs.height)
    print(f"{out}: {bs.width}x{bs.height} from {len(data)} bytes ({bpp:.4f} bpp), decode {r.seconds * 1000:.1f} ms "
          f"with {model_path}")


def _cmd_info(args) -> None:
    import json

    from .checkpoint import read_record

    print(json.dumps(read_record(args.checkpoint), indent=2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="feds-lab", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"feds-lab {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compress", help="compress an image into a .feds file")
    c.add_argument("image")
    c.add_argument("-m", "--model", required=True, help="checkpoint (.safetensors)")
    c.add_argument("-o", "--output", help="output file (default: IMAGE.feds)")
    c.set_defaults(func=_cmd_compress)

    d = sub.add_parser("decompress", help="decode a .feds file into an image")
    d.add_argument("file")
    d.add_argument("-m", "--model", help="checkpoint that wrote the file (default: found by fingerprint)")
    d.add_argument("--search", action="append", help="folders searched for the checkpoint (default: runs/ and .)")
    d.add_argument("-o", "--output", help="output image (default: FILE.png)")
    d.set_defaults(func=_cmd_decompress)

    i = sub.add_parser("info", help="print a checkpoint's record")
    i.add_argument("checkpoint")
    i.set_defaults(func=_cmd_info)

    _mount(sub)
    return p


def _mount(sub) -> None:
    """Each part of the package defines its own subcommands."""
    from .evaluation.cli import add_anchors_parser, add_bdrate_parser, add_eval_parser
    from .pipeline import add_lab_parser, add_pipeline_parser
    from .training.cli import add_train_parser

    add_train_parser(sub)
    add_eval_parser(sub)
    add_anchors_parser(sub)
    add_bdrate_parser(sub)
    add_pipeline_parser(sub)
    add_lab_parser(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FedsLabError as e:
        print(f"feds-lab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("feds-lab: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a bare traceback for a user; FEDS_LAB_DEBUG=1 shows it
        if os.environ.get("FEDS_LAB_DEBUG"):
            raise
        print(f"feds-lab: error: {type(e).__name__}: {e} (set FEDS_LAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
