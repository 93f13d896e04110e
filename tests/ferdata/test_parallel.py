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


def _run(script: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                            start_new_session=True, **kw)


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
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the run hung after its worker died")
    assert proc.returncode == 0 and "stopped after" in out, out
    assert "a worker process died without an error" in out and "item 13" in out, out
    assert "python -X faulthandler" in out


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
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("Ctrl-C left the run hanging")
    assert proc.returncode != 0 and "KeyboardInterrupt" in out, out
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, f"workers left running: {left}"
