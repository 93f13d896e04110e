"""Bad input raised in a DataLoader worker by an exception class torch cannot rebuild from one message
(`BadTarError(where, err)`: a shard with a zeroed header read by `train.workers` 2) reaches the main process as
a plain RuntimeError "Caught BadTarError in DataLoader worker process 0. ...": one line, not a traceback."""
import tarfile

import pytest
from torch.utils.data import DataLoader, Dataset

from ferdata.errors import is_user_error, message, run_cli
from ferdata.tario import BadTarError


class _Cut(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise BadTarError("x-000000.tar", tarfile.ReadError("data after the end-of-archive marker"))


def _caught():
    it = iter(DataLoader(_Cut(), num_workers=1))
    try:
        next(it)
    except Exception as err:          # noqa: BLE001
        return err
    finally:
        it._shutdown_workers()
    raise AssertionError("no error")


def test_an_unrebuildable_bad_input_error_from_a_worker_is_bad_input():
    err = _caught()
    assert is_user_error(err), f"{type(err).__name__} is told with a traceback"
    said = message(err)
    assert said.startswith("x-000000.tar: not a readable tar") and said.endswith("(in loader worker 0)"), said


def test_run_cli_reports_it_in_one_line(capsys):
    err = _caught()

    def app():
        raise err

    with pytest.raises(SystemExit):
        run_cli(app, argv=[])
    assert capsys.readouterr().err.startswith("error: x-000000.tar: not a readable tar")


def test_a_bug_in_a_worker_keeps_its_traceback():
    class _Bug(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise RuntimeError("a real bug")

    it = iter(DataLoader(_Bug(), num_workers=1))
    with pytest.raises(RuntimeError) as caught:
        next(it)
    it._shutdown_workers()
    assert not is_user_error(caught.value)


def test_a_worker_error_without_a_message_is_named_by_its_type():
    """The traceback's last line is the bare type (no "ValueError: ..." line): the whole traceback came out."""
    class _Bare(Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise ValueError()

    it = iter(DataLoader(_Bare(), num_workers=1))
    with pytest.raises(ValueError) as caught:
        next(it)
    it._shutdown_workers()
    assert message(caught.value) == "ValueError (in loader worker 0)"
