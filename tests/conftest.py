"""Suite-wide test policy: no network (an accidental download must fail loudly)."""
from __future__ import annotations

import os
import socket
import sys

import pytest

_real_connect = socket.socket.connect


def _guarded_connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")) or \
            self.family == socket.AF_UNIX:
        return _real_connect(self, address)
    raise OSError(f"network access blocked in tests (tried {address!r})")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _tool_caches(tmp_path_factory):
    """Caches the tools keep outside $TMPDIR's test folders, never removed, kept under pytest's temporary
    folder instead (subprocesses inherit the variables): DVC's site cache, /var/tmp/dvc/repo/<token>, a new
    folder for every repository it opens (the suite's clones and `dvc init` folders); torch's compile
    cache, $TMPDIR/torchinductor_<user> (164 MB after the slow compile tests)."""
    names = {"DVC_SITE_CACHE_DIR": "dvc-site-cache", "TORCHINDUCTOR_CACHE_DIR": "torchinductor"}
    before = {var: os.environ.get(var) for var in names}
    for var, folder in names.items():
        os.environ[var] = str(tmp_path_factory.mktemp(folder))
    yield
    for var, value in before.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value


@pytest.fixture
def one_thread():
    """Single-threaded torch: bit-exact CPU kernels across the processes compared, and no
    thread hand-offs dominating tiny models on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """torch's thread count is the process's: a test that sets it and does not set it back runs every
    later test of the session on that count (masking what the default would do). Use ``one_thread``."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    if before is not None and torch.get_num_threads() != before:
        after = torch.get_num_threads()
        torch.set_num_threads(before)
        pytest.fail(f"the test left torch.set_num_threads({after}) (it was {before}): use the one_thread fixture")
