"""The stages' worker pool: results in order, errors that name their input, a worker that dies
without an error stops the run (it hung for ever), Ctrl-C belongs to the parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ferdata.errors import message
from ferdata.parallel import parallel_map

REPO = Path(__file__).resolve().parents[2]


class Double:
    def __call__(self, x: int) -> int:
        if x == 13:
            raise ValueError("bad value")
        return 2 * x


class SigintHandler:
    def __call__(self, _: int) -> bool:
        return signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def name(x: int) -> str:
    return f"item {x}"


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_in_order_and_an_error_names_its_item(workers):
    assert list(parallel_map(Double(), range(13), workers, window=4, chunksize=2, describe=name)) == [
        2 * x for x in range(13)]
    with pytest.raises(ValueError) as caught:
        list(parallel_map(Double(), range(20), workers, window=4, chunksize=2, describe=name))
    assert caught.value.__notes__ == ["while processing item 13"]
    assert message(caught.value) == "bad value (while processing item 13)"


def test_workers_leave_ctrl_c_to_the_parent():
    """A worker interrupted while it held the pool's queue lock left the parent waiting for it."""
    assert all(parallel_map(SigintHandler(), range(8), workers=2, chunksize=1))


def _output(proc: subprocess.Popen, timeout: float, hung: str) -> str:
    """What ``proc`` printed once it ended; past ``timeout`` its process group is killed and the
    test fails with ``hung``."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(hung)


def _run(script: str, tmp: Path | None = None, **kw) -> subprocess.Popen:
    """``script`` in a new Python process and session; ``tmp``: its TMPDIR (a fork server killed with
    the run leaves its ``pymp-*`` folder there, not in /tmp)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"TMPDIR": str(tmp)} if tmp is not None else {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True, **kw)


@pytest.mark.parametrize("death", ["os._exit(1)", "os.kill(os.getpid(), signal.SIGKILL)"])
def test_a_worker_that_dies_stops_the_run_naming_what_it_was_on(death):
    """The out-of-memory killer or a crash in native code: a pool started a new worker and waited
    for the lost result for ever, without a word."""
    proc = _run(f"""
        import os, signal
        from ferdata.parallel import parallel_map

        class Fn:
            def __call__(self, x):
                if x == 13:
                    {death}
                return x

        def name(x):
            return f"item {{x}}"

        got = []
        try:
            for r in parallel_map(Fn(), range(40), workers=2, window=8, chunksize=2, describe=name):
                got.append(r)
        except ChildProcessError as err:
            print("stopped after", len(got), "|", err)
        """)
    out = _output(proc, 60, "the run hung after its worker died")
    assert proc.returncode == 0 and "stopped after" in out, out
    assert "a worker process died without an error while processing item 13: run again alone" in out, out
    assert "python -X faulthandler" in out


def _lost_error(worker: str, call: str) -> str:
    """The ChildProcessError's text when ``call`` (a ``parallel_map`` over ``worker``'s callable, its
    items named ``item <x>`` by ``name``) runs in a fresh interpreter."""
    proc = _run(textwrap.dedent(worker) + textwrap.dedent(f"""
        from ferdata.parallel import parallel_map

        def name(x):
            x = x if isinstance(x, list) else [x]
            return f"item {{x[0]}}" if len(x) == 1 else f"items {{x[0]}}..{{x[-1]}}"

        try:
            list({call})
        except ChildProcessError as err:
            print(err)
        """))
    return _output(proc, 60, "the run hung after its worker died")


def test_the_part_of_a_batch_that_kills_a_worker_is_named():
    """A crash in native code on one image named the up to ~72 images of the batches in flight
    (detect sends batches of 8): those are run again alone in a fresh worker, then the parts of the
    batch that kills it (``split``)."""
    out = _lost_error("""
        import os

        class Batches:
            def __call__(self, batch):
                if 13 in batch:
                    os._exit(1)
                return batch
        """, ("parallel_map(Batches(), [list(range(i, i + 4)) for i in range(0, 40, 4)], workers=2, window=8, "
              "chunksize=1, describe=name, split=lambda b: [[x] for x in b])"))
    assert "died without an error while processing item 13: run again alone" in out, out


def test_a_worker_killed_from_outside_is_not_blamed_on_an_item(tmp_path):
    """Killed from outside (the out-of-memory killer, a user): run again alone, no item kills a worker,
    and the error says so instead of naming one."""
    out = _lost_error("""
        import os, signal

        class Fn:
            def __init__(self, mark):
                self.mark = mark

            def __call__(self, x):
                if x == 5 and not os.path.exists(self.mark):      # the first time only
                    open(self.mark, "w").close()
                    os.kill(os.getpid(), signal.SIGKILL)
                return x
        """, (f"parallel_map(Fn({str(tmp_path / 'killed')!r}), range(20), workers=2, window=8, "
              "chunksize=2, describe=name)"))                 # (its mark in a folder pytest removes)
    assert "while processing one of: item" in out and "none of them killed it" in out, out


def test_ctrl_c_stops_the_run_and_its_workers_at_once():
    proc = _run("""
        import time
        from ferdata.parallel import parallel_map

        class Slow:
            def __call__(self, x):
                time.sleep(0.2)
                return x

        print("started", flush=True)
        for _ in parallel_map(Slow(), range(10_000), workers=2, window=8, chunksize=1):
            pass
        """)
    assert proc.stdout.readline().strip() == "started"
    time.sleep(1.5)
    os.killpg(proc.pid, signal.SIGINT)                  # as a terminal's Ctrl-C: the whole group
    out = _output(proc, 30, "Ctrl-C left the run hanging")
    assert proc.returncode != 0 and "KeyboardInterrupt" in out, out
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, f"workers left running: {left}"


def test_ctrl_c_while_the_workers_fork_is_not_lost():
    """A SIGINT that landed while Python ran its at-fork hooks in the parent (logging's lock release; seconds
    on a loaded machine) raised KeyboardInterrupt inside the hook, where it is printed as "Exception ignored"
    and lost: the run went on (audit h65). It is held until the workers are forked, then acted on. The
    hook here announces itself and then takes a second, the signal arriving meanwhile."""
    proc = _run("""
        import os, time
        from ferdata.parallel import parallel_map

        class Slow:
            def __call__(self, x):
                time.sleep(0.2)
                return x

        def slow_fork():
            print("forking", flush=True)
            time.sleep(1.0)

        os.register_at_fork(after_in_parent=slow_fork)
        for _ in parallel_map(Slow(), range(10_000), workers=2, window=8, chunksize=1):
            pass
        print("ran to the end", flush=True)
        """)
    assert proc.stdout.readline().strip() == "forking"
    os.killpg(proc.pid, signal.SIGINT)                  # as a terminal's Ctrl-C, while the hook runs
    out = _output(proc, 30, "Ctrl-C while forking was lost: the run went on")
    assert proc.returncode != 0 and "KeyboardInterrupt" in out and "ran to the end" not in out, out
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, f"workers left running: {left}"


def test_stopping_workers_in_the_middle_of_sending_a_result_does_not_hang():
    """Workers stopped (Ctrl-C, an error, a consumer that stops early) while sending a large result
    left half a message in the result pipe: the pool's manager thread waited for the rest for ever,
    and so did the stage (derive hung in 3 of 7 Ctrl-Cs, or on a full disk)."""
    proc = _run("""
        from ferdata.parallel import parallel_map

        class Big:
            def __call__(self, x):
                return b"x" * 4_000_000          # larger than a pipe's buffer: sent in many writes

        for _ in range(10):
            run = parallel_map(Big(), range(10_000), workers=2, window=64, chunksize=4)
            next(run), next(run)
            run.close()                          # stops the workers, most likely mid-send
        print("stopped", flush=True)
        """)
    out = _output(proc, 60, "stopping the pool hung")
    assert proc.returncode == 0 and "stopped" in out, out


class KeywordOnlyError(Exception):
    """An exception its class cannot rebuild from its args (many libraries' are so)."""

    def __init__(self, path: str, *, why: str) -> None:
        super().__init__(f"{path}: {why}")


class RaiseKeywordOnly:
    def __call__(self, x: int) -> int:
        if x == 3:
            raise KeywordOnlyError("p", why="bad")
        return x


class DieWhenIdle:
    """Finishes item 2, then its worker is killed 0.3 s later, while it waits for work."""

    def __call__(self, x: int) -> int:
        if x == 2:
            import threading

            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGKILL)).start()
        return x


def test_an_error_the_parent_cannot_rebuild_says_so_with_the_pools_account():
    """It read as a dead worker, and the real error was dropped."""
    with pytest.raises(ChildProcessError, match=r"could not be sent back.*the pool says: TypeError: "
                                                r"KeywordOnlyError.__init__\(\) missing") as caught:
        list(parallel_map(RaiseKeywordOnly(), range(12), workers=2, chunksize=1, describe=name))
    assert caught.value.__cause__ is not None


class LockedError(ValueError):
    """A library's error that keeps a handle that does not pickle (a lock, a session, an open file)."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        import threading

        self.handle = threading.Lock()


class RaiseLocked:
    def __call__(self, x: int) -> int:
        if x == 5:
            raise LockedError("model file /models/det.onnx is damaged: download it again")
        return x


def test_an_error_that_cannot_be_pickled_keeps_its_message_and_item():
    """With workers the run ended in "cannot pickle '_thread.lock' object" (a traceback, a bug by
    the error policy): the real error and its item were lost; with one worker it was one line."""
    from ferdata.errors import is_user_error

    with pytest.raises(ValueError) as caught:
        list(parallel_map(RaiseLocked(), range(12), workers=2, chunksize=1, describe=name))
    assert is_user_error(caught.value)
    assert message(caught.value).startswith("LockedError: model file /models/det.onnx is damaged: download it "
                                            "again (while processing item 5")


class LockedBug(RuntimeError):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        import threading

        self.handle = threading.Lock()


def where_it_broke(x: int) -> None:
    raise LockedBug(f"internal state broken at {x}")


class BreakAt3:
    def __call__(self, x: int) -> int:
        if x == 3:
            where_it_broke(x)
        return x


def test_a_stand_in_for_an_error_that_cannot_be_pickled_keeps_the_workers_traceback():
    """For a bug the traceback is the only account of where it happened; the stand-in was raised
    ``from None`` and the pool's remote traceback pointed at parallel.py."""
    with pytest.raises(RuntimeError, match="LockedBug: internal state broken at 3") as caught:
        list(parallel_map(BreakAt3(), range(6), workers=2, chunksize=1, describe=str))
    assert "where_it_broke" in str(caught.value.__cause__)


def test_stopping_a_pool_whose_worker_ignores_sigterm_does_not_hang(tmp_path):
    """Stopping sent SIGTERM and waited for the workers for ever: a worker running code that set a
    SIGTERM handler of its own (and hung) made Ctrl-C, an error or an early stop hang the stage."""
    proc = _run(f"""
        import os, signal, time
        from ferdata.parallel import parallel_map

        class Fn:
            def __call__(self, x):
                if x == 1:
                    signal.signal(signal.SIGTERM, lambda *a: None)
                    open({str(tmp_path / "set")!r}, "w").close()
                    time.sleep(600)
                while x == 0 and not os.path.exists({str(tmp_path / "set")!r}):   # 1 is out, its handler set
                    time.sleep(0.02)
                return x

        run = parallel_map(Fn(), range(8), workers=2, chunksize=1)
        print(next(run), flush=True)     # (0 on its own raced the parent: 1 not yet out, and then never)
        run.close()                      # what an error in the consumer, or Ctrl-C, does
        print("stopped", flush=True)
        """)
    try:
        out = _output(proc, 30, "stopping the pool hung on a worker that ignores SIGTERM")
    finally:
        subprocess.run(["pkill", "-KILL", "-s", str(proc.pid)], capture_output=True)
    assert "stopped" in out, out


def test_a_worker_killed_while_idle_is_the_same_named_error():
    """The next submit raised the bare BrokenProcessPool (a traceback, as for a bug)."""
    def slow_reader():
        for i in range(12):
            if i == 6:
                time.sleep(1.5)                  # everything out has come back; the worker dies meanwhile
            yield i

    with pytest.raises(ChildProcessError, match="a worker process died without an error"):
        list(parallel_map(DieWhenIdle(), slow_reader(), workers=2, chunksize=1, describe=name))


def test_exceptions_cross_processes_whole_with_their_notes():
    import pickle

    from ferdata.faces.base import MissingModelError
    from ferdata.io import BadImage
    from ferdata.crop import BadGeometry

    for err in (BadImage("too_small", "8x8"), BadGeometry("bad_keypoints", "collinear"),
                MissingModelError("embedded", "x.dat", ["/here"], "fetch it")):
        err.add_note("while processing item 1")
        back = pickle.loads(pickle.dumps(err))
        assert (type(back), str(back), back.__notes__) == (type(err), str(err), ["while processing item 1"])
        assert getattr(back, "reason", None) == getattr(err, "reason", None)


def test_a_killed_stage_leaves_its_folder_to_the_next_run(tmp_path):
    """Its workers kept the inherited lock on .<out>.partial (and waited for work for ever): every
    later run into the folder was refused."""
    from ferdata.atomic import StageDirError, staged_dir

    out = tmp_path / "derived"
    proc = _run(f"""
        import time
        from ferdata.atomic import staged_dir
        from ferdata.parallel import parallel_map

        class Slow:
            def __call__(self, x):
                time.sleep(0.05)
                return x

        with staged_dir({str(out)!r}, ("*",)) as partial:
            for i, _ in enumerate(parallel_map(Slow(), range(10_000), workers=2, chunksize=1)):
                if i == 3:
                    print("started", flush=True)
        """)
    assert proc.stdout.readline().strip() == "started"
    os.kill(proc.pid, signal.SIGKILL)                     # the parent alone, as the out-of-memory killer
    proc.wait(timeout=30)
    try:
        with staged_dir(out, ("*",)) as again:
            (again / "a").write_text("next run")
    except StageDirError as err:
        pytest.fail(f"the next run was refused: {err}")
    finally:
        deadline = time.time() + 10                       # the orphaned workers follow their parent
        while time.time() < deadline and subprocess.run(["pgrep", "-s", str(proc.pid)],
                                                        capture_output=True).stdout.strip():
            time.sleep(0.2)
        left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in left:
            os.kill(int(pid), signal.SIGKILL)
    assert not left, f"workers still running after their parent was killed: {left}"
    assert (out / "a").read_text() == "next run"


def _wait_for_started(proc: subprocess.Popen) -> None:
    """Read ``proc``'s output up to its "started" line. Lines before it are not the test's business: a
    warning on stderr (merged into stdout), such as torch's DataLoader saying 2 workers are more than the
    1 CPU this process may use (a 1-core CI machine, ``taskset -c 0``, a container's cpuset)."""
    before = []
    for line in proc.stdout:
        if line.strip() == "started":
            return
        before.append(line)
    raise AssertionError(f"the run ended without starting: {''.join(before)}")


def _left_after_killing(proc: subprocess.Popen) -> list[str]:
    """Kill ``proc`` alone once it printed "started" (as the out-of-memory killer would), and return the
    pids of its session still running 15 s later (killed then, so that none outlives the test)."""
    try:
        _wait_for_started(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while time.time() < deadline and subprocess.run(["pgrep", "-s", str(proc.pid)],
                                                        capture_output=True).stdout.strip():
            time.sleep(0.2)
    finally:
        left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in left:
            os.kill(int(pid), signal.SIGKILL)
    return left


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_the_pool_runs_under_every_start_method(method):
    """Under forkserver every worker exited at once: it watched for the run's process as its parent,
    but a forkserver worker's parent is the fork server (a ChildProcessError for every run)."""
    proc = _run(f"""
        import multiprocessing as mp
        from ferdata.parallel import parallel_map
        from tests.ferdata.test_parallel import Double

        mp.set_start_method({method!r})
        print(sum(parallel_map(Double(), range(40, 60), workers=2)), flush=True)
        """)
    out = _output(proc, 120, f"the pool hung under {method}")
    assert proc.returncode == 0 and out.strip().splitlines()[-1] == str(2 * sum(range(40, 60))), out


def test_a_dead_worker_is_not_blamed_on_items_this_process_computed():
    """The error named every item still pending, those computed here (``local``) among them."""
    proc = _run("""
        import os
        from ferdata.parallel import parallel_map

        class Fn:
            def __call__(self, x):
                if x == 13:
                    os._exit(1)
                return x

        def name(x):
            return f"item {x}"

        def here(x):
            return x in (14, 15)

        try:
            list(parallel_map(Fn(), range(40), workers=2, window=8, chunksize=2, local=here, describe=name))
        except ChildProcessError as err:
            print("|", err)
        """)
    out = _output(proc, 60, "the run hung after its worker died")
    assert "item 13" in out and "item 14" not in out and "item 15" not in out, out


class RaiseChained:
    def __call__(self, x: int) -> int:
        if x == 5:
            try:
                {}["inner key"]
            except KeyError as err:
                raise ValueError("outer") from err
        return x


def test_an_error_that_pickles_keeps_its_cause_in_the_pools_account():
    """An error that pickles is sent as it is: the worker's traceback (the pool's account, the
    error's cause in the parent) still shows what it was raised from."""
    with pytest.raises(ValueError) as caught:
        list(parallel_map(RaiseChained(), range(12), workers=2, chunksize=1, describe=name))
    assert message(caught.value) == "outer (while processing item 5)"
    assert "KeyError: 'inner key'" in str(caught.value.__cause__)


class LockedDecodeError(UnicodeDecodeError):
    """An error whose nearest built-in class cannot be made from one message (it needs 5 arguments)."""

    def __init__(self) -> None:
        super().__init__("utf-8", b"caf\xe9", 3, 4, "invalid continuation byte")
        import threading

        self.handle = threading.Lock()


class RaiseLockedDecode:
    def __call__(self, x: int) -> int:
        if x == 5:
            raise LockedDecodeError()
        return x


def test_an_error_that_cannot_be_pickled_nor_remade_is_a_runtime_error_with_its_message_and_item():
    with pytest.raises(RuntimeError) as caught:
        list(parallel_map(RaiseLockedDecode(), range(12), workers=2, chunksize=1, describe=name))
    assert message(caught.value).startswith("LockedDecodeError: 'utf-8' codec can't decode byte 0xe9 in position 3")
    assert "while processing item 5" in caught.value.__notes__
    assert any(n.startswith("the worker's LockedDecodeError could not be sent whole: ")
               for n in caught.value.__notes__)


class BusyAfterTheFirst:
    """Item 0 returns once the parent has sent items 1 and 2 out (it asked ``telling(folder)`` for
    item 3); every other item marks that it started, then sleeps: after the first result both workers
    are busy for good. (Item 0 on a timer raced the parent on a loaded machine: 0 came back before 1
    was sent out, and after the first result a paused generator sends nothing more.)"""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, x: int) -> int:
        if x == 0:
            _wait_for([self.folder / "asked"])
            return x
        self.started()
        (self.folder / f"started.{x}").touch()
        time.sleep(600)
        return x

    def started(self) -> None:
        pass


class EndOnSigterm(BusyAfterTheFirst):
    """Its worker ends on SIGTERM as a library's handler may: after some cleanup (0.3 s)."""

    def started(self) -> None:
        def cleanup(*_):
            time.sleep(0.3)
            (self.folder / f"ended.{os.getpid()}").touch()
            os._exit(0)

        signal.signal(signal.SIGTERM, cleanup)


def telling(folder: Path, n: int = 8):
    """``range(n)``, touching ``folder/asked`` when item 3 is asked for (with ``chunksize=1`` items 1
    and 2 are sent out by then)."""
    for x in range(n):
        if x == 3:
            (folder / "asked").touch()
        yield x


def _wait_for(paths: list[Path], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"never appeared: {[str(p) for p in paths]}"
        time.sleep(0.02)


def _two_busy_workers(fn: BusyAfterTheFirst, folder: Path):
    """A paused ``parallel_map`` whose two workers are both in ``fn``'s sleep."""
    run = parallel_map(fn, telling(folder), workers=2, chunksize=1)
    assert next(run) == 0
    _wait_for([folder / "started.1", folder / "started.2"])
    return run


def test_stopped_workers_get_time_to_end_before_they_are_killed(tmp_path):
    run = _two_busy_workers(EndOnSigterm(tmp_path), tmp_path)
    run.close()
    assert len(list(tmp_path.glob("ended.*"))) == 2


def test_stopping_workers_that_end_on_sigterm_is_quick(tmp_path):
    """The grace is for workers that ignore SIGTERM: workers that end on it are not waited 5 s for."""
    run = _two_busy_workers(BusyAfterTheFirst(tmp_path), tmp_path)
    started = time.monotonic()
    run.close()
    assert time.monotonic() - started < 2.5


def test_a_worker_that_dies_on_every_input_is_not_blamed_on_the_first_one():
    """A native crash loading a model (or a wheel built for another CPU) kills every worker: the
    search named the first input in flight as the one to remove."""
    out = _lost_error("""
        import os

        class BrokenModel:
            def __call__(self, x):
                os._exit(1)
        """, "parallel_map(BrokenModel(), range(40), workers=2, window=8, chunksize=2, describe=name)")
    assert "the worker crashes whatever its input" in out and "remove or re-encode it" not in out, out
    assert "run again alone, item 0 and item 1 each killed a fresh worker" in out, out


def test_a_search_cut_short_by_its_deadline_does_not_say_none_killed_a_worker():
    out = _lost_error("""
        import os, time
        import ferdata.parallel as par
        par.ISOLATE_S = 2.0

        class Slow:
            def __call__(self, x):
                if x == 0:
                    time.sleep(3)
                if x == 9:
                    os._exit(1)
                return x
        """, "parallel_map(Slow(), range(40), workers=2, window=16, chunksize=1, describe=name)")
    assert "ran out of its 2 s before trying them all" in out and "none of them killed it" not in out, out


@pytest.mark.parametrize("platform, expected", [("darwin", "spawn"), ("linux", "fork")])
def test_the_pool_uses_fork_only_where_it_is_safe(monkeypatch, platform, expected):
    """With no start method set, the pool took fork wherever fork exists, macOS too (where Python's
    default is spawn: its system libraries crash or hang forked children); Linux keeps fork, also on
    Python 3.14+ whose default there is forkserver. A method the program set is used as it is."""
    import multiprocessing as mp

    from ferdata import parallel

    monkeypatch.setattr(mp, "get_start_method", lambda allow_none=False: None)     # none set
    monkeypatch.setattr(sys, "platform", platform)        # get_all_start_methods reads it on each call
    assert parallel._context().get_start_method() == expected
    monkeypatch.setattr(mp, "get_start_method", lambda allow_none=False: "forkserver")
    assert parallel._context().get_start_method() == "forkserver"


class Slow:
    def __call__(self, x: int) -> int:
        time.sleep(0.05)
        return x


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_end_with_a_killed_run_under_every_start_method(method, tmp_path):
    """Under forkserver the workers watched the fork server, which outlives the run's process (each
    worker holds its "alive" pipe): a killed stage left the server and its workers, models loaded,
    for ever."""
    proc = _run(f"""
        import multiprocessing as mp
        from ferdata.parallel import parallel_map
        from tests.ferdata.test_parallel import Slow

        mp.set_start_method({method!r})
        for i, _ in enumerate(parallel_map(Slow(), range(10_000), workers=2, chunksize=1)):
            if i == 3:
                print("started", flush=True)
        """, tmp_path)
    left = _left_after_killing(proc)
    assert not left, f"{method}: processes still running 15 s after the run's process was killed: {left}"


def test_loader_workers_end_with_a_killed_run_under_forkserver(tmp_path):
    """DataLoader workers (``worker_init_fn=one_thread_per_worker``, as the trainer's and evaluation's)
    under forkserver, Python 3.14's default on Linux: torch's workers watch their parent, the fork
    server, which outlives a killed run (each worker holds its "alive" pipe): they stayed for ever."""
    proc = _run("""
        import multiprocessing as mp
        import torch
        from ferdata.parallel import one_thread_per_worker
        from tests.ferdata.test_parallel import SlowItems

        mp.set_start_method("forkserver")
        loader = torch.utils.data.DataLoader(SlowItems(), num_workers=2, worker_init_fn=one_thread_per_worker)
        for i, _ in enumerate(loader):
            if i == 3:
                print("started", flush=True)
        """, tmp_path)
    left = _left_after_killing(proc)
    assert not left, f"processes still running 15 s after the run's process was killed: {left}"


class SlowItems:
    def __len__(self) -> int:
        return 10_000

    def __getitem__(self, i: int) -> int:
        time.sleep(0.05)
        return i


def test_the_search_for_the_input_that_kills_a_worker_is_told_before_it_starts(tmp_path):
    """The search runs every input in flight again, one at a time (up to ``ISOLATE_S``, 120 s): the run
    said nothing meanwhile (37 s of silence after a detect worker was killed with 2 workers at 4 s a batch),
    so it looked hung."""
    proc = _run("""
        import logging, os, sys, time
        logging.basicConfig(level=logging.INFO, format="LOG %(name)s: %(message)s", stream=sys.stdout)
        from ferdata.parallel import parallel_map

        class Fn:
            def __call__(self, x):
                if x == 13:
                    os._exit(1)
                return x

        try:
            list(parallel_map(Fn(), range(40), workers=2, window=8, chunksize=2, describe=str))
        except ChildProcessError as err:
            print("ERROR", err)
        """, tmp_path)
    out = _output(proc, 60, "the run hung after its worker died")
    told = out.find("LOG ferdata.parallel: a worker process died without an error: running the")
    assert 0 <= told < out.find("ERROR a worker process died without an error while processing 13"), out


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_worker_that_fails_to_start_says_why_not_that_it_died(method, tmp_path):
    """A spawn / forkserver worker that cannot unpickle its callable (here a class in ``python -c``'s
    ``__main__``, as in a notebook on macOS; likewise a module that fails to import in the worker) died
    in its start-up: the run printed the worker's traceback once per worker started, searched the inputs,
    and ended with "a worker process died without an error ... a model file or a native library it
    loads". The worker's own error is the run's, told once."""
    proc = _run(f"""
        import multiprocessing as mp
        mp.set_start_method("{method}")
        from ferdata.parallel import parallel_map

        class Fn:
            def __call__(self, x):
                return x

        try:
            list(parallel_map(Fn(), range(20), workers=2, chunksize=2, describe=str))
        except Exception as err:
            print("RAISED", type(err).__name__, "|", err, "|", getattr(err, "__notes__", None))
        """, tmp_path)
    out = _output(proc, 120, "the run hung after its workers failed to start")
    raised = [line for line in out.splitlines() if line.startswith("RAISED")]
    assert raised and "died without an error" not in raised[0], out
    assert "AttributeError" in raised[0] and "Fn" in raised[0] and "while starting a worker process" in raised[0], out


_LOUD = """
import logging


class Loud:                          # in a module of its own: a spawn / forkserver worker imports it
    def __call__(self, x):
        logging.getLogger("ferdata.worker").warning("warned about %d", x)
        logging.getLogger("ferdata.worker").debug("debugged %d", x)
        return x
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_spawned_workers_log_lines_look_like_the_run_s(method, tmp_path):
    """A forked worker inherits the run's logging; a spawn / forkserver worker (macOS's default, or a
    start method the program set) had none: its warnings came out bare, without the stage's
    ``name: message`` format, and its info and debug lines (``-v``) not at all."""
    (tmp_path / "loud.py").write_text(_LOUD)
    proc = _run(f"""
        import logging, multiprocessing as mp, sys
        sys.path.insert(0, {str(tmp_path)!r})
        mp.set_start_method("{method}")
        logging.basicConfig(level=logging.DEBUG, format="LOG %(levelname)s %(name)s: %(message)s")
        from ferdata.parallel import parallel_map
        from loud import Loud

        print(list(parallel_map(Loud(), range(4), workers=2, chunksize=1)))
        """, tmp_path)
    out = _output(proc, 120, "the run hung")
    assert proc.returncode == 0 and "[0, 1, 2, 3]" in out, out
    assert "LOG WARNING ferdata.worker: warned about 2" in out, out
    assert "LOG DEBUG ferdata.worker: debugged 3" in out, out


_COUNTED = """
class Counted:                       # in a module of its own: a spawn / forkserver worker imports it
    def __init__(self, counter):
        self.counter = counter

    def __call__(self, x):
        with self.counter.get_lock():
            self.counter.value += 1
        return x
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_callable_holding_a_multiprocessing_value_still_reaches_spawned_workers(method, tmp_path):
    """multiprocessing pickles a worker's arguments while it starts the worker, the only time a Lock or a
    Value may be pickled: ``fn`` pickled beforehand by ``pickle.dumps`` failed in the run's process
    ("Synchronized objects should only be shared between processes through inheritance")."""
    (tmp_path / "counted.py").write_text(_COUNTED)
    proc = _run(f"""
        import multiprocessing as mp, sys
        sys.path.insert(0, {str(tmp_path)!r})
        mp.set_start_method("{method}")
        from ferdata.parallel import parallel_map
        from counted import Counted

        counter = mp.Value("i", 0)
        print(list(parallel_map(Counted(counter), range(4), workers=2, chunksize=1)), counter.value)
        """, tmp_path)
    out = _output(proc, 120, "the run hung")
    assert proc.returncode == 0 and "[0, 1, 2, 3] 4" in out, out


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_brace_style_log_format_does_not_stop_spawned_workers(method, tmp_path):
    """The run's format copied as a "%" one: a program logging with ``style="{"`` had every worker fail to
    start (ValueError: Invalid format ... for '%' style), the whole run with it."""
    (tmp_path / "loud.py").write_text(_LOUD)
    proc = _run(f"""
        import logging, multiprocessing as mp, sys
        sys.path.insert(0, {str(tmp_path)!r})
        mp.set_start_method("{method}")
        logging.basicConfig(level=logging.DEBUG, format="LOG {{levelname}} {{name}}: {{message}}", style="{{")
        from ferdata.parallel import parallel_map
        from loud import Loud

        print(list(parallel_map(Loud(), range(4), workers=2, chunksize=1)))
        """, tmp_path)
    out = _output(proc, 120, "the run hung")
    assert proc.returncode == 0 and "[0, 1, 2, 3]" in out, out
    assert "LOG WARNING ferdata.worker: warned about 2" in out, out


def test_a_describe_the_worker_cannot_import_is_its_start_error_too(tmp_path):
    """``describe`` travels with ``fn``: one defined in ``python -c``'s (a notebook's) ``__main__`` killed
    every spawn worker at birth, and the run ended with "the worker crashes whatever its input"."""
    proc = _run("""
        import multiprocessing as mp
        mp.set_start_method("spawn")
        from ferdata.parallel import parallel_map

        def name(x):
            return f"item {x}"

        try:
            list(parallel_map(str, range(6), workers=2, chunksize=1, describe=name))
        except Exception as err:
            print("RAISED", type(err).__name__, "|", err, "|", getattr(err, "__notes__", None))
        """, tmp_path)
    out = _output(proc, 120, "the run hung after its workers failed to start")
    raised = [line for line in out.splitlines() if line.startswith("RAISED")]
    assert raised and "AttributeError" in raised[0] and "while starting a worker process" in raised[0], out


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_run_that_logs_to_a_file_gets_no_worker_debug_lines_on_its_console(method, tmp_path):
    """A FileHandler is a StreamHandler: its format and level were copied onto a console handler in each
    worker, so a run logging debug lines to a file had every worker's debug line on its terminal."""
    (tmp_path / "loud.py").write_text(_LOUD)
    proc = _run(f"""
        import logging, multiprocessing as mp, sys
        sys.path.insert(0, {str(tmp_path)!r})
        mp.set_start_method("{method}")
        logging.basicConfig(level=logging.DEBUG, filename={str(tmp_path / "run.log")!r})
        from ferdata.parallel import parallel_map
        from loud import Loud

        print(list(parallel_map(Loud(), range(4), workers=2, chunksize=1)))
        """, tmp_path)
    out = _output(proc, 120, "the run hung")
    assert proc.returncode == 0 and "[0, 1, 2, 3]" in out, out
    assert "debugged" not in out, out


def test_a_warning_before_started_is_not_taken_for_the_run_failing():
    """On a machine with 1 CPU torch warns that 2 DataLoader workers are too many before the run starts:
    the forkserver loader test read that warning as its "started" line and failed."""
    proc = _run("""
        import sys, time
        print("UserWarning: This DataLoader will create 2 worker processes in total.", file=sys.stderr, flush=True)
        print("started", flush=True)
        time.sleep(600)
        """)
    assert _left_after_killing(proc) == []


_NAMER = """
import logging


class Namer:                         # in a module of its own: a spawn / forkserver worker imports it
    def __call__(self, x):
        logging.getLogger("ferdata.worker").warning("read %s", "pic\\x1b]0;pwned\\x07\\r%d.jpg" % x)
        return x
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_spawned_workers_log_lines_are_inert_as_the_run_s(method, tmp_path):
    """The run's console lines show a name's ESC sequences and carriage returns escaped
    (ferdata.errors.console_logging); a spawned worker rebuilt its console handler from the format alone,
    so its lines set the terminal's title and overwrote themselves (audit h72)."""
    (tmp_path / "namer.py").write_text(_NAMER)
    proc = _run(f"""
        import logging, multiprocessing as mp, sys
        sys.path.insert(0, {str(tmp_path)!r})
        mp.set_start_method("{method}")
        from ferdata.errors import console_logging
        console_logging(logging.INFO, "LOG %(name)s: %(message)s")
        from ferdata.parallel import parallel_map
        from namer import Namer

        print(list(parallel_map(Namer(), range(2), workers=2, chunksize=1)))
        """, tmp_path)
    out = _output(proc, 120, "the run hung")
    assert proc.returncode == 0 and "[0, 1]" in out, out
    assert "LOG ferdata.worker: read pic\\x1b]0;pwned\\x07\\r1.jpg" in out, out
    assert not any(c in out for c in "\x1b\x07\r"), repr(out)
