"""Notebook pages that need no network: formulas as MathML, widgets as static pictures, no CDN scripts.

nbconvert's ``lab`` template leaves formulas as TeX for MathJax and loads MathJax, require.js and
the widget renderer from CDNs; offline a reader sees TeX source and no widget. Before export,
:func:`prepare` takes a copy of the notebook and

- replaces every formula of a markdown cell (``$...$``, ``$$...$$``, ``\\begin{equation}...``; code
  spans and fenced code left alone) by a placeholder; :func:`finish` puts MathML in its place
  (converted at export time by ``latex2mathml``; browsers render MathML natively, Chromium since
  version 109, Firefox and Safari for longer). A formula it cannot convert stays as its TeX source
  in a ``<code class="feds-tex">``, and is counted;
- replaces each widget output by a static picture built from the widget state the notebook saved
  (boxes as flex rows and columns, HTML as it was, images from their saved bytes, dropdowns and
  sliders at their values, disabled), marked ``feds-widget-static``; the interactive widget needs
  a live kernel anyway (``make lab``). The saved state itself is dropped from the copy, so the
  template adds no CDN loader for it.

:func:`finish` also removes the template's MathJax and require.js ``<script>`` tags.
"""

from __future__ import annotations

import copy
import re
from html import escape

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
STATIC_CLASS = "feds-widget-static"
TEX_CLASS = "feds-tex"

# code first (left as it is), then display math, then inline math: $x$ but not \$ or $ 5 and $10
_MATH = re.compile(
    r"(?P<code>```.*?```|~~~.*?~~~|`[^`\n]*`)"
    r"|\$\$(?P<display>.+?)\$\$"
    r"|(?P<env>\\begin\{(?P<envname>equation|align|gather|multline)\*?\}.*?\\end\{(?P=envname)\*?\})"
    r"|(?<![\\$\w])\$(?![\s$])(?P<inline>[^$\n]+?)(?<![\s\\])\$(?!\w)",
    re.S,
)
_TOKEN = "FEDSMATH{:05d}X"


class Formulas:
    """Placeholders and the MathML (or fallback) each one becomes."""

    def __init__(self):
        self.html: list[str] = []
        self.failed: list[str] = []

    def add(self, tex: str, display: bool) -> str:
        from latex2mathml.converter import convert

        try:
            html = convert(tex.strip(), display="block" if display else "inline")
        except Exception:  # latex2mathml raises its own exceptions for unsupported commands
            self.failed.append(tex)
            html = f'<code class="{TEX_CLASS}">{escape(tex)}</code>'
        self.html.append(html)
        return _TOKEN.format(len(self.html) - 1)

    def substitute(self, markdown: str) -> str:
        def repl(m: re.Match) -> str:
            if m.group("code"):
                return m.group("code")
            if m.group("display") is not None:
                return self.add(m.group("display"), True)
            if m.group("env") is not None:
                return self.add(m.group("env"), True)
            return self.add(m.group("inline"), False)

        return _MATH.sub(repl, markdown)

    def restore(self, html: str) -> str:
        def repl(m: re.Match) -> str:
            i = int(m.group(1))
            return self.html[i] if i < len(self.html) else m.group(0)

        html = re.sub(r"<p>\s*FEDSMATH(\d{5})X\s*</p>", repl, html)  # display math alone in its paragraph
        return re.sub(r"FEDSMATH(\d{5})X", repl, html)


# --- widgets ---------------------------------------------------------------------------------------

def _buffers(entry: dict) -> dict[str, str]:
    out = {}
    for b in entry.get("buffers") or []:
        if b.get("encoding") == "base64" and b.get("path"):
            out[".".join(str(p) for p in b["path"])] = b.get("data", "")
    return out


def _ref(value) -> str | None:
    return value[len("IPY_MODEL_"):] if isinstance(value, str) and value.startswith("IPY_MODEL_") else None


def render_widget(model_id: str, states: dict, depth: int = 0) -> str:
    """Static HTML of one widget (and its children) from saved widget state."""
    entry = states.get(model_id)
    if entry is None or depth > 20:
        return '<span class="missing">[widget state not saved]</span>'
    name = entry.get("model_name", "")
    st = entry.get("state") or {}
    classes = " ".join(escape(c) for c in st.get("_dom_classes") or [])
    desc = st.get("description") or ""
    label = f"<label>{escape(desc)}</label> " if desc else ""
    if name in ("VBoxModel", "BoxModel", "HBoxModel", "GridBoxModel", "AccordionModel", "TabModel"):
        direction = "row" if name == "HBoxModel" else "column"
        kids = "".join(render_widget(_ref(c) or "", states, depth + 1) for c in st.get("children") or [])
        return (f'<div class="{classes}" style="display:flex;flex-direction:{direction};gap:8px;'
                f'align-items:flex-start">{kids}</div>')
    if name in ("HTMLModel", "HTMLMathModel"):
        return f'<div class="{classes}">{label}{st.get("value", "")}</div>'
    if name in ("LabelModel", "TextModel", "TextareaModel"):
        return f'<div class="{classes}">{label}{escape(str(st.get("value", "")))}</div>'
    if name == "ImageModel":
        data = _buffers(entry).get("value")
        if not data:
            return f'<div class="{classes} missing">[image not saved]</div>'
        fmt = escape(st.get("format") or "png")
        size = "".join(f' {k}="{escape(str(st[k]))}"' for k in ("width", "height") if st.get(k))
        return f'<img class="{classes}" src="data:image/{fmt};base64,{data}"{size} alt="{escape(desc or "image")}">'
    if name in ("DropdownModel", "SelectModel", "RadioButtonsModel", "ToggleButtonsModel"):
        labels = st.get("_options_labels") or []
        index = st.get("index")
        chosen = labels[index] if isinstance(index, int) and 0 <= index < len(labels) else ""
        options = "".join(f"<option{' selected' if i == index else ''}>{escape(str(o))}</option>"
                          for i, o in enumerate(labels))
        return f'<div class="{classes}">{label}<select disabled title="{escape(str(chosen))}">{options}</select></div>'
    if name in ("IntSliderModel", "FloatSliderModel"):
        v, lo, hi = st.get("value"), st.get("min"), st.get("max")
        return (f'<div class="{classes}">{label}<input type="range" disabled min="{lo}" max="{hi}" value="{v}"> '
                f'<span>{escape(str(v))}</span></div>')
    if name in ("CheckboxModel", "ToggleButtonModel"):
        return f'<div class="{classes}">{label}<input type="checkbox" disabled{" checked" if st.get("value") else ""}></div>'
    if name in ("ButtonModel",):
        return f'<button class="{classes}" disabled>{escape(desc)}</button>'
    if name == "OutputModel":
        return f'<div class="{classes} missing">[output widget: shown in JupyterLab]</div>'
    return f'<span class="missing">[{escape(name or "widget")}]</span>'


def static_widget(view: dict, states: dict) -> str:
    model_id = view.get("model_id", "") if isinstance(view, dict) else ""
    return (f'<div class="{STATIC_CLASS}" style="border:1px dashed #bbb;padding:8px">'
            f'<p class="note" style="margin:0 0 6px;font-size:12px;color:#666">A static picture of this widget as the '
            f'notebook left it; it is interactive in JupyterLab (<code>make lab</code>).</p>'
            f'{render_widget(model_id, states)}</div>')


# --- the notebook ----------------------------------------------------------------------------------

def prepare(nb) -> tuple[object, Formulas]:
    """A copy of ``nb`` ready for export offline, and the formulas :func:`finish` puts back."""
    nb = copy.deepcopy(nb)
    formulas = Formulas()
    states = ((nb.get("metadata", {}).get("widgets") or {}).get(WIDGET_STATE) or {}).get("state") or {}
    for cell in nb.cells:
        if cell.get("cell_type") == "markdown":
            cell.source = formulas.substitute(cell.source)
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            data = out.get("data")
            if data and WIDGET_VIEW in data:
                out["data"] = {"text/html": static_widget(data[WIDGET_VIEW], states)}
    nb.get("metadata", {}).pop("widgets", None)
    return nb, formulas


_MATHJAX_BLOCK = re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.S)
_REMOTE_SCRIPT = re.compile(r'<script[^>]*\ssrc="(?:https?:)?//[^"]*"[^>]*>\s*</script>\s*', re.I)


def finish(html: str, formulas: Formulas) -> str:
    """The exported page with its formulas as MathML and no script from the network."""
    html = _MATHJAX_BLOCK.sub("", html)
    html = _REMOTE_SCRIPT.sub("", html)
    return formulas.restore(html)
