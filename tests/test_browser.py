"""JupyterLab and the run report in a real browser (headless Chromium from Debian, via Playwright).

The explorer test is what a newcomer does: open notebook 02 in JupyterLab with the project's kernel,
Run All, then move the channel slider and pick another image, and see the explorer follow.
Screenshots of every step go to tests/artifacts/<test>/ (or $FEDS_LAB_SCREENSHOTS/<test>/);
with FEDS_LAB_UPDATE_README_SCREENSHOT=1 the final one is copied to figures/ for the README.
"""

from __future__ import annotations

import os
import re
import time

import nbformat
import pytest

from browser_helpers import (
    IMAGE_DIGEST_JS, KERNEL_DISPLAY_NAME, NOTEBOOK_ERROR_JS, REPO, Steps, artifacts_dir, chromium_page,
    copy_screenshot, ensure_project_kernel, jupyterlab, require_chromium, wait_until,
)

pytestmark = pytest.mark.slow

NOTEBOOK = "02_channel_entropy"
# a token budget (the test trains this teacher before the browser opens; the notebook then finds it
# finished): 10 steps, no validation passes, 3 small images (see _small_images), one thread (two
# threads on two shared cores can be ten times slower than one)
PARAMETERS = {"teacher": "train", "teacher_steps": 10, "entropy_images": 3, "warm_start_ladder": False, "train": {"crop": 64, "val_every": 0, "threads": 1, "progress": False}}
README_SCREENSHOT = REPO / "figures" / "jupyterlab_channel_explorer.png"
# FEDS_LAB_UPDATE_README_SCREENSHOT=1: the tiny preset's own teacher (300 steps, as `make pipeline`
# trains it; a few minutes), so the picture shows images rather than noise, copied to figures/
README_MODE = os.environ.get("FEDS_LAB_UPDATE_README_SCREENSHOT") == "1"
README_PARAMETERS = {"entropy_images": 3, "warm_start_ladder": False, "train": {"threads": 1, "progress": False}}

EXPLORER = ".feds-channel-explorer"
ENTROPY = f"{EXPLORER} .feds-info .feds-entropy"
INFO = f"{EXPLORER} .feds-info"
LATENT = f"{EXPLORER} img.feds-latent"
RECON = f"{EXPLORER} img.feds-recon"
RECON_WITHOUT = f"{EXPLORER} img.feds-recon-without"


def _expected_views(params: dict):
    """Train the notebook's teacher exactly as the notebook does, and what the explorer will show.

    Returns the explorer's latent views (same model, same images), computed here so the test can
    pick a channel and an image whose numbers must differ, and check the page shows those numbers.
    """
    from feds_lab.analysis import latent_view
    from feds_lab.checkpoint import load_model
    from feds_lab.data import eval_images
    from feds_lab.pipeline import PipelineConfig
    from feds_lab.training import train

    cfg = PipelineConfig.for_notebook(params["run_dir"], params["overrides"])
    lmbda = cfg.lambdas[len(cfg.lambdas) // 2]
    teacher = load_model(train(cfg.train_config("teacher", lmbda)))
    images = eval_images(cfg.data, "all")[: cfg.entropy_images][:4]  # the notebook's; the explorer takes four
    return [latent_view(teacher, name, x) for name, x in images]


def _small_images(folder) -> str:
    """Three of the built-in photographs, 128 px wide: training and every cell then take seconds."""
    import importlib.resources

    from PIL import Image

    from feds_lab.data import BUILTIN_FILES

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "chelsea", "coffee"):
        with Image.open(importlib.resources.files("skimage.data") / BUILTIN_FILES[name]) as im:
            im = im.convert("RGB")
            im.resize((128, round(128 * im.height / im.width)), Image.LANCZOS).save(folder / f"{name}.png")
    return str(folder)


def _prepare_notebook(dest_dir, params: dict):
    """A copy of the committed notebook with the test's parameters injected (papermill's way)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(REPO / "notebooks" / f"{NOTEBOOK}.ipynb"))
    assert nb.metadata.kernelspec.name == "feds-lab", "the notebooks must name the project's kernel"
    nb = parameterize_notebook(nb, params)
    path = dest_dir / f"{NOTEBOOK}.ipynb"
    nbformat.write(nb, path)
    return path


def _entropy(page) -> float | None:
    m = re.search(r"H = ([0-9.]+) bits", page.locator(ENTROPY).inner_text(timeout=5_000))
    return float(m.group(1)) if m else None


def _shown(page) -> dict:
    return {
        "entropy": _entropy(page), "info": page.locator(INFO).inner_text(timeout=5_000),
        "latent_src": page.locator(LATENT).get_attribute("src", timeout=5_000),
        "latent": page.evaluate(IMAGE_DIGEST_JS, LATENT), "recon": page.evaluate(IMAGE_DIGEST_JS, RECON),
        "recon_without": page.evaluate(IMAGE_DIGEST_JS, RECON_WITHOUT),
    }


# a backstop over the bounded waits (pytest-timeout): the finally blocks still stop server and browser
@pytest.mark.timeout(900 if README_MODE else 420)
def test_channel_explorer_in_jupyterlab(tmp_path, request):
    require_chromium()
    ensure_project_kernel()
    shots = artifacts_dir(request.node.name)
    lab_root = tmp_path / "lab"
    lab_root.mkdir()
    if README_MODE:
        params = {"run_dir": str(tmp_path / "run"), "overrides": README_PARAMETERS}
    else:
        params = {"run_dir": str(tmp_path / "run"),
                  "overrides": {**PARAMETERS, "data": _small_images(tmp_path / "images")}}

    t0 = time.monotonic()
    views = _expected_views(params)
    print(f"[browser] teacher trained and explorer views computed in-process: {time.monotonic() - t0:.1f} s")
    assert len(views) >= 2, "the explorer test needs two images"
    first = views[0]
    # the most informative channel (the least, if that is channel 0): its entropy reads differently
    # from channel 0's, and removing it shows in the picture
    channel = int(first.entropy.argmax()) or int(first.entropy.argmin())
    assert abs(float(first.entropy[channel]) - float(first.entropy[0])) > 0.01, \
        "every channel of the test teacher has the same entropy"
    other = views[1]
    _prepare_notebook(lab_root, params)

    with jupyterlab(lab_root, tmp_path / "jupyter") as lab, chromium_page(tmp_path / "chromium") as page:
        steps = Steps(page, shots)
        with steps.step("open notebook"):
            page.goto(lab.url(f"lab/tree/{NOTEBOOK}.ipynb"), timeout=60_000)
            page.locator(".jp-NotebookPanel .jp-Notebook").first.wait_for(state="visible", timeout=60_000)
            kernel = page.locator(".jp-NotebookPanel-toolbar .jp-Toolbar-kernelName").first
            wait_until(page, lambda: KERNEL_DISPLAY_NAME in kernel.inner_text(), f"kernel '{KERNEL_DISPLAY_NAME}'", 60)
            idle = ".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status='idle']"
            page.locator(idle).first.wait_for(state="attached", timeout=60_000)

        with steps.step("run all cells"):
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()

        with steps.step("explorer appears"):
            def explorer_or_error():
                error = page.evaluate(NOTEBOOK_ERROR_JS)
                if error:
                    raise AssertionError(f"the notebook failed: {error}")
                return page.locator(f"{EXPLORER} .feds-entropy").count() > 0 and page.evaluate(IMAGE_DIGEST_JS, LATENT)

            wait_until(page, explorer_or_error, "channel explorer", timeout=240)
            page.locator(EXPLORER).scroll_into_view_if_needed(timeout=10_000)
            before = _shown(page)
            assert before["entropy"] == pytest.approx(float(first.entropy[0]), abs=2e-3), before["info"]
            assert f"image {first.name}" in before["info"] and "channel 0 " in before["info"], before["info"]
            assert before["recon"] and before["recon_without"], "the explorer shows no reconstruction"

        with steps.step(f"channel {channel}"):
            readout = page.locator(f"{EXPLORER} .widget-readout").first
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type(str(channel))
            page.keyboard.press("Enter")
            wait_until(page, lambda: f"channel {channel} " in page.locator(INFO).inner_text(), f"channel {channel} shown", 30)
            wait_until(page, lambda: page.evaluate(IMAGE_DIGEST_JS, LATENT) != before["latent"], "new latent map", 30)
            page.wait_for_timeout(300)  # the three images arrive as separate messages
            after_channel = _shown(page)
            assert after_channel["entropy"] != before["entropy"], "entropy text did not change"
            assert after_channel["entropy"] == pytest.approx(float(first.entropy[channel]), abs=2e-3)
            assert after_channel["latent_src"] != before["latent_src"], "latent map src did not change"
            assert after_channel["recon_without"] != before["recon_without"], "'without this channel' did not change"
            assert after_channel["recon"] == before["recon"], "the reconstruction does not depend on the channel"

        with steps.step(f"image {other.name}"):
            page.locator(f"{EXPLORER} select").first.select_option(label=other.name)
            wait_until(page, lambda: f"image {other.name}" in page.locator(INFO).inner_text(), f"image {other.name}", 30)
            wait_until(page, lambda: page.evaluate(IMAGE_DIGEST_JS, RECON) != after_channel["recon"], "new reconstruction", 30)
            page.wait_for_timeout(300)
            after_image = _shown(page)
            assert after_image["entropy"] == pytest.approx(float(other.entropy[channel]), abs=2e-3)
            assert f"channel {channel} " in after_image["info"], "the channel changed with the image"
            assert after_image["latent"] != after_channel["latent"], "latent map did not change with the image"
            assert after_image["recon"] != after_channel["recon"], "reconstruction did not change with the image"

        if README_MODE:
            with steps.step("readme screenshot"):
                # the file browser folded away, the cell's code above its output
                page.set_viewport_size({"width": 1300, "height": 640})
                page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").first.click()
                cell = page.locator(".jp-CodeCell", has=page.locator(EXPLORER)).first
                cell.locator(".jp-InputArea").scroll_into_view_if_needed(timeout=5_000)
                cell.evaluate("c => c.scrollIntoView({block: 'start'})")
                page.wait_for_timeout(500)
            copy_screenshot(steps.shots["readme screenshot"], README_SCREENSHOT)


def test_report_code_toggle_in_browser(tmp_path, request):
    """The report's "Hide code" button works from file://, with no server and no network."""
    from test_report import _notebook, _png_bytes

    from feds_lab.report import write_report

    require_chromium()
    root = tmp_path / "run"
    (root / "notebooks").mkdir(parents=True)
    nbformat.write(_notebook("01 teacher", _png_bytes("red")), root / "notebooks" / "01_teacher_training.ipynb")
    index = write_report(root)

    with chromium_page(tmp_path / "chromium", viewport=(1000, 700)) as page:
        steps = Steps(page, artifacts_dir(request.node.name))
        code = page.locator(".jp-CodeCell .jp-Cell-inputWrapper").first
        with steps.step("open report"):
            page.goto(index.as_uri(), timeout=15_000)
            page.locator("a[href='01_teacher_training.html']").click()
            code.wait_for(state="visible", timeout=10_000)
            assert page.locator("img[src^='data:image/png']").count() == 1
        with steps.step("hide code"):
            page.locator("#feds-code-toggle").click()
            code.wait_for(state="hidden", timeout=5_000)
            assert page.locator("#feds-code-toggle").inner_text() == "Show code"
            assert page.locator(".jp-MarkdownCell").first.is_visible(), "markdown must stay visible"
            assert page.locator("img[src^='data:image/png']").first.is_visible(), "outputs must stay visible"
        with steps.step("show code"):
            page.locator("#feds-code-toggle").click()
            code.wait_for(state="visible", timeout=5_000)
            assert page.locator("#feds-code-toggle").inner_text() == "Hide code"
