"""``.npy`` members whose header is damaged or declares more than they hold (audit h134): refused as
an unreadable ``.npy`` (``UnsafeTarError``, a ``ValueError``: one line naming the member), never
numpy's own error (a ``TokenError``, or a ``MemoryError`` for a 7 TiB array a 100-byte member
declares), which `ferdata verify` and `ferdata show` ended on with a traceback."""
from __future__ import annotations

import numpy as np
import pytest

from ferdata.tario import UnsafeTarError, load_npy, npy_bytes


def _header(fields: dict) -> bytes:
    text = repr(fields).encode()
    text += b" " * ((64 - (10 + len(text) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


@pytest.mark.parametrize("data, says", [
    (b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage\n", "unreadable .npy header"),
    (_header({"descr": "<f8", "fortran_order": False, "shape": (10 ** 12,)}) + bytes(16),
     r"declares a float64 array of shape \(1000000000000,\) \(8000000000000 bytes\), holds 16"),
    (_header({"descr": "<f4", "fortran_order": False, "shape": (68, 2)}) + bytes(100),
     r"declares a float32 array of shape \(68, 2\) \(544 bytes\), holds 100")],
    ids=["tokenize-error", "seven-tebibytes", "cut-short"])
def test_a_damaged_or_overstated_npy_is_refused_naming_the_member(data, says):
    with pytest.raises(UnsafeTarError, match=r"^k\.lmk\.npy: " + says):
        load_npy(data, "k.lmk.npy")


def test_the_npy_the_stages_write_still_loads():
    lmk = np.arange(136, dtype=np.float32).reshape(68, 2)
    np.testing.assert_array_equal(load_npy(npy_bytes(lmk), "k.lmk.npy"), lmk)
    assert load_npy(npy_bytes(np.zeros((0, 2), np.float32))).shape == (0, 2)


@pytest.mark.parametrize("shape", [(-1, 2), (-2,), (2, -68), (-1, -1)])
def test_a_negative_dimension_is_refused_as_np_load_refuses_it(shape):
    """np.load refused a header declaring a negative dimension ("negative dimensions are not allowed"); read
    by hand, (-1, 2) gave a (68, 2) array from any 136 floats, (-2,) a (136,) one, (-1, -1) numpy's bare error."""
    data = _header({"descr": "<f4", "fortran_order": False, "shape": shape}) + bytes(544)
    with pytest.raises(UnsafeTarError, match=r"^k\.lmk\.npy: .*negative"):
        load_npy(data, "k.lmk.npy")
