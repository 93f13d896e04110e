"""The libraries used from a notebook or a script of one's own: calling a function leaves the process's
settings (matplotlib's backend, ...) as the user had them, and wrong inputs are told in plain words."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.fermodels.helpers import REPO


def test_plot_confusion_leaves_the_users_matplotlib_backend_and_figures(tmp_path):
    """A notebook draws inline (its own backend): plot_confusion (and so evaluate) switched the process
    to Agg, after which the notebook's plots were no longer shown. In a fresh interpreter, with a
    backend other than Agg chosen and a figure of the user's open."""
    code = f"""
import matplotlib, numpy as np
import matplotlib.pyplot as plt
plt.switch_backend("svg")
fig = plt.figure()
from fermodels.metrics import plot_confusion
plot_confusion(np.array([[2, 1], [0, 3]]), ["Neutral", "Happy"], {str(tmp_path / "cm.png")!r}, "t")
print(matplotlib.get_backend(), plt.get_fignums())
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["svg", "[1]"], out.stdout
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("kind", ["float01", "float255", "grey", "rgba", "empty"])
def test_a_face_backend_refuses_pixels_it_cannot_read_in_plain_words(kind):
    """``create_backend("embedded").detect(image)`` on one's own array: a float picture in [0, 1] (skimage,
    torchvision) found no face without a word; grey, RGBA and empty arrays failed inside the model
    ("not enough values to unpack", "division by zero")."""
    from ferdata.faces import create_backend

    rgb = np.full((64, 64, 3), 128, np.uint8)
    image = {"float01": rgb / 255.0, "float255": rgb.astype(np.float32), "grey": rgb[..., 0],
             "rgba": np.dstack([rgb, rgb[..., :1]]), "empty": np.zeros((0, 0, 3), np.uint8)}[kind]
    backend = create_backend("embedded")
    with pytest.raises(ValueError, match=r"reads RGB uint8 \(H, W, 3\) pixels, got"):
        backend.detect(image)
    with pytest.raises(ValueError, match=r"reads RGB uint8 \(H, W, 3\) pixels, got"):
        backend.detect_batch([rgb, image], [None, None])


def test_a_model_called_as_timm_models_are_says_what_it_takes():
    """``create_model`` is timm-style, so ``model(images)`` is the first thing a user tries: it failed with
    torch's "Tensor.__contains__ only supports Tensor or scalar"; uint8 pixels failed inside a convolution."""
    import torch

    from fermodels.registry import create_model

    model = create_model("resnet18_112", num_classes=7).eval()
    with pytest.raises(TypeError, match=r"takes a batch dict of its card's fields \('image',\).*normalise"):
        model(torch.zeros(1, 3, 112, 112))
    with pytest.raises(TypeError, match=r"batch\['image'\] as a float tensor.*normalise.*got torch.uint8"):
        model({"image": torch.zeros(1, 3, 112, 112, dtype=torch.uint8)})
    assert model({"image": torch.zeros(1, 3, 112, 112)})["logits"].shape == (1, 7)


def test_training_from_python_leaves_the_callers_random_state(tiny_shards, preprocess, tmp_path):
    """train() seeds torch's global generator (params.seed, then each step) and left it at the last
    step's seed: a notebook's torch.randn after training gave the same numbers in every session."""
    import torch

    from fermodels.train import train
    from tests.fermodels.helpers import make_params

    torch.manual_seed(12345)
    torch.rand(3)
    before = torch.random.get_rng_state()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny_shards, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live", preprocess)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.random.get_rng_state(), before)


def test_scoring_a_model_leaves_it_in_the_mode_it_came_in(tiny_shards):
    """predict_loader (and score_split, which validates) put the model in eval mode and left it there: a
    training loop of one's own that validates with it each epoch trained on in eval mode (BatchNorm's
    running statistics frozen, no dropout) unless it called model.train() again."""
    import torch

    from fermodels.data import split_decoder
    from fermodels.scoring import predict_loader
    from fermodels.indexed import IndexedSplit, indexed_loader
    from fermodels.registry import create_model
    from fermodels.shardsplit import open_split

    model = create_model("resnet18_112", num_classes=7)
    assert model.training
    device = torch.device("cpu")
    split = open_split([tiny_shards], "val")
    dataset = IndexedSplit(split, split_decoder(model.card, split, device), 7)
    labels, probs, _ = predict_loader(model, indexed_loader(dataset, range(len(dataset)), 8, 0), model.card, device,
                                      flip_tta=False, channels_last=False)
    assert probs.shape == (len(dataset), 7)
    assert model.training
    model.eval()
    predict_loader(model, indexed_loader(dataset, range(2), 8, 0), model.card, device, flip_tta=False)
    assert not model.training
