"""Study variants as records: what each curve of a pipeline run is, so that nothing downstream parses a name.

A pipeline config lists its student variants by name, each with TrainConfig overrides (``variants``),
and two more fields add variants to them:

- ``learning_curve: {feds: [100, 600]}`` trains ``feds`` at other budgets: ``feds@100``, ``feds@600``
  (a variant listed under such a name, ``rate_matched@600``, is a budget of ``rate_matched`` too);
- ``seeds: {feds: [1, 2], feds@600: [1]}`` trains a variant again with other seeds: ``feds_s1``,
  ``feds_s2``, ``feds_s1@600``.

:func:`expand_variants` makes one :class:`Variant` of each, in the order of ``variants`` with the added
ones after it. The name stays what it was: the run folder (``student/<name>/``) and the label of the
variant's results, tables and figures. What the name spells (ladder, budget, seed, teacher pairing)
is a field of the record, and this module is the one place that builds or reads such names.
The teacher and the classical anchors of an analysis get records too (:meth:`Variant.teacher`,
:meth:`Variant.anchor`), so that an analysis tells its curves apart by ``kind``.

This module imports nothing heavy (``feds-lab --help`` reads configs without torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import FedsLabError

#: What a curve is: a FEDS student (it distils a teacher: FEDS and its ablations), the scratch
#: baseline (the same student on L_RD alone), the teacher, or a classical anchor (JPEG ...).
KINDS = ("feds", "scratch", "teacher", "anchor")
STUDENT_KINDS = ("feds", "scratch")


@dataclass(frozen=True)
class Variant:
    """One curve of a pipeline run: a student variant (one run per lambda), the teacher, or an anchor."""

    name: str  #: the run folder (student/<name>/) and the role's key in an analysis: "feds_s3@600", "teacher"
    kind: str  #: one of :data:`KINDS`
    #: the ladder it belongs to: the listed variant it repeats at another budget or seed ("feds" for
    #: "feds_s3@600", "rate_matched" for "rate_matched@600"); its own name otherwise; an anchor's codec ("jpeg")
    base: str
    steps: int | None = None  #: training steps per lambda (None: an anchor)
    seed: int | None = None  #: the training seed (a student's initial weights, crops, noise)
    #: the learning-curve budget it is a point of (``feds@600``: 600); None: the study's own budget
    budget: int | None = None
    #: the variant it repeats with another seed ("feds@600" for "feds_s3@600"); None: it is no repeat
    replica_of: str | None = None
    #: its entry of ``variants`` as pipeline.yaml holds it: TrainConfig overrides and ``teacher_for``
    #: (None where the config leaves it empty)
    entry: dict[str, Any] | None = field(default_factory=dict, hash=False)
    #: {student lambda: teacher lambda} where a student distils another lambda's teacher (ours)
    teacher_for: dict[float, float] = field(default_factory=dict, hash=False)

    @classmethod
    def teacher(cls, steps: int, seed: int) -> Variant:
        return cls(name="teacher", kind="teacher", base="teacher", steps=steps, seed=seed)

    @classmethod
    def anchor(cls, codec: str) -> Variant:
        """A classical anchor, by its codec key ("jpeg"): role ``anchor:jpeg`` in an analysis."""
        return cls(name=f"anchor:{codec}", kind="anchor", base=codec)

    @property
    def is_student(self) -> bool:
        return self.kind in STUDENT_KINDS

    @property
    def primary(self) -> bool:
        """At the study's own budget and seed: a curve of the BD table and the RD figure (a learning
        curve's budgets have their own table, a variant's other seeds the seed table)."""
        return self.budget is None and self.replica_of is None

    @property
    def overrides(self) -> dict[str, Any]:
        """The TrainConfig overrides of its runs (its entry without ``teacher_for``)."""
        return {k: v for k, v in (self.entry or {}).items() if k != "teacher_for"}

    def teacher_lambda(self, lmbda: float) -> float:
        """The lambda of the teacher its student at ``lmbda`` distils: its own, or the one ``teacher_for`` names."""
        return self.teacher_for.get(float(lmbda), float(lmbda))


# --- names: built and read here only ------------------------------------------------------------------

def curve_variant(base: str, steps: int) -> str:
    """The variant name of ``base`` trained for ``steps`` per lambda on a learning curve: ``feds@600``."""
    return f"{base}@{int(steps)}"


def split_curve_variant(name: str) -> tuple[str, int | None]:
    """``"feds@600"`` -> ``("feds", 600)``; a plain variant -> ``(name, None)`` (its budget is student_steps)."""
    base, sep, steps = name.rpartition("@")
    return (base, int(steps)) if sep and steps.isdigit() else (name, None)


def curve_tests(reference: str, learning_curve: Any) -> list[str]:
    """The ladders a learning curve measures against scratch's: the reference first, then every other
    variant it lists (scratch is the anchor, also when it is the reference)."""
    return [v for v in dict.fromkeys([reference, *(learning_curve or {})]) if v != "scratch"]


def seed_variant(base: str, seed: int) -> str:
    """The variant name of ``base`` trained with another ``seed``: ``feds_s3``; a learning curve's
    ``feds@600`` gives ``feds_s3@600`` (the seed names the variant, the budget stays its curve's)."""
    name, steps = split_curve_variant(base)
    return f"{name}_s{int(seed)}" + ("" if steps is None else f"@{steps}")


# --- the expansion --------------------------------------------------------------------------------------

def expand_variants(listed: dict[str, dict[str, Any]], learning_curve: Any, seeds: Any, *, student_steps: int,
                    seed: int, lambdas: list[float]) -> dict[str, Variant]:
    """{name: Variant} of every student variant of a pipeline config: those it lists, then its learning
    curve's budgets, then its seeds (idempotent: the expansion of the expansion is itself, so that a
    notebook reading the resolved pipeline.yaml gets the same records). Raises FedsLabError for a
    field that cannot be expanded, and for a ``teacher_for`` that names lambdas outside ``lambdas``."""
    entries, ladders = _with_budgets(listed, learning_curve, student_steps)
    groups = _seed_groups(entries, seeds, seed)
    entries, replica_of = _with_seeds(listed, entries, groups)
    records = {}
    for name, entry in entries.items():
        group = replica_of.get(name)
        base, budget = ladders[group or name]
        values = entry or {}
        records[name] = Variant(
            name=name, kind="scratch" if _is_scratch(entry) else "feds", base=base,
            steps=_whole(values.get("steps", student_steps)), seed=values.get("seed", seed), budget=budget,
            replica_of=group, entry=entry, teacher_for=_teacher_for(name, entry, lambdas))
    return records


def seed_groups(variants: Mapping[str, Variant]) -> dict[str, dict[int, str]]:
    """{variant: {seed: variant name}} of every variant that has other seeds, its own seed first:
    ``{"feds": {0: "feds", 1: "feds_s1"}}``."""
    groups: dict[str, dict[int, str]] = {}
    for v in variants.values():
        if v.replica_of is not None:
            own = variants[v.replica_of]
            groups.setdefault(own.name, {own.seed: own.name})[v.seed] = v.name
    return groups


def at_budget(variants: Mapping[str, Variant], base: str, budget: int | None) -> str | None:
    """The name of ladder ``base``'s student at learning-curve ``budget`` (None: the study's own), on
    its own seed: ``scratch@600`` for ("scratch", 600); None if the run has no such variant."""
    return next((v.name for v in variants.values() if v.is_student and v.base == base and v.budget == budget
                 and v.replica_of is None), None)


def _whole(value: Any) -> Any:
    """600.0 -> 600 (YAML may give a budget as a float); anything else as it is (TrainConfig checks it)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _is_scratch(entry: dict[str, Any] | None) -> bool:
    return (entry or {}).get("baseline") == "scratch"


def _with_budgets(listed, learning_curve, student_steps):
    """(entries, {name: (ladder, budget)}): ``listed`` with the learning curve's ``<variant>@<steps>``
    entries added; a listed variant named for its budget (``x@600``) trains at it."""
    curve = learning_curve or {}
    if not isinstance(curve, dict):
        raise FedsLabError(f"learning_curve must be a mapping {{variant: [steps, ...]}}, got {curve!r}")
    entries, ladders = dict(listed), {}
    for name, overrides in listed.items():
        base, steps = split_curve_variant(name)
        if steps is not None and (overrides or {}).get("steps", steps) != steps:
            raise FedsLabError(f"variant {name!r} is named for {steps} steps but sets steps: {overrides['steps']!r}")
        if steps is not None:
            entries[name] = {**(overrides or {}), "steps": steps}
        ladders[name] = (base, steps)
    for base, budgets in curve.items():
        if base not in listed or "@" in base:
            raise FedsLabError(f"learning_curve names {base!r}, which is not a variant; known: {list(listed)}")
        if not isinstance(budgets, list) or not budgets:
            raise FedsLabError(f"learning_curve[{base!r}] must be a list of step budgets, got {budgets!r}")
        for steps in budgets:
            checked_steps(f"learning_curve[{base!r}]", steps)
            if steps != student_steps:
                name = curve_variant(base, steps)
                entries[name] = {**(listed[base] or {}), "steps": steps}
                ladders[name] = (base, int(steps))
    return entries, ladders


def _seed_groups(entries, seeds, default_seed) -> dict[str, dict[int, str]]:
    """{variant: {seed: name}} of every variant ``seeds`` names, its own seed first, in the order of ``seeds``."""
    if not isinstance(seeds or {}, dict):
        raise FedsLabError(f"seeds must be a mapping {{variant: [seed, ...]}}, got {seeds!r}")
    groups: dict[str, dict[int, str]] = {}
    for base, listed in (seeds or {}).items():
        if base not in entries:
            hint = " (a budget needs its learning_curve entry)" if split_curve_variant(base)[1] is not None else ""
            raise FedsLabError(f"seeds names {base!r}, which is not a variant{hint}; known: {list(entries)}")
        if not isinstance(listed, list) or not listed:
            raise FedsLabError(f"seeds[{base!r}] must be a list of seeds, got {listed!r}")
        own = (entries[base] or {}).get("seed", default_seed)
        groups[base] = {own: base}
        for seed in listed:
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise FedsLabError(f"seeds[{base!r}]: each seed is a non-negative integer, got {seed!r}")
            if seed in groups[base]:
                raise FedsLabError(f"seeds[{base!r}] repeats seed {seed} (the variant's own seed is {own})")
            groups[base][seed] = seed_variant(base, seed)
    return groups


def _with_seeds(listed, entries, groups):
    """(entries with the ``<variant>_s<seed>`` entries added, {replica: the variant it repeats})."""
    entries, replica_of = dict(entries), {}
    for base, seeds in groups.items():
        for seed, name in seeds.items():
            if name == base:
                continue
            entry = {**(entries[base] or {}), "seed": seed}
            if name in listed and listed[name] != entry:
                raise FedsLabError(f"seeds: {base!r} seed {seed} makes the variant {name!r}, which the config "
                                   f"already has with other overrides ({listed[name]!r})")
            entries[name] = entry
            replica_of[name] = base
    return entries, replica_of


def _teacher_for(variant: str, entry: dict[str, Any] | None, lambdas: list[float]) -> dict[float, float]:
    """A variant's ``teacher_for`` {student lambda: teacher lambda}, checked against the ladder (ours:
    a student distils the teacher nearest its rate); a bad one fails when the config is read."""
    pairing = (entry or {}).get("teacher_for")
    if pairing is None:
        return {}
    if _is_scratch(entry):
        raise FedsLabError(f"variant {variant!r}: teacher_for names teachers for a scratch baseline, which has none")
    if not isinstance(pairing, dict):
        raise FedsLabError(f"variant {variant!r}: teacher_for must be a mapping {{student lambda: teacher lambda}}, "
                           f"got {pairing!r}")
    ladder = {float(l) for l in lambdas}
    given = {float(k): float(v) for k, v in pairing.items()}
    bad = sorted(l for pair in given.items() for l in pair if l not in ladder)
    if bad:
        raise FedsLabError(f"variant {variant!r}: teacher_for names lambdas {bad} that are not in the ladder {lambdas}")
    return given


def checked_steps(key: str, value: Any) -> int:
    """A budget: a positive whole number of steps."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise FedsLabError(f"{key} must be a positive whole number of steps (or left out for the preset's), got {value!r}")
    return int(value)
