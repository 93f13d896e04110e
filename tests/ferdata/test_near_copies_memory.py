"""The search for near copies within a val or test split (:meth:`ferdata.nearcopies.NearCopies.earlier`) held the
float64 DCT of the whole split's faces at once, with its squares: a 30k-face test split rose to ~360 MB, ~12 kB a face
(120k faces: 0.9 GB), where the pair products are bounded (``_CELLS``); a few thousand faces at a time (audit h144)."""
from __future__ import annotations

import numpy as np


def test_the_bounds_of_many_faces_take_less_memory_than_the_faces():
    import tracemalloc
    from ferdata.nearcopies import _DCT, _LOW, _bounds, _unit

    unit = _unit(np.random.default_rng(0).integers(0, 256, (40000, 256), dtype=np.uint8))
    tracemalloc.start()
    try:
        bounds = _bounds(unit)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    whole = unit[:1000].astype(np.float64) @ _DCT.T
    assert np.allclose(bounds[:1000, :_LOW], whole[:, :_LOW], atol=1e-6)
    assert np.allclose(bounds[:1000, _LOW], np.sqrt((whole[:, _LOW:] ** 2).sum(1)), atol=1e-6)
    assert peak < unit.nbytes                     # was 4x: a float64 copy, its DCT and the DCT's squares at once
