"""Write the result tables of the docs from the CSV files that notebook 04 writes into figures/.

A docs page holds a marker pair; everything between the two lines is replaced by a markdown table
made from the CSV the first line names::

    <!-- table: figures/study-feds/bd_rate.csv where=anchor~scratch columns=test,bd_rate,ci -->
    (the table: written by this script, do not edit by hand)
    <!-- /table -->

The path is relative to the repository root; markers inside fenced code blocks are examples and are
left alone. Optional words after it:

- ``where=COLUMN~TEXT`` keeps the rows whose COLUMN contains TEXT; ``where=COLUMN!~TEXT`` those whose
  COLUMN does not; ``where=COLUMN=VALUE`` those whose COLUMN is exactly VALUE (repeatable: all must hold;
  TEXT and VALUE cannot hold spaces: use a part of the value that has none);
- ``columns=a,b,c`` shows these of the file's columns (by the keys of ``COLUMNS`` below), in this order;
- ``head=N`` keeps the first N rows (after ``where``).

Numbers are rounded one way everywhere: BD-rates and other percentages to 1 decimal, dB to 2, bpp
to 3, ratios to 2, milliseconds and seconds to whole numbers. A blank cell (a BD-rate that could
not be computed) shows as an em dash; the note column says why. The CSV's rows keep their order.
Pure Python (csv module), deterministic::

    .venv/bin/python tools/render_tables.py           # rewrite every table in README.md and docs/
    .venv/bin/python tools/render_tables.py --check   # exit 1 if a table is not what its CSV makes
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"(?P<open><!-- table: (?P<spec>[^\n]*?) -->\n)(?P<body>.*?)(?P<close><!-- /table -->)", re.S)
MINUS = "\u2212"
DASH = "\u2014"

# --- formats --------------------------------------------------------------------------------------


def _number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fixed(x: float, decimals: int, signed: bool) -> str:
    text = f"{x:+.{decimals}f}" if signed else f"{x:.{decimals}f}"
    if not any(c in "123456789" for c in text):  # -0.0 and +0.0 are 0.0
        text = text.lstrip("+-")
    return text.replace("-", MINUS)


def fmt(value: str, kind: str) -> str:
    """One cell. kinds: pct (signed, 1 decimal), db (signed, 2), bpp (3), ratio (2), share (2),
    ms and s (whole numbers), int, text."""
    if kind == "text":
        return (value or "").replace("|", "\\|").replace("\n", " ")
    x = _number(value)
    if x is None or value == "":
        return DASH
    if kind == "pct":
        return _fixed(x, 1, True)
    if kind == "pct_abs":
        return _fixed(x, 1, False)
    if kind == "db":
        return _fixed(x, 2, True)
    if kind == "bpp":
        return _fixed(x, 3, False)
    if kind in ("ratio", "share"):
        return _fixed(x, 2, False)
    if kind in ("ms", "s", "int"):
        return f"{x:,.0f}"
    if kind == "params":
        return _fixed(x, 3, False)
    raise ValueError(f"unknown format {kind!r}")


# --- the columns of each CSV that notebook 04 writes ------------------------------------------------
# key -> (header, how the cell is made). A key that is a CSV column is formatted with its kind; the
# derived keys ("ci", "wins", "points") combine columns.

COLUMNS: dict[str, dict[str, tuple[str, str]]] = {
    "bd_rate.csv": {
        "test": ("test", "text"), "anchor": ("anchor", "text"), "bd_rate": ("BD-rate %", "pct"),
        "ci": ("{conf} interval %", "pct"), "bd_quality": ("BD-PSNR dB", "db"),
        "coverage": ("share of the quality range", "share"), "note": ("note", "text"),
    },
    "seeds.csv": {
        "variant": ("variant", "text"), "anchor_group": ("against", "text"), "comparison": ("seed", "text"),
        "bd_rate": ("BD-rate %", "pct"), "ci": ("{conf} interval %", "pct"), "bd_quality": ("BD-PSNR dB", "db"),
        "wins": ("wins", "text"), "seed_mean": ("per-seed mean %", "pct"), "seed_sd": ("per-seed sd", "pct_abs"),
        "note": ("note", "text"),
    },
    "learning_curve.csv": {
        "variant": ("variant", "text"), "comparison": ("comparison", "text"), "steps": ("steps per λ", "int"),
        "anchor_steps": ("scratch steps per λ", "int"), "seconds": ("ladder s", "s"),
        "anchor_seconds": ("scratch ladder s", "s"), "bd_rate": ("BD-rate %", "pct"),
        "ci": ("{conf} interval %", "pct"), "coverage": ("share of the quality range", "share"),
        "note": ("note", "text"),
    },
    "teacher_gap.csv": {
        "test": ("student", "text"), "anchor": ("teacher", "text"), "points": ("points inside", "text"),
        "gap_db": ("PSNR − teacher's, dB", "db"), "ci": ("{conf} interval dB", "db"),
        "per_lambda": ("per λ, dB", "text"), "anchor_front": ("teacher's front", "text"), "note": ("note", "text"),
    },
    "params_speed.csv": {
        "model": ("model", "text"), "params (M)": ("params (M)", "params"), "encode (ms)": ("encode ms", "ms"),
        "decode (ms)": ("decode ms", "ms"), "params ratio": ("params ratio", "ratio"),
        "enc+dec ratio": ("enc+dec time ratio", "ratio"), "threads": ("threads", "int"),
    },
}

DEFAULT_COLUMNS = {
    "bd_rate.csv": ["test", "anchor", "bd_rate", "ci", "bd_quality", "coverage", "note"],
    "seeds.csv": ["variant", "anchor_group", "comparison", "bd_rate", "ci", "bd_quality", "wins", "seed_mean", "seed_sd",
                  "note"],
    "learning_curve.csv": ["variant", "comparison", "steps", "anchor_steps", "seconds", "anchor_seconds", "bd_rate", "ci",
                           "note"],
    "teacher_gap.csv": ["test", "anchor", "points", "gap_db", "ci", "per_lambda", "note"],
    "params_speed.csv": ["model", "params (M)", "encode (ms)", "decode (ms)", "params ratio", "enc+dec ratio", "threads"],
}


def _cell(row: dict[str, str], key: str, kind: str) -> str:
    if key == "ci":
        lo, hi = fmt(row.get("ci_low", ""), kind), fmt(row.get("ci_high", ""), kind)
        return DASH if DASH in (lo, hi) else f"{lo} … {hi}"
    if key == "wins":
        wins, pairs = _number(row.get("wins", "")), _number(row.get("pairs", ""))
        return f"{wins:.0f} of {pairs:.0f}" if wins is not None and pairs is not None else ""
    if key == "points":
        return f"{row.get('points', '')} of {row.get('of', '')}"
    return fmt(row.get(key, ""), kind)


def _keep(row: dict[str, str], condition: str) -> bool:
    for op in ("!~", "~", "="):
        column, sep, value = condition.partition(op)
        if sep:
            if column not in row:
                raise ValueError(f"where={condition}: no column {column!r}")
            cell = row[column]
            return {"!~": value not in cell, "~": value in cell, "=": cell == value}[op]
    raise ValueError(f"where={condition}: expected COLUMN~TEXT, COLUMN!~TEXT or COLUMN=VALUE")


def render(spec: str) -> str:
    """The markdown table a marker's spec (path and options) makes."""
    path, *options = spec.split()
    csv_path = REPO / path
    kind = csv_path.name
    if kind not in COLUMNS:
        raise ValueError(f"{path}: no table layout for {kind} (known: {', '.join(COLUMNS)})")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    columns = DEFAULT_COLUMNS[kind]
    for option in options:
        key, _, value = option.partition("=")
        if key == "where":
            rows = [r for r in rows if _keep(r, value)]
        elif key == "columns":
            columns = value.split(",")
            unknown = [c for c in columns if c not in COLUMNS[kind]]
            if unknown:
                raise ValueError(f"{path}: unknown columns {unknown} (known: {', '.join(COLUMNS[kind])})")
        elif key == "head" and value.isdigit():
            rows = rows[: int(value)]
        else:
            raise ValueError(f"{path}: unknown option {option!r} (where=..., columns=..., head=N)")
    if not rows:
        raise ValueError(f"{spec}: no rows left")
    confidences = {r.get("confidence") for r in rows if r.get("confidence")}
    conf = f"{float(confidences.pop()) * 100:g} %" if len(confidences) == 1 else "bootstrap"
    if "note" in columns and not any(r.get("note") for r in rows):
        columns = [c for c in columns if c != "note"]  # an empty column says nothing
    heads = [COLUMNS[kind][c][0].format(conf=conf) for c in columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, c, COLUMNS[kind][c][1]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


FENCE = re.compile(r"^(```|~~~)", re.M)


def update(text: str) -> str:
    """``text`` with every marker's table rewritten; markers inside fenced code blocks (examples)
    are left as they are."""

    def table(m: re.Match) -> str:
        if len(FENCE.findall(text, 0, m.start())) % 2:  # inside a code block
            return m[0]
        return m["open"] + render(m["spec"]) + m["close"]

    return MARKER.sub(table, text)


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for page in pages():
        text = page.read_text()
        new = update(text)
        if new == text:
            continue
        if check:
            stale.append(str(page.relative_to(REPO)))
        else:
            page.write_text(new)
            print(f"wrote {page.relative_to(REPO)}")
    if stale:
        print(f"tables not what their CSV makes: {', '.join(stale)} (run tools/render_tables.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
