"""resume_state: last.pt resumes only its own run, and the warning says why it does not."""
from __future__ import annotations

import logging
import sys

import pytest
import torch

from fermodels.runstate import LAST, resume_state
from tests.fermodels.helpers import save_last

PARAMS = {"epochs": 2, "lr": 0.1, "seed": 0}
DATA = {"datasets": ["sample"], "train": {"a.tar": "0" * 64}, "val": {}, "face_backends": ["retinaface"]}


def test_the_same_run_resumes(tmp_path):
    save_last(str(tmp_path), PARAMS, DATA)
    assert resume_state(tmp_path, PARAMS, DATA)["params"] == PARAMS


def test_a_params_change_is_not_blamed_on_an_older_version(tmp_path, caplog):
    save_last(str(tmp_path), {**PARAMS, "epochs": 5}, DATA)
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert resume_state(tmp_path, PARAMS, DATA) is None
    assert (f"{tmp_path / LAST} is from another run (it differs in epochs): starting over, replacing its "
            f"checkpoints in {tmp_path} and its logs") in caplog.text
    assert "earlier version" not in caplog.text


@pytest.mark.parametrize("old_params, old_data, lacks", [
    ({"epochs": 2, "lr": 0.1}, DATA, "seed"),
    (PARAMS, {k: v for k, v in DATA.items() if k != "face_backends"}, "data.face_backends"),
])
def test_a_checkpoint_lacking_what_training_records_names_it(tmp_path, caplog, old_params, old_data, lacks):
    save_last(str(tmp_path), old_params, old_data)
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert resume_state(tmp_path, PARAMS, DATA) is None
    assert (f"(it differs in {lacks}; it is from an earlier version of this package, which did not record "
            f"{lacks}): starting over") in caplog.text


def _log(live, rows: dict[str, list[int]]) -> None:
    (live / "metrics.json").write_text("{}")
    for name, steps in rows.items():
        tsv = live / "plots" / "metrics" / f"{name}.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text("timestamp\tstep\tvalue\n" + "".join(f"0\t{s}\t0.5\n" for s in steps))


@pytest.mark.parametrize("position, logged, resumes", [
    ({"epoch": 1, "batch": 4, "epoch_steps": 4}, {"train/ce": [0, 1], "val/accuracy": [0, 1]}, True),
    ({"epoch": 1, "batch": 2, "epoch_steps": 4}, {"train/ce": [0], "val/accuracy": [0]}, True),   # mid-epoch 1
    ({"epoch": 1, "batch": 4, "epoch_steps": 4}, {"train/ce": [0, 1], "val/accuracy": [0]}, False),
    ({"epoch": 1, "batch": 4, "epoch_steps": 4}, {}, False),                     # the logs were removed
    ({"epoch": 0, "batch": 2, "epoch_steps": 4}, {}, True),                      # nothing finished yet
])
def test_a_run_resumes_only_while_its_logs_hold_every_finished_epoch(tmp_path, caplog, position, logged, resumes):
    ckpt, live = tmp_path / "ckpt", tmp_path / "live"
    ckpt.mkdir()
    live.mkdir()
    save_last(str(ckpt), PARAMS, DATA, **position)
    if logged:
        _log(live, logged)
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        state = resume_state(ckpt, PARAMS, DATA, live)
    assert (state is not None) == resumes
    assert ("lacks the logs of epoch(s)" in caplog.text) != resumes
    if not logged and not resumes:
        assert "has finished 2 epoch(s), but" in caplog.text
        assert "lacks the logs of epoch(s) 0-1 (removed?)" in caplog.text


def test_missing_epochs_are_named_as_runs():
    from fermodels.runstate import _spans

    assert _spans([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8" and _spans([3]) == "3" and _spans([]) == ""


def test_a_damaged_last_pt_says_how_to_train_from_the_start(tmp_path):
    """A cut-off last.pt stopped every run with 'copy it again or retrain', but retraining stopped on
    it again: the error now says that deleting it trains from the start."""
    save_last(str(tmp_path), PARAMS, DATA)
    data = (tmp_path / LAST).read_bytes()
    (tmp_path / LAST).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut-off or damaged .*training resumes from last\.pt: delete it"):
        resume_state(tmp_path, PARAMS, DATA)


def test_a_second_run_into_the_same_checkpoint_folder_is_refused(tmp_path):
    """Two runs saving into one folder interleaved their last.pt / best.pt (and resumed from each
    other's); the folder is held for the run, and released with it."""
    from fermodels.ckptdir import checkpoints_held

    with checkpoints_held(tmp_path / "ckpt"):
        with pytest.raises(BlockingIOError, match="another run is training into .*ckpt now"):
            with checkpoints_held(tmp_path / "ckpt"):
                pass
    (tmp_path / "ckpt" / f".{LAST}.tmp").write_bytes(b"an earlier version's failed save")
    with checkpoints_held(tmp_path / "ckpt") as held:      # free again; the old temp name cleared
        assert held == tmp_path / "ckpt" and not any(held.iterdir())


def test_an_unwritable_checkpoint_folder_is_named_before_training(tmp_path, monkeypatch):
    """It failed at the first save (after an epoch and its validation by default), naming a temp file."""
    import tempfile

    from fermodels.ckptdir import checkpoints_held

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    with pytest.raises(PermissionError, match=r"checkpoint folder .*ckpt is not writable \(Permission denied\): fix"):
        with checkpoints_held(tmp_path / "ckpt"):
            pass


@pytest.mark.parametrize("pending, last, promoted", [
    (5, 5, True), (4, 5, False), (5, None, False), (5, b"PK\x03\x04 cut off", False), (b"cut off", 5, False),
    (5, "30 bytes short", False), ("1 byte short", 5, False)])
def test_pending_best_weights_become_best_pt_only_when_last_pt_records_them(tmp_path, pending, last, promoted):
    from fermodels.ckptdir import BEST, PENDING_BEST, checkpoints_held

    for path, step, best in ((LAST, last, 1), (BEST, 3, 0), (PENDING_BEST, pending, 1)):
        if isinstance(step, bytes):
            (tmp_path / path).write_bytes(step)
        elif isinstance(step, str):                # a whole checkpoint, cut off near its end (torch: EINVAL)
            torch.save({"step": 5, "best": {"epoch": best}, "w": torch.zeros(1000)}, tmp_path / path)
            whole = (tmp_path / path).read_bytes()
            (tmp_path / path).write_bytes(whole[:-int(step.split()[0])])
        elif step is not None:
            torch.save({"step": step, "best": {"epoch": best}}, tmp_path / path)
    with checkpoints_held(tmp_path):
        assert not (tmp_path / PENDING_BEST).exists()
        assert torch.load(tmp_path / BEST)["step"] == (pending if promoted else 3)


def test_a_failed_read_of_best_pt_is_raised_not_taken_for_another_run(tmp_path, monkeypatch):
    """Any error reading best.pt read as 'another epoch's': an EIO on a network disk retrained from
    scratch and overwrote last.pt."""
    import fermodels.ckptdir as ckptdir

    torch.save({"step": 5, "best": {"epoch": 1}}, tmp_path / "best.pt")

    def eio(*args, **kwargs):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(ckptdir.torch, "load", eio)
    with pytest.raises(OSError, match="Input/output error"):
        ckptdir.saved_at(tmp_path / "best.pt")


def test_temp_files_of_killed_saves_are_cleared_when_a_run_holds_the_folder(tmp_path):
    """Only the next save of the same file removed them, so a finished run's folder kept those of a
    file it did not save again, and DVC cached them with it."""
    from fermodels.ckptdir import checkpoints_held

    for name in ("..best.pending.pt.k1ll3d.tmp", ".best.pt.0ldv3r.tmp", f".{LAST}.tmp"):
        (tmp_path / name).write_bytes(b"half a checkpoint")
    (tmp_path / "notes.txt").write_text("mine")
    with checkpoints_held(tmp_path):
        assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_earlier_runs_best_pt_without_its_last_pt_is_said_to_be_replaced(tmp_path, caplog):
    from fermodels.runstate import BEST

    (tmp_path / BEST).write_bytes(b"weights")
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert resume_state(tmp_path, PARAMS, DATA) is None
    assert f"{tmp_path / BEST} is an earlier run's, without its last.pt: this run replaces it" in caplog.text


def test_a_checkpoint_that_cannot_be_written_is_named_and_leaves_the_old_one(tmp_path):
    """A full disk during torch.save ended in torch's 'unexpected pos ...' with no file named, and
    left a 100 MB temp file in the DVC-tracked checkpoint folder."""
    import subprocess
    import sys
    import textwrap

    from tests.reliability.corpus import child_env

    (tmp_path / LAST).write_bytes(b"the previous checkpoint")
    code = textwrap.dedent("""
        import resource, signal, sys
        import torch
        from fermodels.registry import create_model
        from fermodels.runstate import Position, save_checkpoint
        from tests.fermodels.helpers import make_params

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # a write past the limit fails with EFBIG
        params = make_params()
        model = create_model(params.model, num_classes=params.num_classes)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))      # less than the checkpoint
        try:
            save_checkpoint(sys.argv[1], model=model, params=params, optimizer=None,
                            position=Position(0, 0, 0), best={}, data={}, preprocess={})
        except OSError as err:
            print("OSError:", err)
        """)
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / LAST)], capture_output=True, text=True,
                         env=child_env(), timeout=300)
    assert out.returncode == 0, out.stderr
    assert "OSError: [Errno 27] File too large (while writing checkpoint" in out.stdout and LAST in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]
    assert (tmp_path / LAST).read_bytes() == b"the previous checkpoint"


def test_training_holds_its_checkpoint_folder(tiny_shards, tmp_path):
    from fermodels.ckptdir import checkpoints_held
    from fermodels.train import train
    from tests.fermodels.helpers import make_params

    with checkpoints_held(tmp_path / "ckpt"):
        with pytest.raises(BlockingIOError, match="another run is training into"):
            train(tiny_shards, make_params(epochs=1), tmp_path / "ckpt", tmp_path / "live")
    assert not (tmp_path / "ckpt" / LAST).exists()


def test_interning_a_checkpoint_keeps_text_subclasses_and_a_state_dicts_metadata():
    """sys.intern refuses str subclasses (numpy.str_): a first save would fail after an epoch."""
    from collections import OrderedDict

    import numpy as np

    from fermodels.runstate import _interned

    sd = OrderedDict(w=1)
    sd._metadata = {"": {"version": 1}}
    out = _interned({"name": np.str_("x"), "sd": sd, "t": ("a", "b"), "plain": "text" + str(3)})
    assert type(out["name"]) is np.str_ and out["name"] == "x"
    assert out["sd"]._metadata == {"": {"version": 1}} and type(out["sd"]) is OrderedDict
    assert out["t"] == ("a", "b") and out["plain"] is sys.intern("text3")


@pytest.mark.parametrize("fault", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 600000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError()], ids=["torch_allocator", "MemoryError"])
def test_too_little_memory_for_a_whole_last_pt_is_not_called_damaged(tmp_path, monkeypatch, fault):
    """Out of memory loading an intact last.pt (`ulimit -v`, a small machine) was told as "a cut-off or damaged
    checkpoint ...: delete it to train from the start": the advice threw away the run."""
    import errno

    import fermodels.runstate as runstate

    save_last(str(tmp_path), PARAMS, DATA)

    def no_memory(*args, **kwargs):
        raise fault
    monkeypatch.setattr(runstate.torch, "load", no_memory)
    with pytest.raises(OSError, match="not enough memory to load") as err:
        resume_state(tmp_path, PARAMS, DATA)
    assert err.value.errno == errno.ENOMEM
    assert "damaged" not in str(err.value) and "delete" not in str(err.value)


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_damaged_best_pt_is_refused_not_trained_over(tmp_path, damage):
    """last.pt recorded epoch 1 as the best and best.pt was damaged: a cut one started the run over
    (a warning, then last.pt overwritten at the first save: every epoch lost), a byte flipped in its
    weights resumed and finished with the damaged best.pt, which predict and evaluate then refuse."""
    import struct
    import zipfile

    from fermodels.runstate import BEST

    save_last(str(tmp_path), PARAMS, DATA, epoch=1, batch=4, epoch_steps=4, step=8, best={"epoch": 1})
    torch.save({"step": 8, "best": {"epoch": 1}, "w": torch.arange(1000.0)}, tmp_path / BEST)
    raw = bytearray((tmp_path / BEST).read_bytes())
    if damage == "cut":
        raw = raw[:len(raw) // 2]
    else:                                   # one byte in the middle of the weights' bytes
        info = next(i for i in zipfile.ZipFile(tmp_path / BEST).infolist() if "/data/" in i.filename)
        name, extra = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        raw[info.header_offset + 30 + name + extra + info.file_size // 2] ^= 0x40
    (tmp_path / BEST).write_bytes(bytes(raw))
    last = (tmp_path / LAST).read_bytes()
    with pytest.raises(ValueError, match=f"{BEST} (cannot be read|is damaged).*put back a good copy"):
        resume_state(tmp_path, PARAMS, DATA)
    assert (tmp_path / LAST).read_bytes() == last


@pytest.mark.parametrize("key, value", [("grey_faces", True), ("weights", {"pretrained": "ab" * 32})])
def test_a_key_recorded_only_where_it_applies_is_not_blamed_on_an_older_version(tmp_path, caplog, key, value):
    """A colour run's checkpoint has no data.grey_faces (and one without pretrained weights no data.weights) by
    design: a grey run after it differs from it, but the old checkpoint is not from an earlier version."""
    save_last(str(tmp_path), PARAMS, DATA)
    with caplog.at_level(logging.WARNING, "fermodels.runstate"):
        assert resume_state(tmp_path, PARAMS, {**DATA, key: value}) is None
    assert f"(it differs in data.{key}): starting over" in caplog.text
    assert "earlier version" not in caplog.text
