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


class _Bug(Dataset):               # module level: spawn / forkserver workers unpickle it by name
    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise RuntimeError("a real bug")


class _Bare(Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, i):
        raise ValueError()


def test_a_bug_in_a_worker_keeps_its_traceback():
    it = iter(DataLoader(_Bug(), num_workers=1))
    with pytest.raises(RuntimeError) as caught:
        next(it)
    it._shutdown_workers()
    assert not is_user_error(caught.value)


def test_a_worker_error_without_a_message_is_named_by_its_type():
    """The traceback's last line is the bare type (no "ValueError: ..." line): the whole traceback came out."""
    it = iter(DataLoader(_Bare(), num_workers=1))
    with pytest.raises(ValueError) as caught:
        next(it)
    it._shutdown_workers()
    assert message(caught.value) == "ValueError (in loader worker 0)"


_KILLED_WORKER = """
import os, signal
from torch.utils.data import DataLoader, Dataset
from ferdata.errors import install_excepthook

class Dies(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        os.kill(os.getpid(), signal.SIGKILL)      # as the out-of-memory killer ends a worker

install_excepthook()
for _ in DataLoader(Dies(), num_workers=1):
    pass
"""


def test_a_loader_worker_killed_from_outside_is_one_error_line():
    """torch raises a plain RuntimeError ("DataLoader worker (pid N) is killed by signal: Killed."),
    which the policy took for a bug: 83 lines of traceback from the train stage."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "FER_TRACEBACK"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_WORKER], capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": str(repo)}, cwd=repo)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[0].startswith("error: DataLoader worker (pid"), proc.stderr
    assert "out of memory" in lines[0] and len(lines) <= 2, proc.stderr     # either of torch's two messages


def test_an_error_a_killed_worker_interrupted_is_told_as_the_kill():
    """torch's SIGCHLD handler raises in the main thread wherever it is: inside torch.save the error
    read "[enforce fail at inline_container.cc] unexpected pos", the kill only its context."""
    died = RuntimeError("DataLoader worker (pid 4259) is killed by signal: Killed. ")
    try:
        try:
            raise died
        except RuntimeError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 35345088 vs 35344984")
    except RuntimeError as err:
        outer = err
    assert is_user_error(died) and is_user_error(outer)
    assert message(outer).startswith("DataLoader worker (pid 4259) is killed by signal: Killed. (out of memory")
    assert not is_user_error(RuntimeError("unexpected pos 1 vs 2"))       # without the kill: a bug


_KILLED_WORKER_SCRIPT = """
import os, signal, sys
from torch.utils.data import DataLoader, Dataset
from ferdata.errors import install_excepthook


class Dies(Dataset):                 # module level: a forkserver / spawn worker imports this script by name
    def __len__(self):
        return 4

    def __getitem__(self, i):
        os.kill(os.getpid(), signal.SIGKILL)      # as the out-of-memory killer ends a worker


if __name__ == "__main__":
    install_excepthook()
    for _ in DataLoader(Dies(), num_workers=1, multiprocessing_context=sys.argv[1]):
        pass
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_loader_worker_killed_under_another_start_method_is_one_error_line(method, tmp_path):
    """Under forkserver (Python 3.14's default for DataLoader workers) the worker is not the main process's
    child, so torch's SIGCHLD handler never sees it die: its watchdog raises "DataLoader worker (pid(s) N)
    exited unexpectedly", which the policy took for a bug (a 48-line traceback from the train stage)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    script = tmp_path / "killed_worker.py"
    script.write_text(_KILLED_WORKER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "FER_TRACEBACK"}
    proc = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, timeout=180,
                          env={**env, "PYTHONPATH": str(repo), "TMPDIR": str(tmp_path)}, cwd=repo)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines and lines[0].startswith("error: DataLoader worker (pid"), proc.stderr
    assert "out of memory" in lines[0] and len(lines) <= 2, proc.stderr


def test_torchs_watchdog_message_for_a_dead_loader_worker_is_bad_input_not_a_bug():
    died = RuntimeError("DataLoader worker (pid(s) 11743, 11744) exited unexpectedly")
    assert is_user_error(died)
    assert message(died).startswith("DataLoader worker (pid(s) 11743, 11744) exited unexpectedly (out of memory, "
                                    "a signal from outside, or an error of its own printed above)")


def test_a_loader_worker_that_exits_on_its_own_error_is_not_told_as_out_of_memory():
    """A spawn / forkserver loader worker whose start-up fails (an import that fails there) exits with
    Python's code 1 after printing its traceback; torch says "exited unexpectedly with exit code 1", and
    the advice was to lower the workers or add memory."""
    died = RuntimeError("DataLoader worker (pid 20851) exited unexpectedly with exit code 1. Details are lost due "
                        "to multiprocessing. Rerunning with num_workers=0 may give better error trace.")
    assert is_user_error(died)
    said = message(died)
    assert said.startswith("DataLoader worker (pid 20851) exited unexpectedly with exit code 1"), said
    assert "out of memory" not in said and "traceback printed above" in said, said
