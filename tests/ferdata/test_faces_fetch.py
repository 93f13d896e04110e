"""Model downloads (ferdata.faces.fetch) against a local HTTP server: a whole body lands atomically,
a stalled server fails instead of hanging, a cut body or an error status leaves nothing behind, and
the insightface and face_alignment backends download through it into the places they look in."""
from __future__ import annotations

import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import ferdata.faces.fetch as fetch_mod
from ferdata.faces import MissingModelError
from ferdata.faces.fan import FAN_FILE, FanBackend
from ferdata.faces.fetch import fetch, unpack_zip
from ferdata.faces.insightface_backend import PACK_FILES, InsightFaceBackend

pytestmark = pytest.mark.usefixtures("offline")


class _Handler(BaseHTTPRequestHandler):
    """Routes: path -> bytes (served whole), ("cut", body, claimed length), ("stall", head bytes), or an int
    status."""

    def do_GET(self) -> None:
        route = self.server.routes.get(self.path, 404)
        if isinstance(route, int):
            self.send_error(route)
            return
        kind, body, length = ("whole", route, len(route)) if isinstance(route, bytes) else \
            (route[0], route[1], route[2] if route[0] == "cut" else 10 * len(route[1]))
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if kind == "stall":
            self.server.release.wait(10)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    """A local HTTP server; returns (routes dict to fill, base URL)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.release = {}, threading.Event()
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd.routes, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fetch_saves_the_whole_body(server, tmp_path):
    routes, base = server
    body = bytes(range(256)) * 9000                                   # several read chunks
    routes["/w.bin"] = body
    assert fetch(f"{base}/w.bin", tmp_path / "d" / "w.bin") == tmp_path / "d" / "w.bin"
    assert (tmp_path / "d" / "w.bin").read_bytes() == body
    assert _leftovers(tmp_path / "d") == ["w.bin"]


def test_a_stalled_server_is_a_timeout_not_a_hang_and_leaves_nothing(server, tmp_path):
    routes, base = server
    routes["/s.bin"] = ("stall", b"x" * 100)
    with pytest.raises(TimeoutError):
        fetch(f"{base}/s.bin", tmp_path / "s.bin", stall_s=0.3)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("route, error", [(("cut", b"y" * 10, 1000), "closed after 10 of 1000 bytes"),
                                          (404, "HTTP Error 404")])
def test_a_cut_body_or_an_error_status_leaves_nothing(server, tmp_path, route, error):
    routes, base = server
    routes["/c.bin"] = route
    with pytest.raises(OSError, match=error):
        fetch(f"{base}/c.bin", tmp_path / "c.bin")
    assert _leftovers(tmp_path) == []


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_unpack_adds_nothing_from_a_corrupt_archive(tmp_path):
    good = _zip({"a.onnx": b"A" * 5000, "b.onnx": b"B" * 5000})
    bad = bytearray(good)
    bad[bad.index(b"B" * 100) + 50] ^= 1                               # the second file fails its CRC check
    (tmp_path / "p.zip").write_bytes(bytes(bad))
    with pytest.raises(zipfile.BadZipFile):
        unpack_zip(tmp_path / "p.zip", tmp_path / "pack")
    assert _leftovers(tmp_path) == []                  # no pack folder, no half-made a.onnx, no bad zip kept
    (tmp_path / "p.zip").write_bytes(good)
    unpack_zip(tmp_path / "p.zip", tmp_path / "pack")
    assert _leftovers(tmp_path) == ["pack"] and (tmp_path / "pack" / "b.onnx").read_bytes() == b"B" * 5000


def test_unpacking_removes_what_a_killed_unpacking_left(tmp_path):
    """A kill midway left .<pack>.*.unpack (hundreds of MB) for good."""
    stale = tmp_path / ".p.abc123.unpack"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "a.onnx").write_bytes(b"A" * 100)
    (tmp_path / "p.zip").write_bytes(_zip({"a.onnx": b"A" * 5000}))
    unpack_zip(tmp_path / "p.zip", tmp_path / "pack")
    assert _leftovers(tmp_path) == ["pack"]


def test_insightface_downloads_its_pack_into_its_layout(server, tmp_path, monkeypatch):
    routes, base = server
    monkeypatch.setattr("ferdata.faces.insightface_backend.RELEASE_URL", base + "/{pack}.zip")
    names = PACK_FILES["buffalo_l"]
    routes["/buffalo_l.zip"] = _zip({names[t]: t.encode() * 100 for t in ("detection", "landmark_3d_68")})
    files = InsightFaceBackend(model_dir=tmp_path, allow_download=True).files()
    pack = tmp_path / "models" / "buffalo_l"
    assert files == {"detection": pack / names["detection"], "landmark_3d_68": pack / names["landmark_3d_68"]}
    assert files["detection"].read_bytes() == b"detection" * 100
    assert _leftovers(tmp_path / "models") == ["buffalo_l"]             # the zip is not kept


@pytest.mark.parametrize("route, error", [(b"not a zip", "BadZipFile"), (("stall", b"PK"), "timed out")])
def test_insightface_bad_or_stalled_download_is_the_clear_error(server, tmp_path, monkeypatch, route, error):
    routes, base = server
    monkeypatch.setattr("ferdata.faces.insightface_backend.RELEASE_URL", base + "/{pack}.zip")
    monkeypatch.setattr(fetch_mod, "STALL_S", 0.3)
    routes["/buffalo_l.zip"] = route
    with pytest.raises(MissingModelError, match=f"buffalo_l.zip failed .*{error}"):
        InsightFaceBackend(model_dir=tmp_path, allow_download=True).files()
    assert _leftovers(tmp_path / "models") in ([], ["buffalo_l.zip"])   # a readable zip stays for a look
    assert not (tmp_path / "models" / "buffalo_l").exists()


def test_fan_downloads_into_torch_hubs_folder_and_a_stall_fails(server, tmp_path, monkeypatch):
    routes, base = server
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(fetch_mod, "STALL_S", 0.3)
    routes[f"/{FAN_FILE}"] = ("stall", b"weights")
    with pytest.raises(MissingModelError, match=f"{FAN_FILE} failed .*timed out"):
        FanBackend(allow_download=True).resolve(f"{base}/{FAN_FILE}")
    checkpoints = tmp_path / "hub" / "checkpoints"
    assert _leftovers(checkpoints) == []
    routes[f"/{FAN_FILE}"] = b"weights" * 1000
    assert FanBackend(allow_download=True).resolve(f"{base}/{FAN_FILE}") == str(checkpoints / FAN_FILE)
    assert (checkpoints / FAN_FILE).read_bytes() == b"weights" * 1000
