"""Rules written twice, tied so they cannot drift apart: PCNN's batched landmark boxes (torch) and the derive
stage's ``regions.json`` boxes (numpy); PCNN's region modes and the registry's."""
from __future__ import annotations

import numpy as np
import torch

from ferdata.regions import REGION_MODES, REGION_NAMES, landmark_regions
from fermodels.models.pcnn import landmark_boxes


def test_pcnns_landmark_boxes_are_the_derive_stages():
    rng = np.random.default_rng(0)
    for size in (112, 224):
        for _ in range(50):
            lmk = (rng.random((68, 2)) * size * 1.2 - size * 0.1).astype(np.float32)
            ours = landmark_boxes(torch.from_numpy(lmk)[None], size)[0].numpy()
            theirs = np.array([landmark_regions(lmk, size)[name] for name in REGION_NAMES])
            np.testing.assert_allclose(ours, theirs, atol=0.006)      # regions.json rounds to 0.01 px


def test_pcnn_takes_the_region_modes_the_registry_has():
    from fermodels import create_model

    for mode in REGION_MODES.names():
        assert create_model("pcnn", regions=mode).regions == mode
