"""Suite-wide test policy: no network (an accidental download must fail loudly)."""
from __future__ import annotations

import os
import socket

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
def _dvc_site_cache(tmp_path_factory):
    """DVC keeps each repository's state (hashes, links) in its site cache, /var/tmp/dvc/repo/<token>,
    a new folder for every repository it opens: outside $TMPDIR, never removed. The suite's clones and
    `dvc init` folders keep theirs under pytest's temporary folder (subprocesses inherit it)."""
    before = os.environ.get("DVC_SITE_CACHE_DIR")
    os.environ["DVC_SITE_CACHE_DIR"] = str(tmp_path_factory.mktemp("dvc-site-cache"))
    yield
    if before is None:
        os.environ.pop("DVC_SITE_CACHE_DIR", None)
    else:
        os.environ["DVC_SITE_CACHE_DIR"] = before


@pytest.fixture
def one_thread():
    """Single-threaded torch: bit-exact CPU kernels across the processes compared, and no
    thread hand-offs dominating tiny models on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
