"""The ``feds-lab`` command. Each part of the package mounts its own subcommands here.

Errors meant for the user (:class:`~feds_lab.errors.FedsLabError`) are printed as one line and
exit with status 1; set ``FEDS_LAB_DEBUG=1`` to see tracebacks.

Only the module of the command being run is imported (training and evaluation load torch, which
takes seconds): ``feds-lab --help`` lists the others from :data:`MOUNTED`. ``--plugin MODULE``
imports a module first, so that the model families it registers are known to every command;
installed packages can also declare theirs in the entry-point group ``feds_lab.families``
(:mod:`feds_lab.models.registry`).
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
    from .coding import IMAGE_FORMATS, encode, load_image, write_bytes
    from .errors import OutputError
    from .io import check_output

    out = Path(args.output or Path(args.image).with_suffix(".feds"))
    if out.suffix.lower() in IMAGE_FORMATS or out.suffix.lower() in (".gif",):
        raise OutputError(f"{out}: compress writes a .feds stream, not an image; name the output NAME.feds")
    check_output(out, [args.image, args.model], force=args.force)  # before any work: never replaces an input
    notes: list[str] = []
    x = load_image(args.image, notes)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    t0 = time.perf_counter()
    model = load_model(args.model)
    t_load = time.perf_counter() - t0
    r = encode(model, x)
    write_bytes(check_output(out, [args.image, args.model], force=args.force), r.data)
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


def decoded_name(path: Path) -> Path:
    """The default output of ``decompress``: ``photo.feds`` -> ``photo.decoded.png``, never the original's name."""
    return path.with_name(f"{path.stem}.decoded.png")


def _cmd_decompress(args) -> None:
    from .bitstream import Bitstream
    from .checkpoint import load_model
    from .coding import decode, image_format, save_image
    from .io import check_output

    path = Path(args.file)
    if not path.is_file():
        raise BitstreamError(f"{path}: no such file")
    out = Path(args.output) if args.output else decoded_name(path)
    fmt = image_format(out)  # an unknown extension is refused, not silently written as PNG
    check_output(out, [path] + ([args.model] if args.model else []), force=args.force)
    data = path.read_bytes()
    bs = Bitstream.from_bytes(data)  # checks the container before any model is loaded
    model_path = args.model or _find_model_for(bs.fingerprint, args.search or ["runs", "."])
    model = load_model(model_path)
    r = decode(model, data)
    save_image(r.x_hat, check_output(out, [path, model_path], force=args.force))
    bpp = 8 * len(data) / (bs.width * bs.height)
    print(f"{out}: {fmt} image, {bs.width}x{bs.height} from {len(data)} bytes ({bpp:.4f} bpp), "
          f"decode {r.seconds * 1000:.1f} ms with {model_path}")


def _cmd_info(args) -> None:
    import json

    from .checkpoint import read_record

    print(json.dumps(read_record(args.checkpoint), indent=2))


def _cmd_families(args) -> None:
    from .models import list_families
    from .presets import MODEL_PRESETS

    for name in list_families():
        print(f"{name}  (presets: {', '.join(MODEL_PRESETS.get(name, {})) or 'none'})")


#: Subcommands that other parts of the package mount: name -> (module, function adding its parser,
#: the one-line help ``feds-lab --help`` shows; tests/test_workbench.py checks it is the parser's own).
MOUNTED = {
    "train": ("feds_lab.training.cli", "add_train_parser", "train a teacher, a FEDS student or the scratch baseline"),
    "tune": ("feds_lab.tune", "add_tune_parser",
             "search the FEDS settings (Optuna) on the validation split, by BD-rate against scratch"),
    "eval": ("feds_lab.evaluation.cli", "add_eval_parser", "rate-distortion of checkpoints with real bitstreams"),
    "anchors": ("feds_lab.evaluation.cli", "add_anchors_parser",
                "RD curves of the classical codecs (JPEG, WebP, AVIF, JPEG 2000) through Pillow"),
    "bdrate": ("feds_lab.evaluation.cli", "add_bdrate_parser", "BD-rate and BD-PSNR of results files against an anchor"),
    "pipeline": ("feds_lab.pipeline", "add_pipeline_parser", "run the four notebooks headless, in order (the main job)"),
    "lab": ("feds_lab.pipeline", "add_lab_parser", "open JupyterLab on notebooks/ with the project's own kernel"),
    "zoo": ("feds_lab.zoo.cli", "add_zoo_parser", "the shipped teacher ladders: list, info, train"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole parser; given the ``argv`` it will parse, only that command's module is imported."""
    p = argparse.ArgumentParser(prog="feds-lab", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"feds-lab {__version__}")
    p.add_argument("--plugin", action="append", metavar="MODULE",
                   help="import MODULE first: the model families it registers join (repeatable)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compress", help="compress an image into a .feds file")
    c.add_argument("image")
    c.add_argument("-m", "--model", required=True, help="checkpoint (.safetensors)")
    c.add_argument("-o", "--output", help="output file (default: IMAGE.feds; never the input)")
    c.add_argument("-f", "--force", action="store_true", help="replace an existing output file")
    c.set_defaults(func=_cmd_compress)

    d = sub.add_parser("decompress", help="decode a .feds file into an image")
    d.add_argument("file")
    d.add_argument("-m", "--model", help="checkpoint that wrote the file (default: found by fingerprint)")
    d.add_argument("--search", action="append", help="folders searched for the checkpoint (default: runs/ and .)")
    d.add_argument("-o", "--output", help="output image: .png, .jpg, .webp, .tif, .bmp or .ppm "
                   "(default: FILE.decoded.png, never the original's name)")
    d.add_argument("-f", "--force", action="store_true", help="replace an existing output file")
    d.set_defaults(func=_cmd_decompress)

    i = sub.add_parser("info", help="print a checkpoint's record")
    i.add_argument("checkpoint")
    i.set_defaults(func=_cmd_info)

    f = sub.add_parser("families", help="list the model families (the package's, entry points', --plugin's)")
    f.set_defaults(func=_cmd_families)

    _mount(sub, None if argv is None else _command_in(argv))
    return p


def _command_in(argv: list[str]) -> str:
    """The subcommand ``argv`` names ("" when none: then only placeholders are mounted)."""
    args = iter(argv)
    for a in args:
        if a == "--plugin":
            next(args, None)
        elif not a.startswith("-"):
            return a
    return ""


def _mount(sub, command: str | None) -> None:
    """Each part of the package defines its own subcommands: all of them (``command`` None), or only
    ``command``'s, the others as placeholders that carry their help line."""
    import importlib

    for name, (module, adder, help_) in MOUNTED.items():
        if command is None or command == name:
            getattr(importlib.import_module(module), adder)(sub)
        else:
            sub.add_parser(name, help=help_, add_help=False)


def os_error_message(e: OSError) -> str:
    """An operating-system error in the user's words: what could not be done, with which path, and
    what to do about it (never Python's ``[Errno N]`` text)."""
    import errno

    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    why = (e.strerror or str(e) or type(e).__name__).rstrip(".")
    why = why[:1].lower() + why[1:] if why[1:2].islower() else why  # "Permission denied" -> "permission denied"
    hint = {
        errno.EACCES: "check the permissions of the file and its folder, or choose another path",
        errno.EPERM: "the system does not allow it there: choose another path, e.g. a folder you own",
        errno.EROFS: "that file system is read-only: choose another path",
        errno.ENOSPC: "the disk is full: free some space or choose another disk",
        errno.EDQUOT: "your disk quota is used up: free some space or choose another disk",
        errno.ENOENT: "check that the path and its folder exist",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "the path is a folder; give a file name",
        errno.ENAMETOOLONG: "use a shorter path",
    }.get(e.errno)
    return (f"{where}: {why}" if where else why) + (f"; {hint}" if hint else "")


def main(argv: list[str] | None = None) -> int:
    from .threads import configure

    configure()  # first, before any command's module loads torch: thread defaults for busy machines
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    try:
        if args.plugin:
            from .models.registry import load_plugin

            for module in args.plugin:
                load_plugin(module)
        args.func(args)
    except FedsLabError as e:
        print(f"feds-lab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("feds-lab: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        if os.environ.get("FEDS_LAB_DEBUG"):
            raise
        print("feds-lab: error: not enough memory for this command (a smaller image, or a machine with more "
              "memory)", file=sys.stderr)
        return 1
    except OSError as e:  # an unwritable output folder, a full disk ...: said as the system's reason
        if os.environ.get("FEDS_LAB_DEBUG"):
            raise
        print(f"feds-lab: error: {os_error_message(e)}", file=sys.stderr)
        return 1
    except Exception as e:  # never a bare traceback for a user; FEDS_LAB_DEBUG=1 shows it
        if os.environ.get("FEDS_LAB_DEBUG"):
            raise
        print(f"feds-lab: error: {type(e).__name__}: {e} (set FEDS_LAB_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
