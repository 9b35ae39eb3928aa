"""The checks of a pipeline config's fields, one function per field or group of fields.

:meth:`feds_lab.pipeline_config.PipelineConfig.resolved` calls them in turn: each raises
:class:`~feds_lab.errors.FedsLabError` with a message that names the field, or returns the field's
resolved value (a default filled in, a path made absolute). The variants' expansion has its own
module, :mod:`feds_lab.variants`.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from .errors import FedsLabError
from .run_folder import NOTEBOOKS
from .variants import curve_tests


def check_run_name(name: Any, runs_dir: Any = "runs") -> str:
    """A run name is one plain folder name inside ``runs_dir``: no separators, no ``..``, not hidden."""
    if not isinstance(name, str) or not name or name in (".", "..") or name.startswith(".") \
            or any(c in name for c in "/\\\0") or len(name) > 200:
        raise FedsLabError(f"run name {name!r} must be one folder name (letters, digits, '-', '_', '.'), "
                           "without path separators or a leading '.'")
    if not isinstance(runs_dir, str) or not runs_dir:
        raise FedsLabError(f"runs_dir must be a folder name, got {runs_dir!r}")
    root = Path(runs_dir).resolve()
    if root not in (Path(runs_dir) / name).resolve().parents:
        raise FedsLabError(f"run name {name!r} leads outside the runs folder {runs_dir}")
    return name


def checked_lambdas(values: Any) -> list[float]:
    """The lambda ladder, sorted: positive, finite, each once (one number is a ladder of one)."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise FedsLabError(f"lambdas must be a non-empty list of positive numbers, got {values!r}")
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise FedsLabError(f"lambdas: {v!r} is not a number") from None
        if isinstance(v, bool) or not math.isfinite(f) or f <= 0:
            raise FedsLabError(f"lambdas must be positive and finite, got {v!r}")
        out.append(f)
    if len(set(out)) != len(out):
        raise FedsLabError(f"lambdas holds a value twice: {values!r}")
    return sorted(out)


def check_counts(seed: Any, entropy_images: Any) -> None:
    """``seed`` a non-negative integer, ``entropy_images`` a positive one."""
    for key, v, low in (("seed", seed, 0), ("entropy_images", entropy_images, 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise FedsLabError(f"{key} must be {'a positive' if low else 'a non-negative'} integer, got {v!r}")


def check_mappings(**values: Any) -> None:
    """Each of ``values`` (``train=...``, ``variants=...``) a mapping."""
    for key, value in values.items():
        if not isinstance(value, dict):
            raise FedsLabError(f"{key} must be a mapping, got {value!r}")


def check_reference(reference: str, variants: dict[str, Any]) -> None:
    if reference not in variants:
        raise FedsLabError(f"reference: {reference!r} is not a variant; the variants are {sorted(variants)}")


def check_learning_curve(learning_curve: Any, reference: str) -> None:
    """A learning curve compares distilled ladders with scratch's: one that names only scratch, with
    scratch as the reference, has nothing to compare (notebook 04 would find out after the training)."""
    if isinstance(learning_curve, dict) and learning_curve and not curve_tests(reference, learning_curve):
        raise FedsLabError("learning_curve names scratch budgets only and the reference is scratch: nothing to "
                           "compare them with; list the distilled variant too, at student_steps for its own "
                           "budget (e.g. {feds: [600], scratch: [1200]})")


def checked_comparisons(pairs: Any, variants: dict[str, Any]) -> list[list[str]]:
    """The config's own (anchor, test) pairs for the BD table, each a variant or "teacher"."""
    for pair in pairs or []:
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise FedsLabError(f"comparisons: each entry is [anchor, test], got {pair!r}")
        unknown = [v for v in pair if v != "teacher" and v not in variants]
        if unknown:
            raise FedsLabError(f"comparisons: {unknown} not variants (or 'teacher'); the variants are "
                               f"{sorted(variants)}")
    return [list(pair) for pair in pairs or []]


def resolved_images(data: Any, eval_data: Any, eval_split: str) -> tuple[Any, Any, str]:
    """(data, eval_data, eval_split): folders made absolute (notebooks run in notebooks/), and the
    built-in photographs evaluated on their evaluation set."""
    if eval_data is None and data in (None, "builtin") and eval_split == "val":
        # the built-in default evaluates on its evaluation set (data.BUILTIN_EVAL: 6 photographs none of
        # the training images shows), not on its 2 validation images: a bootstrap needs more than 2
        eval_data, eval_split = "builtin-eval", "all"  # = data.BUILTIN_EVAL_SET (no torch import here)
    out = {"data": data, "eval_data": eval_data}
    for key, path in out.items():
        if path in (None, "builtin") or (key == "eval_data" and path == "builtin-eval"):
            continue
        # a config names a folder of the user's by an environment variable (the studies: $FEDS_LAB_PHOTOS)
        expanded = os.path.expandvars(str(path))
        if "$" in expanded:
            var = expanded[expanded.index("$"):].split("/")[0].strip("${}")
            raise FedsLabError(f"{key}: {path!r} names the environment variable {var}, which is not set: set it to "
                               f"your photographs' folder (e.g. {var}=~/photos), or give --{key.replace('_', '-')} DIR")
        path = os.path.expanduser(expanded)
        if not Path(path).is_dir():
            raise FedsLabError(f"{key}: no such folder {path!r} (give a folder of images, or leave it out "
                               "for the built-in photographs)")
        out[key] = str(Path(path).resolve())
    return out["data"], out["eval_data"], eval_split


def resolved_eval_cache(value: Any) -> Any:
    """A folder (absolute: notebooks run in notebooks/), "off", or None for <runs_dir>/.eval-cache."""
    if value is False:  # YAML reads a bare ``off`` as False
        return "off"
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise FedsLabError(f"eval_cache must be a folder, 'off' or None, got {value!r}")
    if value.strip().lower() == "off":
        return value
    return str(Path(value).expanduser().resolve())


def check_threads(threads: Any) -> None:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise FedsLabError(f"threads must be a positive integer or None, got {threads!r}")


def check_notebooks(notebooks: list[str], lambdas: list[float]) -> None:
    """Known notebooks; a note on stderr when notebook 04 will find too few lambdas for a BD-rate."""
    unknown = [n for n in notebooks if n not in NOTEBOOKS]
    if unknown:
        raise FedsLabError(f"unknown notebook(s) {unknown}; known: {list(NOTEBOOKS)}")
    if len(lambdas) < 4 and "04_rd_analysis" in notebooks:
        print("note: fewer than four lambdas: BD-rates need four RD points and will be reported as not computable",
              file=sys.stderr)


# --- where the teachers come from --------------------------------------------------------------------------

TEACHER_SOURCES = ("zoo", "train")


def check_teacher(teacher: Any, family: str, preset: str, lambdas: list[float], train_settings: dict[str, Any]) -> None:
    """``teacher: zoo`` needs every lambda in the zoo's ladder of the family and preset, and no teacher
    training settings (they would be silently unused); ``teacher: train`` trains them here."""
    if teacher not in TEACHER_SOURCES:
        raise FedsLabError(f"teacher must be one of {list(TEACHER_SOURCES)} (the shipped ladder, or trained "
                           f"here), got {teacher!r}")
    if teacher != "zoo":
        return
    set_here = [k for k, v in train_settings.items() if v]
    if set_here:
        raise FedsLabError(f"{', '.join(set_here)} train(s) teachers, but teacher is 'zoo' (the shipped, trained "
                           "ladder): set teacher: train (--set teacher=train) to train them here")
    from .zoo import entries

    have = [e["lmbda"] for e in entries(None, family, preset)]
    missing = [l for l in lambdas if not any(math.isclose(l, h, rel_tol=1e-6) for h in have)]
    if missing:
        ladder = ", ".join(f"{h:g}" for h in have) or "none yet"
        raise FedsLabError(f"the zoo has no {family} {preset} teacher at lambda {', '.join(f'{l:g}' for l in missing)} "
                           f"(its {family} {preset} ladder: {ladder}; `feds-lab zoo list`): choose lambdas from it, "
                           "or set teacher: train (--set teacher=train) to train the teachers here")


# --- the teachers' ladder (checked when a teacher's run is made) ------------------------------------------

def teacher_overrides(overrides: Any, lambdas: list[float], lmbda: float) -> dict[str, Any]:
    """The TrainConfig overrides ``teacher_overrides`` gives the teacher at ``lmbda`` (none: {})."""
    given = {float(k): v for k, v in (overrides or {}).items()}
    unknown = sorted(set(given) - {float(l) for l in lambdas})
    if unknown:
        raise FedsLabError(f"teacher_overrides names lambdas {unknown} that are not in the ladder {lambdas}")
    return dict(given.get(float(lmbda)) or {})


def teacher_source(ladder: Any, lmbda: float, previous: list[float]) -> float:
    """The lambda whose teacher the teacher at ``lmbda`` starts from (``teacher_ladder``); ``previous``:
    the smaller lambdas of the ladder."""
    if ladder == "previous":
        return previous[-1]
    if ladder == "first":
        return previous[0]
    if isinstance(ladder, dict):
        given = {float(k): float(v) for k, v in ladder.items()}
        source = given.get(float(lmbda), previous[-1])
        if source not in previous:
            raise FedsLabError(f"teacher_ladder: lambda {lmbda:g} can start only from a smaller lambda of "
                               f"the ladder {previous}, got {source:g}")
        return source
    raise FedsLabError(f"teacher_ladder must be 'previous', 'first' or a mapping {{lambda: lambda}}, got {ladder!r}")
