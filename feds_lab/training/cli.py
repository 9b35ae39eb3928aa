"""``feds-lab train teacher|student``: one run from flags, a YAML file and ``--set key=value``.

::

    feds-lab train teacher --preset tiny --lmbda 0.0067 --out runs/teacher
    feds-lab train student --teacher runs/teacher/model.safetensors --set alpha=0.5 --set weighting=topk
    feds-lab train student --baseline scratch --config configs/student.yaml
    torchrun --nproc_per_node 2 -m feds_lab.training.cli train teacher --preset small   # data-parallel

Precedence: config defaults (budget from the preset) < ``--config`` < flags < ``--set``. A run folder
with a saved state resumes (``--fresh`` starts over); a finished one returns at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import FedsLabError

# flag -> TrainConfig field (flags left unset do not override the YAML file)
_FLAGS = {
    "preset": str, "family": str, "lmbda": float, "metric": str, "steps": int, "batch_size": int, "crop": int,
    "lr": float, "schedule": str, "data": str, "out": str, "device": str, "seed": int, "warm_start": str,
}


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Mount ``train`` (with ``teacher`` and ``student``) on a parent parser's subparsers."""
    train = subparsers.add_parser("train", help="train a teacher, a FEDS student or the scratch baseline",
                                  description=__doc__.splitlines()[0])
    roles = train.add_subparsers(dest="train_role", required=True, metavar="ROLE")
    for role, help_ in (("teacher", "train a teacher on L_RD (one model per lambda)"),
                        ("student", "distil a student from a teacher in three stages (or --baseline scratch)")):
        p = roles.add_parser(role, help=help_, description=help_)
        if role == "student":
            p.add_argument("--teacher", metavar="CKPT", help="teacher checkpoint (.safetensors)")
            p.add_argument("--baseline", choices=("none", "scratch"),
                           help="scratch: the same student on L_RD alone, no teacher (the baseline)")
        p.add_argument("--config", metavar="YAML", help="a TrainConfig as YAML (see configs/)")
        p.add_argument("--preset", help="paper | small | tiny (model sizes and default budget)")
        p.add_argument("--family", help="model family (default cnn)")
        p.add_argument("--lmbda", type=float, help="rate-distortion trade-off lambda")
        p.add_argument("--metric", help="mse | ms-ssim")
        p.add_argument("--steps", type=int, help="total optimiser steps")
        p.add_argument("--batch-size", dest="batch_size", type=int, help="global batch size")
        p.add_argument("--crop", type=int, help="training crop side, px (multiple of 64)")
        p.add_argument("--lr", type=float, help="learning rate (one-cycle peak)")
        p.add_argument("--schedule", help="constant | onecycle")
        p.add_argument("--data", metavar="DIR", help="image folder (default: the built-in photographs)")
        p.add_argument("--out", metavar="DIR", help="run folder (default runs/<run name>)")
        p.add_argument("--device", help="auto | cpu | cuda")
        p.add_argument("--seed", type=int)
        p.add_argument("--warm-start", dest="warm_start", metavar="CKPT", help="initialise the weights from CKPT")
        p.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                       help="any TrainConfig field, e.g. --set alpha=0.5 --set stage_split=[0,0.8,0.2] "
                            "--set model.M=64 (repeatable)")
        p.add_argument("--fresh", action="store_true", help="start over, deleting the run folder's state")
        p.add_argument("--resume", action="store_true", help="continue from the run folder's state (the default)")
        p.add_argument("--no-progress", dest="progress", action="store_false", default=None, help="no progress bar")
        p.set_defaults(func=run_train, train_role=role)
    return train


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of a parsed ``train`` command line."""
    from .config import ConfigError, TrainConfig

    cfg = TrainConfig.from_yaml(args.config) if args.config else TrainConfig()
    values = {"role": args.train_role}
    for name in (*_FLAGS, "teacher", "baseline", "progress"):
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    if args.fresh and args.resume:
        raise ConfigError("--fresh and --resume contradict each other")
    if args.fresh:
        values["resume"] = False
    elif args.resume:
        values["resume"] = True
    return cfg.updated(values).with_overrides(args.assignments)


def run_train(args: argparse.Namespace) -> None:
    from .trainer import TrainingInterrupted, train

    try:
        path = train(config_from_args(args))
    except TrainingInterrupted as e:
        print(f"feds-lab: {e}", file=sys.stderr)
        sys.exit(130)
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)


def main(argv: list[str] | None = None) -> int:
    """``python -m feds_lab.training.cli train ...``: the same command without the rest of ``feds-lab``
    (what tests and ``torchrun -m`` call)."""
    from ..threads import configure

    configure()
    parser = argparse.ArgumentParser(prog="feds-lab")
    add_train_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except FedsLabError as e:
        print(f"feds-lab: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
