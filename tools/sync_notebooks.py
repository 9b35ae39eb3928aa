"""Write each notebooks/NN_name.ipynb from its source notebooks/NN_name.py (jupytext percent format).

The .py files are the notebooks' source of truth: edit them (any editor, or JupyterLab, where
jupytext pairs the two through the ``formats`` line of each header), then run::

    .venv/bin/python tools/sync_notebooks.py          # write every .ipynb from its .py
    .venv/bin/python tools/sync_notebooks.py --check  # exit 1 if an .ipynb is not what its .py makes

The .ipynb are written without outputs and with cell ids numbered in order (``cell-00`` ...), so the
same source always gives the same file (tests/test_notebooks.py checks that the committed ones do).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def render(source: Path) -> str:
    """The .ipynb text that ``source`` (a percent-format .py) makes."""
    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata.pop("jupytext", None)  # the pairing is the .py header's business
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    return nbformat.writes(nb) + "\n"


def sources() -> list[Path]:
    return sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for src in sources():
        target = src.with_suffix(".ipynb")
        text = render(src)
        if target.exists() and target.read_text() == text:
            continue
        if check:
            stale.append(target.name)
        else:
            target.write_text(text)
            print(f"wrote {target.relative_to(NOTEBOOK_DIR.parent)}")
    if stale:
        print(f"not in step with their .py sources: {', '.join(stale)} (run tools/sync_notebooks.py)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
