"""The run report: standalone HTML that opens offline, from a file, with no server.

``write_report(run_dir)`` reads a finished (or partly finished) run folder and writes::

    report/<notebook>.html   each executed notebook (nbconvert's lab template, images inline,
                             a "Hide code" button that folds the code cells away)
    report/index.html        one page: links to those, the key figures, the BD-rate table,
                             the run's parameters and each notebook's run time

Everything the pages need is inside them (figures as base64 data URIs, CSS inline), and nothing
comes from the network (:mod:`feds_lab.offline_html`): formulas are MathML, converted at export
time, and each widget is a static picture built from its saved state (the interactive explorer of
notebook 02 needs a live kernel anyway). Missing pieces are said on the page, not raised.

Also a command: ``python -m feds_lab.report runs/demo``.
"""

from __future__ import annotations

import base64
import csv
import json
import sys
import time
from html import escape
from pathlib import Path
from urllib.parse import quote

import yaml

from .run_folder import BD_RATE_FILE, KEY_FIGURES, NOTEBOOKS, PIPELINE_FILE, RunLayout

#: CSS class and id the code toggle carries (tests look for them).
TOGGLE_ID = "feds-code-toggle"
HIDDEN_CLASS = "feds-code-hidden"

_TOGGLE_CSS = f"""<style>
#{TOGGLE_ID}-bar {{ position: sticky; top: 0; z-index: 10; display: flex; gap: 1em; align-items: center;
  padding: 6px 12px; background: #f5f5f5; border-bottom: 1px solid #ddd; font: 14px sans-serif; }}
#{TOGGLE_ID} {{ font: inherit; padding: 2px 10px; cursor: pointer; }}
body.{HIDDEN_CLASS} .jp-CodeCell .jp-Cell-inputWrapper {{ display: none; }}
</style>"""

# A button and ten lines of plain JavaScript: works from file://, needs nothing from outside.
_TOGGLE_BAR = f"""<div id="{TOGGLE_ID}-bar"><a href="index.html">&larr; run report</a>
<button id="{TOGGLE_ID}" type="button">Hide code</button></div>"""

_TOGGLE_JS = f"""<script>
(function () {{
  var button = document.getElementById("{TOGGLE_ID}");
  if (!button) return;
  button.addEventListener("click", function () {{
    var hidden = document.body.classList.toggle("{HIDDEN_CLASS}");
    button.textContent = hidden ? "Show code" : "Hide code";
  }});
}})();
</script>"""

_PAGE_CSS = """<style>
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, sans-serif; max-width: 1100px; margin: 2em auto;
  padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 13px; color: #555; } .missing { color: #a33; } .note { color: #555; font-size: 13px; }
</style>"""


# --- notebook pages ------------------------------------------------------------------------------

def notebook_html(path: str | Path, exporter=None) -> str:
    """One executed notebook as standalone HTML (lab template) with a code toggle."""
    import nbformat
    from nbconvert import HTMLExporter

    path = Path(path)
    exporter = exporter or HTMLExporter(template_name="lab", embed_images=True)
    from .offline_html import finish, prepare

    nb, formulas = prepare(nbformat.read(path, as_version=4))
    # a cell's log lines (the trainer's progress, "finished run ...; nothing to do") go to stderr, as a
    # command's do; they are not errors, and the lab template would paint them red: shown as plain text.
    # Errors are outputs of their own kind (output_type "error") and stay red.
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                out["name"] = "stdout"
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": path.stem}})
    body = finish(body, formulas)
    if formulas.failed:
        print(f"[report] {path.name}: {len(formulas.failed)} formula(s) left as TeX (latex2mathml could not "
              f"convert them), e.g. {formulas.failed[0][:60]!r}", file=sys.stderr)
    # the template's own <main> is the first one, its </body> the last: outputs cannot precede or follow them
    body = body.replace("<main>", _TOGGLE_CSS + _TOGGLE_BAR + "<main>", 1)
    head, sep, tail = body.rpartition("</body>")
    return head + _TOGGLE_JS + sep + tail if sep else body + _TOGGLE_JS


def _notebook_error(path: Path) -> str | None:
    """The first error output of an executed notebook ("ename: evalue"), if any."""
    try:
        nb = json.loads(path.read_text())
    except (OSError, ValueError):
        return "the executed copy cannot be read"
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if out.get("output_type") == "error":
                return f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"
    return None


# --- the index page ------------------------------------------------------------------------------

def _data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _figure(png: Path) -> str:
    name = escape(png.name)
    return f'<figure><img src="{_data_uri(png)}" alt="{name}"><figcaption>{name}</figcaption></figure>'


def _cell(value: str, numbers: bool = True) -> str:
    """A table cell; with ``numbers``, numbers right-aligned and shortened to four significant digits."""
    try:
        number = float(value) if numbers else None
    except ValueError:
        number = None
    if number is None:
        return f"<td>{escape(value)}</td>"
    text = value if number.is_integer() and "." not in value else f"{number:.4g}"
    return f'<td class="num">{escape(text)}</td>'


def _table(header: list[str], rows: list[list[str]], css_id: str, numbers: bool = True) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v, numbers) for v in row) + "</tr>" for row in rows)
    return f'<table id="{css_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _bd_section(layout: RunLayout) -> str:
    path = layout.bd_rate
    if not path.exists():
        return (f'<p class="missing">No BD-rate table yet: <code>results/{BD_RATE_FILE}</code> is written by '
                'notebook 04_rd_analysis.</p>')
    try:
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        return f'<p class="missing">results/{BD_RATE_FILE} cannot be read: {escape(str(e))}</p>'
    if not rows:
        return f'<p class="missing">results/{BD_RATE_FILE} is empty.</p>'
    width = len(rows[0])
    body = [(r + [""] * width)[:width] for r in rows[1:]]
    note = ('<p class="note">Each row: a test curve against an anchor curve on the same images; a negative '
            f'BD-rate means fewer bits for the same quality. From <code>results/{BD_RATE_FILE}</code>.</p>')
    return note + _table(rows[0], body, "bd-rate")


def _parameters_section(layout: RunLayout) -> str:
    path = layout.pipeline_file
    if not path.exists():
        return f'<p class="missing">No {PIPELINE_FILE} in the run folder.</p>'
    text = path.read_text()
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError:
        params = None
    if not isinstance(params, dict):
        return f"<pre>{escape(text)}</pre>"
    rows = [[str(k), v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)] for k, v in params.items()]
    return _table(["parameter", "value"], rows, "parameters", numbers=False)


def _notebook_names(layout: RunLayout, state: dict) -> list[str]:
    found = {p.stem for p in layout.notebooks.glob("*.ipynb")} if layout.notebooks.is_dir() else set()
    extra = sorted((found | set(state)) - set(NOTEBOOKS))
    return list(NOTEBOOKS) + extra


def _notebooks_section(layout: RunLayout, state: dict, pages: dict[str, str | None]) -> str:
    rows = []
    total = 0.0
    for name in _notebook_names(layout, state):
        entry = state.get(name) or {}
        seconds = entry.get("seconds") if isinstance(entry, dict) else None
        if isinstance(seconds, (int, float)):
            total += seconds
        if name in pages:
            error = pages[name]
            link = f'<a href="{escape(quote(name + ".html"))}">{escape(name)}</a>'
            status = (f'<span class="missing">failed: {escape(error)}</span>' if error
                      else "completed" if entry else "executed copy present, no run record")
        else:
            link = escape(name)
            status = ('<span class="missing">recorded as run, but its executed copy is missing</span>' if entry
                      else '<span class="missing">not run</span>')
        time_cell = f'<td class="num">{seconds:.1f}</td>' if isinstance(seconds, (int, float)) else "<td></td>"
        finished = escape(str(entry.get("finished", ""))) if isinstance(entry, dict) else ""
        rows.append(f"<tr><td>{link}</td><td>{status}</td>{time_cell}<td>{finished}</td></tr>")
    rows.append(f'<tr><th>total</th><th></th><th class="num">{total:.1f}</th><th></th></tr>')
    return ('<table id="notebooks"><thead><tr><th>notebook</th><th>status</th><th>seconds</th><th>finished</th>'
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _figures_section(layout: RunLayout) -> str:
    figures = layout.figures
    present = {p.name: p for p in figures.glob("*.png")} if figures.is_dir() else {}
    key = [present[n] for n in KEY_FIGURES if n in present]
    missing = [n for n in KEY_FIGURES if n not in present]
    others = [present[n] for n in sorted(present) if n not in KEY_FIGURES]
    parts = ['<div id="key-figures">'] + [_figure(p) for p in key] + ["</div>"]
    if missing:
        parts.append('<p class="missing">Not made yet: ' + ", ".join(escape(n) for n in missing) + "</p>")
    if others:
        parts += ['<h2>Other figures</h2><div id="other-figures">'] + [_figure(p) for p in others] + ["</div>"]
    return "".join(parts)


def _read_state(layout: RunLayout) -> dict:
    try:
        state = json.loads(layout.state_file.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_report(run_dir: str | Path) -> Path:
    """Write ``report/<notebook>.html`` for each executed notebook and ``report/index.html``; return the index."""
    from nbconvert import HTMLExporter

    layout = RunLayout(run_dir)
    layout.report.mkdir(parents=True, exist_ok=True)
    state = _read_state(layout)
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    pages: dict[str, str | None] = {}  # notebook name -> its first error (None: ran clean)
    for path in sorted(layout.notebooks.glob("*.ipynb")) if layout.notebooks.is_dir() else []:
        try:
            html = notebook_html(path, exporter)
        except Exception as e:  # an unreadable record must not cost the rest of the report
            print(f"[report] {path.name}: not converted ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        (layout.report / f"{path.stem}.html").write_text(html, encoding="utf-8")
        pages[path.stem] = _notebook_error(path)

    name = escape(layout.root.resolve().name)
    index = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>feds-lab run: {name}</title>{_PAGE_CSS}</head>
<body>
<h1>feds-lab run: {name}</h1>
<p class="note">Report written {escape(time.strftime("%Y-%m-%d %H:%M:%S"))} from <code>{escape(str(layout.root))}</code>.
Every page opens from disk without a server or a network: formulas are MathML, widgets are static
pictures of their saved state.</p>
<h2>Notebooks</h2>
{_notebooks_section(layout, state, pages)}
<h2>Key figures</h2>
{_figures_section(layout)}
<h2>BD-rate</h2>
{_bd_section(layout)}
<h2>Parameters</h2>
{_parameters_section(layout)}
</body></html>
"""
    out = layout.report_index
    out.write_text(index, encoding="utf-8")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m feds_lab.report RUN_DIR")
    print(write_report(sys.argv[1]))
