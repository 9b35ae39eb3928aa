"""Several workers on one search through a database server, as a user with several machines meets it:
a real PostgreSQL server (Debian's package: initdb and pg_ctl) started for the test, and two
`feds-lab tune --storage postgresql://...` processes on one study, the second waiting for the first's
teachers and scratch ladder (`--wait`). Skipped, saying why, where no server can start here."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg", reason="psycopg is needed for postgresql:// storage (requirements.txt)")


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))  # Debian keeps them off PATH
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on a free local port; yields its URL, stops and removes it after."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server here (Debian: apt-get install postgresql); "
                    "tools/ensure_postgres.sh installs it for `make test`")
    # the server refuses to run as root: then it runs as Debian's `postgres` user
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root and no runuser to start PostgreSQL as another user")
        try:
            import pwd

            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="feds-pg-"))
    if as_user:
        os.chown(root, pw.pw_uid, pw.pw_gid)
    data, port = root / "data", _free_port()
    log = root / "server.log"
    try:
        subprocess.run(as_user + [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True, timeout=120)
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-l", str(log), "-o", opts, "-w", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start here: {e} {detail.decode(errors='replace')[-300:]}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _photos(folder: Path) -> Path:
    from tests.test_tune import _small_photos

    return _small_photos(folder)


@pytest.mark.slow
def test_two_workers_share_one_search_through_postgresql(tmp_path, postgres_url):
    import yaml

    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({
        "name": "pg", "runs_dir": str(tmp_path / "runs"), "teacher": "train", "teacher_steps": 2, "student_steps": 3,
        "lambdas": [0.0018, 0.0067, 0.025, 0.0483], "threads": 1, "data": str(_photos(tmp_path / "photos")),
        "train": {"train_split": "tune-train", "crop": 64, "batch_size": 2},
        "variants": {"feds": {}, "scratch": {"baseline": "scratch"}}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "feds_lab.cli", "tune", "--config", str(config), "--storage", postgres_url,
           "--trials", "3"]
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    with open(logs[0], "w") as l0, open(logs[1], "w") as l1:
        first = subprocess.Popen(cmd, stdout=l0, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        time.sleep(5)  # the first worker makes the study and trains the references; the second waits for them
        second = subprocess.Popen(cmd + ["--wait"], stdout=l1, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        codes = [p.wait(timeout=900) for p in (first, second)]
    texts = [p.read_text() for p in logs]
    assert codes == [0, 0], "\n---\n".join(t[-2000:] for t in texts)

    study = optuna.load_study(study_name="pg-feds", storage=postgres_url)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 3
    assert all(t.state != optuna.trial.TrialState.FAIL for t in finished)
    # the prior is queued once however many workers open the study
    assert sum(t.params.get("alpha") == pytest.approx(0.1) and t.params.get("beta") == pytest.approx(0.1)
               for t in finished) == 1
    # both workers ran trials of the one study, each its own
    ran = [{line.split()[2] for line in t.splitlines() if line.startswith("[tune] trial ")} for t in texts]
    assert ran[0] and ran[1], texts
    assert not (ran[0] & ran[1])
    assert "waiting for" in texts[1] or "scratch on tune-val" in texts[1]
