"""Thread defaults are an explicit call: ``import feds_lab`` changes nothing in the process, the
entry points (the ``feds-lab`` command, the pipeline's notebook kernels) call
``feds_lab.threads.configure()``, once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import feds_lab.threads as th

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "FEDS_LAB_THREADS", th.AUTO_MARK, th.WAIT_MARK)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in THREAD_VARS}


def test_importing_the_package_changes_no_environment_and_reads_no_load():
    code = (
        "import builtins, json, os\n"
        "before = dict(os.environ)\n"
        "opened = []\n"
        "real_open = builtins.open\n"
        "builtins.open = lambda f, *a, **k: (opened.append(str(f)), real_open(f, *a, **k))[1]\n"
        "import feds_lab, feds_lab.cli, feds_lab.threads, feds_lab.pipeline\n"
        "builtins.open = real_open\n"
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "print(json.dumps({'changed': changed, 'stat': [f for f in opened if f.startswith('/proc')],"
        " 'configured': feds_lab.threads._configured}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_clean_env())
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"changed": [], "stat": [], "configured": None}


@pytest.fixture
def counted(monkeypatch):
    """configure_threads replaced by a counter; configure() not yet called in this 'process'."""
    calls = []
    monkeypatch.setattr(th, "configure_threads", lambda *a, **k: calls.append(a) or 3)
    monkeypatch.setattr(th, "_configured", None)
    return calls


def test_configure_chooses_once_per_process_unless_forced(counted):
    assert th.configure() == 3 and th.configure() == 3
    assert len(counted) == 1
    assert th.configure(force=True) == 3 and len(counted) == 2


def test_the_command_configures_threads_before_it_runs(counted, capsys):
    from feds_lab.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert len(counted) == 1
    assert "feds-lab" in capsys.readouterr().out


def test_the_command_sets_the_defaults_in_a_fresh_process():
    """Through ``python -m feds_lab.cli``, as a user runs it: the thread count chosen from the free
    cores lands in the environment, as ``import feds_lab`` used to do."""
    code = ("import os, sys\nfrom feds_lab.cli import main\n"
            "try:\n    main(['--version'])\nexcept SystemExit:\n    pass\n"
            f"print(os.environ.get('OMP_NUM_THREADS'), os.environ.get({th.AUTO_MARK!r}))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_clean_env())
    assert p.returncode == 0, p.stderr
    n, mark = p.stdout.strip().splitlines()[-1].split()
    assert n == mark and 1 <= int(n) <= len(th.allowed_cores())
    user = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**_clean_env(), "OMP_NUM_THREADS": "1"})
    assert user.stdout.strip().splitlines()[-1] == "1 None"  # the user's own setting stands


def test_a_notebook_kernel_configures_threads(counted, tmp_path):
    from feds_lab.pipeline import PipelineConfig

    PipelineConfig.for_notebook(tmp_path / "run")
    assert len(counted) == 1


def test_the_train_command_configures_threads(counted, capsys):
    from feds_lab.training.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert len(counted) == 1
