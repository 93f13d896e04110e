"""Evaluator metrics against confusion matrices computed by hand."""
from __future__ import annotations

import numpy as np
import pytest

from fermodels.metrics import confusion_matrix, confusion_rows, metrics_from_confusion, plot_confusion

NAMES = ("Neutral", "Happy", "Sad")


def test_confusion_matrix_by_hand():
    y = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    p = [0, 1, 0, 1, 1, 2, 0, 2, 1]
    assert confusion_matrix(y, p, 3).tolist() == [[2, 1, 0], [0, 2, 0], [1, 1, 2]]
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([-1], [0], 3)                          # not the last class by wrap-around
    with pytest.raises(ValueError, match="labels but"):
        confusion_matrix([0, 1], [0], 3)
    assert confusion_matrix(np.array([2.0, 0.0]), [2, 1], 3).tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="labels must be class indices.*2.7"):
        confusion_matrix([2.7, 0], [2, 0], 3)                   # not cut to 2
    with pytest.raises(ValueError, match="predictions must be class indices.*nan"):
        confusion_matrix([2, 0], [np.nan, 0], 3)


def test_metrics_refuse_class_names_that_do_not_fit_the_matrix():
    with pytest.raises(ValueError, match="a 3 x 3 confusion matrix for 2 class names"):
        metrics_from_confusion(np.eye(3), NAMES[:2])          # Sad's row would go unnamed and unreported


def test_metrics_by_hand():
    cm = np.array([[2, 1, 0], [0, 2, 0], [1, 1, 2]])
    m = metrics_from_confusion(cm, NAMES)
    assert m["accuracy"] == pytest.approx(6 / 9)
    assert m["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 + 2 / 4) / 3)
    prec = [2 / 3, 2 / 4, 2 / 2]
    rec = [2 / 3, 2 / 2, 2 / 4]
    f1 = [2 * p * r / (p + r) for p, r in zip(prec, rec)]
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)
    assert m["per_class"]["Happy"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 2})
    assert m["num_samples"] == 9


def test_absent_class_is_left_out_of_macro_averages_but_its_predictions_count():
    cm = np.array([[3, 1, 0], [0, 0, 0], [0, 0, 4]])        # no true Happy; one Neutral predicted Happy
    m = metrics_from_confusion(cm, NAMES)
    assert m["accuracy"] == pytest.approx(7 / 8)
    assert m["mean_class_accuracy"] == pytest.approx((3 / 4 + 1) / 2)
    assert m["per_class"]["Happy"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["macro_f1"] == pytest.approx(((2 * 1 * 0.75) / 1.75 + 1.0) / 2)


def test_empty_confusion_is_all_zero():
    m = metrics_from_confusion(np.zeros((3, 3)), NAMES)
    assert (m["accuracy"], m["mean_class_accuracy"], m["macro_f1"], m["per_class"]) == (0.0, 0.0, 0.0, {})


def test_rows_and_png(tmp_path):
    assert confusion_rows([0, 2], [1, 2], NAMES) == [{"actual": "Neutral", "predicted": "Happy"},
                                                     {"actual": "Sad", "predicted": "Sad"}]
    plot_confusion(np.array([[2, 1, 0], [0, 2, 0], [1, 1, 2]]), NAMES, tmp_path / "cm.png", "t")
    assert (tmp_path / "cm.png").read_bytes()[:4] == b"\x89PNG"


def test_the_confusion_png_shows_each_true_class_as_fractions_of_its_row(tmp_path, monkeypatch):
    """The PNG was only checked to be a PNG: normalising by columns (precision, not recall) or leaving out
    a class that is predicted but absent from the labels passed. The matrix handed to imshow, by hand:
    each row over its row sum; Happy has no true sample but is predicted twice, so it stays (a zero row)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.axes import Axes

    shown, imshow = [], Axes.imshow

    def recording(self, x, *args, **kwargs):
        shown.append(np.asarray(x))
        return imshow(self, x, *args, **kwargs)

    monkeypatch.setattr(Axes, "imshow", recording)
    plot_confusion(np.array([[2, 1, 0], [0, 0, 0], [1, 1, 2]]), NAMES, tmp_path / "cm.png", "t")
    np.testing.assert_allclose(shown[0], [[2 / 3, 1 / 3, 0], [0, 0, 0], [1 / 4, 1 / 4, 2 / 4]])
