"""Driving JupyterLab in a real browser: Debian's Chromium through Playwright, on a closed network.

Nothing here downloads anything: the browser is ``/usr/bin/chromium`` from Debian's ``chromium``
package (``.ci/run`` installs it; never ``playwright install``), JupyterLab's announcement, news and
update checks are off, and every wait has a bound. Servers and browsers are stopped whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path(os.environ.get("FEDS_LAB_CHROMIUM", "/usr/bin/chromium"))
# root needs --no-sandbox; without the background-networking flags Chromium's own connections
# (component updates, sync, field trials) are refused on this closed network and slow it down
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
KERNEL_NAME = "feds-lab"
KERNEL_DISPLAY_NAME = "feds-lab (.venv)"
SCREENSHOT_ENV = "FEDS_LAB_SCREENSHOTS"


def require_chromium() -> Path:
    """Fail (not skip) with what to do when the browser is missing: a silent skip hides a broken CI."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}. Install Debian's packages: "
            "`apt-get install -y chromium chromium-driver` (.ci/run does this before `make test`), "
            "or point FEDS_LAB_CHROMIUM at a Chromium binary. Never `playwright install` (no network here).",
            pytrace=False,
        )
    return CHROMIUM


def artifacts_dir(test_name: str) -> Path:
    """Where a test's screenshots go: $FEDS_LAB_SCREENSHOTS, or tests/artifacts/<test> (ignored by git)."""
    base = Path(os.environ[SCREENSHOT_ENV]) if os.environ.get(SCREENSHOT_ENV) else REPO / "tests" / "artifacts"
    out = base / test_name
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):  # only this test's screenshots of an earlier run
        old.unlink()
    return out


def ensure_project_kernel() -> None:
    """Register this environment as the ``feds-lab`` kernel (what ``make setup`` does) if it is not."""
    spec = Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json"
    try:
        argv = json.loads(spec.read_text())["argv"]
        if Path(argv[0]) == Path(sys.executable):
            return
    except (OSError, ValueError, KeyError, IndexError):
        pass
    subprocess.run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL_NAME,
                    "--display-name", KERNEL_DISPLAY_NAME], check=True, capture_output=True, timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a server we started and every process under it, by id (kernels run in their own sessions)."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server shuts its kernels down on SIGTERM
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    _, alive = psutil.wait_procs(descendants, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass


class JupyterLab:
    """A JupyterLab server on a free loopback port, isolated from the user's Jupyter config and data."""

    def __init__(self, root_dir: Path, work_dir: Path):
        self.root_dir = Path(root_dir)
        self.work_dir = Path(work_dir)
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.log_path = self.work_dir / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None

    def url(self, path: str = "lab") -> str:
        return f"http://127.0.0.1:{self.port}/{path}?token={self.token}"

    def _write_settings(self, settings: Path) -> None:
        # no news or update prompts; every cell attached to the page, so outputs can be found anywhere
        for plugin, values in (
            ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False}),
            ("notebook-extension/tracker", {"windowingMode": "none"}),
        ):
            f = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(values))

    def start(self, timeout: float = 60.0) -> None:
        w = self.work_dir
        settings = w / "lab-settings"
        self._write_settings(settings)
        env = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
        # an empty user data dir: kernelspecs come from this venv (sys-prefix), not from ~/.local
        env.update(JUPYTER_CONFIG_DIR=str(w / "config"), JUPYTER_DATA_DIR=str(w / "data"),
                   JUPYTER_RUNTIME_DIR=str(w / "runtime"), IPYTHONDIR=str(w / "ipython"), PYTHONUNBUFFERED="1")
        cmd = [
            sys.executable, "-m", "jupyterlab", "--no-browser",
            f"--IdentityProvider.token={self.token}", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
            "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={self.root_dir}", "--ServerApp.open_browser=False",
            "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly", f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={w / 'workspaces'}",
        ]
        if os.geteuid() == 0:  # CI containers run as root; the server refuses root without this
            cmd.append("--allow-root")
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, cwd=self.root_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with status {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with opener.open(self.url("api/status"), timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None:
            _kill_tree(self.proc)
            self.proc = None


@contextmanager
def jupyterlab(root_dir: Path, work_dir: Path):
    lab = JupyterLab(root_dir, work_dir)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


@contextmanager
def chromium_page(user_data_dir: Path, viewport=(1400, 950), default_timeout_ms: int = 30_000):
    """A headless Chromium page (fresh profile); the browser and Playwright's driver stop on exit."""
    from playwright.sync_api import sync_playwright

    require_chromium()
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": viewport[0], "height": viewport[1]}, timeout=60_000,
        )
        try:
            context.set_default_timeout(default_timeout_ms)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()


class Steps:
    """Named steps with a screenshot after each; a failure names its step and keeps that moment's screenshot."""

    def __init__(self, page, folder: Path):
        self.page = page
        self.folder = Path(folder)
        self.n = 0
        self.shots: dict[str, Path] = {}
        self.seconds: dict[str, float] = {}

    def screenshot(self, label: str) -> Path | None:
        path = self.folder / f"{self.n:02d}-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}.png"
        try:
            self.page.screenshot(path=str(path), timeout=15_000)
        except Exception:  # a screenshot must never hide the error it documents
            return None
        return path

    @contextmanager
    def step(self, name: str):
        self.n += 1
        t0 = time.monotonic()
        try:
            yield
        except Exception as e:
            shot = self.screenshot(f"{name} FAILED")
            raise AssertionError(f"step {self.n} ({name}) failed: {type(e).__name__}: {e}\n"
                                 f"screenshot: {shot or '(none could be taken)'}") from e
        self.seconds[name] = time.monotonic() - t0
        print(f"[browser] step {self.n} ({name}): {self.seconds[name]:.1f} s")  # shown by pytest -rP or on failure
        shot = self.screenshot(name)
        if shot:
            self.shots[name] = shot


def wait_until(page, probe, what: str, timeout: float, interval_ms: int = 250):
    """Poll ``probe()`` until it returns something truthy; raise naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout:.0f} s (last seen: {last!r})")
        page.wait_for_timeout(interval_ms)


# Bytes behind an <img> (a blob: or data: URL), as a SHA-256 hex digest: "did the picture change?"
IMAGE_DIGEST_JS = """async (sel) => {
  const img = document.querySelector(sel);
  if (!img || !img.src) return null;
  const buf = await (await fetch(img.src)).arrayBuffer();
  if (!buf.byteLength) return null;
  const d = await crypto.subtle.digest('SHA-256', buf);
  return Array.from(new Uint8Array(d)).map(b => b.toString(16).padStart(2, '0')).join('');
}"""

# The last lines of the first error traceback shown in any output area, or null.
NOTEBOOK_ERROR_JS = """() => {
  for (const out of document.querySelectorAll('.jp-OutputArea-output')) {
    const text = out.innerText || '';
    if (text.includes('Traceback (most recent call last)')) {
      const lines = text.split('\\n').map(l => l.trim()).filter(l => l);
      const cell = out.closest('.jp-CodeCell');
      const prompt = cell && cell.querySelector('.jp-InputPrompt');
      return (prompt ? prompt.innerText.trim() + ' ' : '') + lines.slice(-3).join(' | ');
    }
  }
  return null;
}"""


def copy_screenshot(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copyfile(src, dest))
