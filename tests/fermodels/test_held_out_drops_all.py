"""``evaluate.split: all`` scores train, val and test together; only the official val and test pictures dropped in
preparation are counted, but the warning spoke of "official train+val+test pictures" (audit h120)."""
from __future__ import annotations

from tests.fermodels.helpers import build_shards, ferdata_quiet
from tests.fermodels.test_held_out_drops import _losing_test_faces


def test_split_all_says_which_splits_the_dropped_pictures_were_counted_in(tmp_path, tiny_run, caplog, one_thread):
    import dataclasses

    from fermodels.evaluate import evaluate
    from tests.fermodels.test_grey_faces import _eval_params

    with ferdata_quiet():
        shards = build_shards(tmp_path / "lossy", edit=_losing_test_faces())
    with caplog.at_level("WARNING", logger="fermodels"):
        metrics = evaluate(tiny_run["ckpt"] / "best.pt", shards, dataclasses.replace(_eval_params(), split="all"),
                           tmp_path / "eval", datasets=["lossy"])
    assert metrics["dropped_in_preparation"] == {"bad_landmarks": 1, "no_landmarks": 2}     # the train drop: not
    said = [r.getMessage() for r in caplog.records if "dropped in preparation" in r.getMessage()]
    assert len(said) == 1 and "3 of lossy's official val and test pictures" in said[0], said
