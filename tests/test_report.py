"""The run report: standalone HTML pages that hold what they claim, and say what is missing."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import nbformat
import pytest
import yaml
from bs4 import BeautifulSoup
from PIL import Image

from feds_lab.pipeline import KEY_FIGURES
from feds_lab.report import HIDDEN_CLASS, TOGGLE_ID, write_report


def _png_bytes(color, size=(24, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _notebook(title: str, png: bytes | None, error: bool = False) -> nbformat.NotebookNode:
    """A small executed notebook with hand-made outputs: text, a table, an image, maybe an error."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "feds-lab", "display_name": "feds-lab (.venv)", "language": "python"}
    code = nbformat.v4.new_code_cell("print('secret_code_marker')", execution_count=1)
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello <from> stdout\n")]
    cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nThe rate $R = -\\log_2 p(\\hat y)$ in bits.\n"), code]
    if png is not None:
        fig = nbformat.v4.new_code_cell("fig", execution_count=2)
        fig.outputs = [nbformat.v4.new_output(
            "display_data", data={"image/png": base64.b64encode(png).decode(), "text/plain": "<Figure>"})]
        cells.append(fig)
    if error:
        bad = nbformat.v4.new_code_cell("1 / 0", execution_count=3)
        bad.outputs = [nbformat.v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                                              traceback=["ZeroDivisionError: division by zero"])]
        cells.append(bad)
    nb.cells = cells
    return nb


BD_ROWS = [
    ["test", "anchor", "metric", "bd_rate", "ci_low", "ci_high", "note"],
    ["feds", "scratch", "psnr", "-3.14159", "-6.2", "0.5", ""],
    ["feds", "jpeg", "psnr", "-21.5", "-25.0", "-18.0", ""],
    ["scratch", "jpeg <anchor>", "psnr", "", "", "", "fewer than four points"],
]


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as the pipeline leaves it after notebooks 01 and 02 (02 with an error) and part of 04."""
    root = tmp_path / "runs" / "demo"
    (root / "notebooks").mkdir(parents=True)
    nbformat.write(_notebook("01 teacher", _png_bytes("red")), root / "notebooks" / "01_teacher_training.ipynb")
    nbformat.write(_notebook("02 entropy", _png_bytes("blue"), error=True),
                   root / "notebooks" / "02_channel_entropy.ipynb")
    figures = root / "figures"
    figures.mkdir()
    (figures / KEY_FIGURES[0]).write_bytes(_png_bytes("green"))
    (figures / KEY_FIGURES[1]).write_bytes(_png_bytes("yellow"))
    (figures / "odd <name>.png").write_bytes(_png_bytes("black"))  # not a key figure, escaped in the page
    (figures / "notes.txt").write_text("not a figure")
    (root / "results").mkdir()
    with (root / "results" / "bd_rate.csv").open("w", newline="") as f:
        csv.writer(f).writerows(BD_ROWS)
    params = {"name": "demo", "preset": "tiny", "lambdas": [0.0035, 0.0067], "teacher_steps": 20,
              "data": "<script>alert(1)</script>"}
    (root / "pipeline.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "state.json").write_text(json.dumps({
        "01_teacher_training": {"digest": "x", "seconds": 12.5, "finished": "2025-01-01 10:00:00"},
        "03_distillation": {"digest": "y", "seconds": 30.0},  # its executed copy went missing
    }))
    return root


def _soup(path):
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def _png_imgs(soup):
    return [img for img in soup.find_all("img") if img.get("src", "").startswith("data:image/png;base64,")]


def _table(soup, css_id):
    table = soup.find("table", id=css_id)
    assert table is not None, f"no table #{css_id}"
    return [[c.get_text() for c in tr.find_all(["th", "td"])] for tr in table.find_all("tr")]


def test_index_holds_figures_table_parameters_and_times(run_dir):
    index = write_report(run_dir)
    assert index == run_dir / "report" / "index.html"
    soup = _soup(index)

    # every PNG of figures/ is embedded, the key ones in their own section; all offline (data URIs)
    assert len(_png_imgs(soup)) == 3
    assert all(img["src"].startswith("data:") for img in soup.find_all("img"))
    key = soup.find(id="key-figures")
    assert [img["alt"] for img in _png_imgs(key)] == list(KEY_FIGURES[:2])
    assert "odd <name>.png" in soup.find(id="other-figures").get_text()
    assert "Not made yet" in soup.get_text() and KEY_FIGURES[-1] in soup.get_text()
    # the embedded bytes are the figure's bytes
    src = _png_imgs(key)[0]["src"].split(",", 1)[1]
    assert base64.b64decode(src) == (run_dir / "figures" / KEY_FIGURES[0]).read_bytes()

    # the BD-rate table: the CSV's header and rows, numbers shortened to four significant digits
    rows = _table(soup, "bd-rate")
    assert rows[0] == BD_ROWS[0]
    assert len(rows) == len(BD_ROWS)
    assert rows[1][:3] == ["feds", "scratch", "psnr"] and rows[1][3] == "-3.142"
    assert rows[3][1] == "jpeg <anchor>" and rows[3][-1] == "fewer than four points"

    # parameters, escaped: the page has no script at all
    params = dict(r for r in _table(soup, "parameters")[1:])
    assert params["preset"] == "tiny" and params["teacher_steps"] == "20"
    assert params["data"] == "<script>alert(1)</script>"
    assert soup.find("script") is None

    # notebooks: links for executed copies, times from state.json, a failure and the missing ones said
    nb_rows = {r[0]: r for r in _table(soup, "notebooks")[1:]}
    assert nb_rows["01_teacher_training"][1:3] == ["completed", "12.5"]
    assert nb_rows["02_channel_entropy"][1].startswith("failed: ZeroDivisionError")
    assert nb_rows["03_distillation"][1].endswith("executed copy is missing")
    assert nb_rows["04_rd_analysis"][1] == "not run"
    assert _table(soup, "notebooks")[-1][:3] == ["total", "", "42.5"]
    links = [a["href"] for a in soup.find_all("a")]
    assert links == ["01_teacher_training.html", "02_channel_entropy.html"]
    for href in links:
        assert (index.parent / href).is_file()


def test_notebook_pages_are_standalone_with_a_code_toggle(run_dir):
    write_report(run_dir)
    for name, color in (("01_teacher_training", "red"), ("02_channel_entropy", "blue")):
        page = run_dir / "report" / f"{name}.html"
        soup = _soup(page)
        imgs = _png_imgs(soup)
        assert len(imgs) == 1, f"{name}: expected the one image output, embedded"
        assert base64.b64decode(imgs[0]["src"].split(",", 1)[1]) == _png_bytes(color)
        assert "hello <from> stdout" in soup.get_text()  # outputs escaped, not parsed as tags
        # the toggle: a button, the CSS rule that hides code inputs, the script that flips the class
        button = soup.find("button", id=TOGGLE_ID)
        assert button is not None and button.get_text() == "Hide code"
        assert f"body.{HIDDEN_CLASS} .jp-CodeCell .jp-Cell-inputWrapper" in page.read_text()
        assert any(HIDDEN_CLASS in s.get_text() and TOGGLE_ID in s.get_text() for s in soup.find_all("script"))
        # code inputs sit where the rule finds them; the markdown (and its TeX) is outside code cells
        inputs = soup.select(".jp-CodeCell .jp-Cell-inputWrapper")
        assert inputs and "secret_code_marker" in inputs[0].get_text()
        assert soup.find("math") is not None and "log" in soup.find("math").get_text()  # MathML, no TeX
        assert soup.find("a", href="index.html") is not None


def test_missing_pieces_are_said_not_raised(tmp_path):
    root = tmp_path / "empty_run"
    root.mkdir()
    index = write_report(root)
    text = _soup(index).get_text()
    assert "No BD-rate table yet" in text
    assert "No pipeline.yaml" in text
    assert text.count("not run") == 4
    assert "Not made yet" in text
    assert not list((root / "report").glob("0*.html"))


def test_unreadable_pieces_do_not_stop_the_report(tmp_path):
    root = tmp_path / "broken_run"
    (root / "notebooks").mkdir(parents=True)
    (root / "notebooks" / "01_teacher_training.ipynb").write_text("{ not json")
    (root / "results").mkdir()
    (root / "results" / "bd_rate.csv").write_text("")
    (root / "state.json").write_text("[1, 2")
    (root / "pipeline.yaml").write_text("just a string")
    text = _soup(write_report(root)).get_text()
    assert "bd_rate.csv is empty" in text
    assert "just a string" in text
    assert text.count("not run") == 4  # the unreadable notebook is reported as not run, not a crash


# --- offline: formulas as MathML, widgets as static pictures, nothing from the network ---------------

def _widget_notebook() -> nbformat.NotebookNode:
    """A notebook with a real ipywidgets tree (its state saved as nbclient saves it) and formulas."""
    import ipywidgets as W
    from ipywidgets.embed import embed_data

    image = W.Image(value=_png_bytes("purple", (20, 10)), format="png")
    image.add_class("feds-latent")
    tree = W.VBox([W.HBox([W.Dropdown(options=["coffee", "rocket"], value="rocket", description="image"),
                           W.IntSlider(value=7, min=0, max=15, description="channel")]),
                   W.HTML("<span class='feds-entropy'>H = 1.234 bits/element</span>"), image])
    data = embed_data(views=[tree])
    nb = _notebook("widgets", None)
    nb.cells[0].source += ("\n$$H_c = -\\frac{1}{B\\,h\\,w}\\sum_{b,i} \\log_2 p_T(\\hat y_{b,c,i})$$\n\n"
                           "A code span `code $x$` stays code.\n")
    cell = nbformat.v4.new_code_cell("explorer.widget", execution_count=4)
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": data["view_specs"][0], "text/plain": "VBox(...)"})]
    nb.cells.append(cell)
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": data["manager_state"]}
    return nb


def test_notebook_pages_hold_mathml_and_static_widgets_and_no_remote_scripts(tmp_path):
    from feds_lab.report import notebook_html

    path = tmp_path / "w.ipynb"
    nbformat.write(_widget_notebook(), path)
    html = notebook_html(path)
    soup = BeautifulSoup(html, "html.parser")
    maths = soup.find_all("math")
    assert len(maths) == 2 and {m.get("display") for m in maths} == {"inline", "block"}
    assert maths[1].find("mfrac") is not None and "log" in maths[0].get_text()
    assert "$R" not in soup.get_text() and "\\log_2" not in soup.get_text()  # no TeX source left
    assert soup.find("code", string=re.compile("code")).get_text() == "code $x$"  # code spans left alone
    # nothing from the network: no script or stylesheet with a remote source, no MathJax, no widget loader
    for tag in soup.find_all(["script", "link", "img"]):
        src = tag.get("src") or tag.get("href") or ""
        assert not re.match(r"(https?:)?//", src), tag
    assert "mathjax" not in html.lower() and "unpkg.com" not in html and "embed-amd" not in html
    # the widget, as a static picture of its saved state
    static = soup.find(class_="feds-widget-static")
    assert static is not None
    assert static.find("select").find("option", selected=True).get_text() == "rocket"
    assert static.find("input", type="range")["value"] == "7"
    assert "H = 1.234 bits/element" in static.get_text()
    img = static.find("img", class_="feds-latent")
    assert base64.b64decode(img["src"].split(",", 1)[1]) == _png_bytes("purple", (20, 10))


@pytest.mark.slow  # drives a browser
def test_report_renders_math_in_chromium_with_the_network_off(run_dir):
    from browser_helpers import chromium_page

    nbformat.write(_widget_notebook(), run_dir / "notebooks" / "03_distillation.ipynb")
    index = write_report(run_dir)
    page_path = index.parent / "03_distillation.html"
    remote: list[str] = []
    with chromium_page(run_dir / "chromium-profile") as page:
        context = page.context
        context.set_offline(True)

        def route(r):
            if r.request.url.startswith(("file:", "data:")):
                r.continue_()
            else:
                remote.append(r.request.url)
                r.abort()

        context.route("**/*", route)
        page.goto(page_path.as_uri())
        page.wait_for_load_state("load")
        rendered = page.evaluate("""() => [...document.querySelectorAll('math')].map(m => {
            const r = m.getBoundingClientRect();
            return {display: m.getAttribute('display'), w: r.width, h: r.height,
                    fraction: !!m.querySelector('mfrac'), shown: getComputedStyle(m).display};
        })""")
        # typeset, not just parsed: a fraction's numerator sits above its denominator
        stacked = page.evaluate("""() => {
            const f = document.querySelector('math mfrac');
            if (!f || f.children.length < 2) return null;
            const num = f.children[0].getBoundingClientRect(), den = f.children[1].getBoundingClientRect();
            return {num_bottom: num.bottom, den_top: den.top, same_column: Math.abs(num.left - den.left) < num.width + den.width};
        }""")
        widget_img = page.evaluate("""() => {
            const img = document.querySelector('.feds-widget-static img.feds-latent');
            return img ? {w: img.naturalWidth, h: img.naturalHeight, complete: img.complete} : null;
        }""")
        page.goto(index.as_uri())
        index_ok = page.evaluate("() => document.querySelectorAll('#key-figures img').length")
    assert remote == [], f"the page asked the network for {remote}"
    assert [m["display"] for m in rendered] == ["inline", "block"], rendered  # the notebook's two formulas
    assert all(m["w"] > 0 and m["h"] > 0 and m["shown"] != "none" for m in rendered), rendered
    assert stacked and stacked["num_bottom"] <= stacked["den_top"] + 1 and stacked["same_column"], stacked
    assert widget_img == {"w": 20, "h": 10, "complete": True}
    assert index_ok == 2
