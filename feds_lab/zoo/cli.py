"""``feds-lab zoo list | info NAME | remove NAME | train``: the shipped teachers, what each is, and how to re-create them.

::

    feds-lab zoo list
    feds-lab zoo info cnn-tiny-teacher-l0.013
    feds-lab zoo train --data ~/photos --jobs 2                 # the CNN tiny ladder, resumable
    feds-lab zoo train --data ~/photos --save-interim zoo-interim   # copy the latest states, then stop
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_zoo_parser(subparsers) -> argparse.ArgumentParser:
    zoo = subparsers.add_parser("zoo", help="the shipped teacher ladders: list, info, train",
                                description=__doc__.splitlines()[0])
    sub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    p = sub.add_parser("list", help="every model in the zoo, one line each")
    p.add_argument("--zoo-dir", help="another zoo folder (default: the package's)")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("info", help="one model's record: training, data and its sources, validation, checksum")
    p.add_argument("name")
    p.add_argument("--zoo-dir")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("remove", help="take a model out of a zoo folder: its file and its manifest entry")
    p.add_argument("name")
    p.add_argument("--zoo-dir")
    p.set_defaults(func=_cmd_remove)
    p = sub.add_parser("train", help="re-create a ladder: long lambdas from scratch, the others fine-tuned")
    from .train import LadderPlan

    d = LadderPlan()
    p.add_argument("--family", default=d.family)
    p.add_argument("--preset", default=d.preset)
    p.add_argument("--lambdas", default=",".join(f"{x:g}" for x in d.lambdas), help="the ladder, comma-separated")
    p.add_argument("--long", default=",".join(f"{x:g}" for x in d.long),
                   help="lambdas trained from scratch for --steps (the others are fine-tuned from the nearest)")
    p.add_argument("--from", dest="sources", action="append", metavar="LAMBDA=SOURCE", default=[],
                   help="fine-tune LAMBDA from SOURCE instead of the nearest long lambda (e.g. 0.0018=0.0035: "
                        "a lambda beyond the ladder's end from its neighbour); repeatable. Default: "
                        + ", ".join(f"{k:g}={v:g}" for k, v in d.sources.items()))
    p.add_argument("--unshipped", default=",".join(f"{x:g}" for x in d.unshipped),
                   help="lambdas trained (as sources) but not published into the zoo; '' publishes every one")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--finetune-steps", type=int, default=d.finetune_steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--finetune-lr", type=float, default=d.finetune_lr)
    p.add_argument("--data", help="image folder (trained on its tune-train split; default: the built-in photographs)")
    p.add_argument("--runs", default=d.runs, help="where the run folders live")
    p.add_argument("--jobs", type=int, default=2, help="training processes side by side (one thread each)")
    p.add_argument("--interim", help="seed run folders that are gone from the states kept in this folder")
    p.add_argument("--save-interim", metavar="DIR", help="copy every unfinished run's latest state into DIR and stop (with --no-publish also "
                        "every finished run's model: those are in no zoo)")
    p.add_argument("--zoo-dir", help="publish into another zoo folder (default: the package's)")
    p.add_argument("--no-publish", dest="publish", action="store_false")
    p.set_defaults(func=_cmd_train)
    return zoo


def _floats(text: str, flag: str, empty: bool = False) -> tuple[float, ...]:
    from ..errors import FedsLabError

    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise FedsLabError(f"{flag} takes numbers separated by commas, e.g. 0.0067,0.013; got {text!r}") from None
    if not values and empty:
        return values
    if not values or any(v <= 0 for v in values):
        raise FedsLabError(f"{flag} takes positive lambdas, got {text!r}")
    return values


def _cmd_list(args) -> None:
    from . import entries

    rows = [e for role in ("teacher", "student") for e in entries(args.zoo_dir, role=role)]
    if not rows:
        print("the zoo is empty (feds-lab zoo train re-creates it)")
        return
    print(f"{'name':<34} {'steps':>7} {'val PSNR':>9} {'val bpp':>8} {'MB':>5}")
    for e in rows:
        rec = e["record"]
        steps = (rec.get("budget") or {}).get("steps", "?")
        val = rec.get("val") or {}
        psnr = f"{val['psnr']:.2f}" if "psnr" in val else "-"
        bpp = f"{val['bpp']:.3f}" if "bpp" in val else "-"
        print(f"{e['name']:<34} {steps:>7} {psnr:>9} {bpp:>8} {e['bytes'] / 1e6:>5.1f}")


def _cmd_info(args) -> None:
    from . import ZooError, entries

    from ..checkpoint import read_record
    from . import MANIFEST_ONLY, verified_path

    for e in entries(args.zoo_dir, role="teacher") + entries(args.zoo_dir, role="student"):
        if e["name"] == args.name:  # the manifest entry, then the file's own record (data, sources, budget)
            record = read_record(verified_path(e, args.zoo_dir))
            record.update({k: e["record"][k] for k in MANIFEST_ONLY if k in e["record"]})
            print(json.dumps({**e, "record": record}, indent=1, default=str))
            return
    raise ZooError(f"no zoo model named {args.name!r}; `feds-lab zoo list` shows them")


def _cmd_remove(args) -> None:
    from . import remove

    entry = remove(args.name, args.zoo_dir)
    print(f"removed {entry['file']} ({entry['bytes'] / 1e6:.1f} MB) from the zoo")


def _cmd_train(args) -> None:
    from ..errors import FedsLabError
    from .train import LadderPlan, save_interim, train_ladder

    lambdas, long = _floats(args.lambdas, "--lambdas"), _floats(args.long, "--long")
    sources = {}
    for item in args.sources:
        lmbda, sep, src = item.partition("=")
        if not sep:
            raise FedsLabError(f"--from takes LAMBDA=SOURCE, e.g. 0.0018=0.0035; got {item!r}")
        sources[_floats(lmbda, "--from")[0]] = _floats(src, "--from")[0]
    if not args.sources:  # the default ladder's chains, where both ends are in this ladder
        sources = {k: v for k, v in LadderPlan().sources.items() if k in lambdas and v in lambdas}
    plan = LadderPlan(family=args.family, preset=args.preset, lambdas=lambdas, long=long, sources=sources, steps=args.steps,
                      finetune_steps=args.finetune_steps, lr=args.lr, finetune_lr=args.finetune_lr,
                      unshipped=_floats(args.unshipped, "--unshipped", empty=True),
                      data=str(Path(args.data).resolve()) if args.data else None, runs=args.runs)
    if args.save_interim:
        for path in save_interim(plan, Path(args.save_interim), finished=not args.publish):
            print(f"kept {path}/{'model.safetensors' if (path / 'model.safetensors').is_file() else 'state.pt'}")
        return
    train_ladder(plan, jobs=args.jobs, interim=args.interim, zoo_dir=args.zoo_dir, publish_when_done=args.publish,
                 say=lambda m: print(m, file=sys.stderr, flush=True))
