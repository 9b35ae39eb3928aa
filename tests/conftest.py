import os

import pytest

from feds_lab.threads import configure

# the thread defaults the feds-lab command sets (import feds_lab sets none), before torch loads
configure()

import torch  # noqa: E402

# quiet, reproducible test runs; no test may reach a hub
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture
def one_thread():
    """One torch thread: on a shared two-core machine, two threads per process can run 100x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Untrained tiny teacher and student, updated and saved: enough to test coding paths."""
    from feds_lab import build_model
    from feds_lab.checkpoint import save_model

    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for role in ("teacher", "student"):
        torch.manual_seed(0)
        m = build_model(role, preset="tiny")
        paths[role] = save_model(m, root / f"{role}.safetensors", {"lmbda": 0.0067})
    return paths
