"""Ordered, memory-bounded parallel map over processes (the stages' only concurrency).

* ``fn`` is sent to each worker **once** (pool initializer), so a callable that loads
  models lazily loads them once per worker, not once per task.
* Items go out in chunks of ``chunksize`` and at most ``window`` items are in flight,
  whatever the dataset size: memory stays flat.
* Items for which ``local(item)`` is true run in this process (e.g. cache hits, where
  shipping the item costs more than the work); the pool starts only when the first
  other item arrives, so a fully cached run starts no workers and loads no models.
* Under ``fork``, a callable with a ``before_fork()`` method gets it called just before
  the pool starts, to load read-only model data the workers then share; and the parent's
  objects are frozen for the fork (``gc.freeze``), so the workers' garbage collector does not
  write to their pages and copy them (it took a worker's private memory from 7 to 16 MB
  between 1k and 10k images; 7 MB at both with the freeze, ``bench/bench_streaming.py``).
* Each worker runs OpenCV and torch on one thread (:func:`one_thread_per_worker`): the processes
  are the parallelism; their default of a thread per core in each of N workers put N x N threads
  on N cores, and can hang a forked worker (see the function).
* ``workers <= 1`` runs everything inline (debuggable, no pickling).
* Errors name their input: an exception from ``fn`` carries a note ``while processing
  <describe(item)>``; a worker that dies without one (a crash in native code, the out-of-memory
  killer) stops the run with an error naming the items it may have been on (a ``multiprocessing``
  pool started a new worker and waited for the lost result for ever); those items are first run
  again one at a time in a fresh worker (and, with ``split``, the parts of the one that kills it),
  so a crash that an input causes names that input. Workers ignore Ctrl-C: the
  parent takes it and stops them (a worker interrupted while holding the pool's queue lock hung the
  parent about once in 13 tries).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait as wait_for_ended
from typing import Callable, Iterable, Iterator, TypeVar

import cv2

from ferdata.errors import ConsoleFormatter

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_WORKER_FN: Callable | None = None
_DESCRIBE: Callable | None = None
PARENT_POLL_S = 1.0            # how often a worker checks that its parent is alive
STOP_GRACE_S = 5.0             # how long stopped workers get to end before they are killed


def one_thread_per_worker(*_: object) -> None:
    """In a worker process: OpenCV, and torch when it is loaded, on one thread (their pools
    default to one thread per core, in every worker). Also a DataLoader ``worker_init_fn``.

    Both matter in a forked child of a parent that used the pools, whose threads the child does
    not have: OpenCV is set to 0 (sequential), not 1, which resizes the parent's pool and hung 17
    of 20 such forks; torch's first multi-threaded operation there never returns (OpenMP), on one
    thread it runs (DataLoader's own workers do the same)."""
    cv2.setNumThreads(0)
    torch = sys.modules.get("torch")               # not imported for it: that costs a worker a second
    if torch is not None:
        torch.set_num_threads(1)
    if mp.get_start_method(allow_none=True) == "forkserver" and (run := mp.parent_process()) is not None:
        _watch_run(run.pid)      # a DataLoader worker's parent is the fork server too, which outlives the run


_WATCHING = False


def _watch_run(run: int) -> None:
    """Once per worker: a thread that ends this process when process ``run`` is gone."""
    global _WATCHING
    if not _WATCHING:
        _WATCHING = True
        threading.Thread(target=_exit_with_run, args=(run,), daemon=True, name="exit-with-run").start()


def _logging_setup() -> tuple:
    """What a spawn / forkserver worker needs to log as this process does: the root logger's level, the
    level, format and style of its console handler (to stderr or stdout; None without one), the levels set
    on named loggers (e.g. PIL's) and ``logging.disable``'s. A forked worker inherits the handlers themselves."""
    root = logging.getLogger()
    # the console's handler only: a FileHandler is a StreamHandler too (its lines went to the console), and a
    # subclass's formatter may read fields of its own (colorlog's %(log_color)s: a logging error per line)
    handler = next((h for h in root.handlers if type(h) is logging.StreamHandler
                    and h.stream in (sys.stdout, sys.stderr)), None)
    formatter = handler.formatter if handler is not None else None
    stream = "stdout" if handler is not None and handler.stream is sys.stdout else "stderr"
    named = {name: lg.level for name, lg in list(root.manager.loggerDict.items())
             if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET}
    style = getattr(formatter, "_style", None)          # "{" and "$" formats are not "%" ones
    style = ("{" if isinstance(style, logging.StrFormatStyle) else "$"
             if isinstance(style, logging.StringTemplateStyle) else "%")
    return (root.level, None if handler is None else handler.level, getattr(formatter, "_fmt", None),
            getattr(formatter, "datefmt", None), style, stream, named, root.manager.disable)


def _log_as_parent(setup: tuple) -> None:
    """In a spawn / forkserver worker: logging set up as :func:`_logging_setup` found it in the run's
    process. Without it a worker's records met logging's last resort: warnings and errors only, bare
    messages without the stage's format (``-v``'s debug lines and every info line lost)."""
    level, console, fmt, datefmt, style, stream, named, disabled = setup    # console: its handler's level
    if console is not None and not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=fmt, datefmt=datefmt, style=style, stream=getattr(sys, stream))
        logging.getLogger().handlers[0].setLevel(console)
        logging.getLogger().handlers[0].setFormatter(ConsoleFormatter(fmt, datefmt, style))   # its lines inert too
    logging.getLogger().setLevel(level)
    for name, own in named.items():
        logging.getLogger(name).setLevel(own)
    logging.disable(disabled)


_START_ERROR: BaseException | None = None        # a worker's start-up failure, raised by its first chunk


def _install(fn: Callable | _Deferred, describe: Callable | None, parent: int, method: str,
             logs: tuple | None = None) -> None:
    """The pool's initializer. It never raises: an initializer's exception ends its worker as if killed
    (the pool logs it and breaks), and the run then searched the inputs for one that kills a worker and
    said "died without an error" of a plain Python error (a module that fails to import in the worker, a
    model that fails to load). The error is kept and raised by the worker's first chunk instead, whole.
    Under spawn and forkserver ``fn`` arrives pickled, so that unpickling it (importing its modules) is
    part of the start-up caught here."""
    global _WORKER_FN, _DESCRIBE, _START_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's: it stops the workers
    if logs is not None:
        try:
            _log_as_parent(logs)
        except Exception as err:                    # noqa: BLE001  (logging is no reason to fail the run)
            log.warning("a worker process logs as Python's default, not as the run: %s: %s", type(err).__name__, err)
    try:
        one_thread_per_worker()
        if isinstance(fn, _Deferred):               # pickled by multiprocessing itself, unpickled only here
            fn, describe = pickle.loads(fn.data)    # trusted: our own
        _WORKER_FN, _DESCRIBE = fn, describe
    except Exception as err:                        # noqa: BLE001  (told by the first chunk, see above)
        err.add_note("while starting a worker process (before any input: every worker fails so)")
        _START_ERROR = err
    # Under fork and spawn the worker's parent is the run's process itself (watched by pid: it may be
    # gone already). A forkserver worker's parent is the fork server, which does not end with the run's
    # process: every worker holds the server's "alive" pipe open (multiprocessing passes it to each), so
    # server and workers waited on each other for ever; the run's process is watched itself.
    if method == "forkserver":
        _watch_run(parent)
    else:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="exit-with-parent").start()


def _exit_with(parent: int) -> None:
    """In a worker: exit when the parent is gone (killed: its workers waited for work for ever)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _exit_with_run(run: int) -> None:
    """In a worker whose parent is not the run's process (forkserver): exit when that process is gone."""
    while alive(run):
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped by its own parent, does not):
    what a worker watching a process that is not its parent can learn (the loader's batch ring too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()[0] != b"Z"
    except (OSError, IndexError):           # no /proc (macOS): the pid's existence is all there is
        return True


def _named(fn: Callable[[T], R], item: T, describe: Callable[[T], str] | None) -> R:
    """``fn(item)``; an exception gets a note naming the item."""
    try:
        return fn(item)
    except Exception as err:
        if describe is not None:
            err.add_note(f"while processing {describe(item)}")
        raise


def _run_chunk(chunk: list) -> list:
    try:
        if _START_ERROR is not None:
            raise _START_ERROR
        return [_named(_WORKER_FN, x, _DESCRIBE) for x in chunk]
    except Exception as err:
        sendable = _sendable(err)
        if sendable is err:
            raise
        raise sendable from err                 # its traceback travels in the pool's text; the cause is not pickled


def _sendable(err: Exception) -> Exception:
    """``err`` itself when it pickles; else (it holds a lock, a session, an open file) a stand-in of
    its nearest built-in class with its type, message and notes: the pool sent back only the pickling
    error ("cannot pickle '_thread.lock' object"), the real error and the item it named lost."""
    try:
        pickle.dumps(err)
        return err
    except Exception as why:                        # noqa: BLE001  (whatever pickling raises)
        text = f"{type(err).__name__}: {err}"
        base = next((c for c in type(err).__mro__ if c.__module__ == "builtins"), RuntimeError)
        try:
            stand_in = base(text)
        except Exception:                           # noqa: BLE001  (a built-in that needs other arguments)
            stand_in = RuntimeError(text)
        for note in getattr(err, "__notes__", ()):
            stand_in.add_note(note)
        stand_in.add_note(f"the worker's {type(err).__name__} could not be sent whole: {why}")
        return stand_in


def _start_pool(ctx: mp.context.BaseContext, workers: int, fn: Callable,
                describe: Callable | None) -> ProcessPoolExecutor:
    """A pool whose workers hold ``fn``."""
    method = ctx.get_start_method()
    if method == "fork":                                    # fn's loaded models shared, not copied
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_install,
                                   initargs=(fn, describe, os.getpid(), method, None))
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_install,
                               initargs=(_Deferred((fn, describe)), None, os.getpid(), method, _logging_setup()))


class _Deferred:
    """Objects sent to a spawn / forkserver worker whose unpickling waits for :func:`_install` (an error in it,
    e.g. a class the worker cannot import, is the worker's start error, not a worker dead at birth). They are
    pickled by multiprocessing's own pickler while it starts the worker, as without this wrapper: what may be
    shared only then (a multiprocessing Lock or Value, a file descriptor, torch's shared tensors) still is."""

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __reduce__(self):
        from multiprocessing.reduction import ForkingPickler
        return _Deferred._arrived, (bytes(ForkingPickler.dumps(self.obj)),)

    @classmethod
    def _arrived(cls, data: bytes) -> "_Deferred":
        arrived = cls.__new__(cls)
        arrived.data = data
        return arrived


def _submit(pool: ProcessPoolExecutor, ctx: mp.context.BaseContext, chunk: list, first: bool):
    """Submit a chunk; under fork the first submit forks the workers, with the parent's objects
    frozen meanwhile (they stay frozen in the workers only) and Ctrl-C held until they are forked."""
    if not first or ctx.get_start_method() != "fork":
        return pool.submit(_run_chunk, chunk)
    gc.freeze()
    try:
        with _interrupt_after():
            return pool.submit(_run_chunk, chunk)
    finally:
        gc.unfreeze()


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Ctrl-C (SIGINT) pressed meanwhile is acted on when the block ends. Python runs the at-fork hooks
    (logging's lock release) after each fork: a KeyboardInterrupt raised in one is printed as "Exception
    ignored" and lost, so a Ctrl-C pressed while the workers were forking (seconds on a loaded machine)
    went unheeded. Only the main thread sets handlers; elsewhere the block runs as it is."""
    before = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or before in (None, signal.SIG_IGN):
        yield                                           # None: a handler set outside Python, kept
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)
        if caught and callable(before):
            before(signal.SIGINT, None)                 # Python's own: KeyboardInterrupt, now
        elif caught:
            os.kill(os.getpid(), signal.SIGINT)         # SIG_DFL: the end it would have had


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the workers now (queued chunks are dropped, running ones killed).

    A worker killed while sending a result leaves half a message in the result pipe, and the
    pool's manager thread, reading it, waited for the rest for ever (so did ``shutdown`` and the
    interpreter's exit: Ctrl-C or a full disk hung a stage). This process's own copy of the pipe's
    write end, which it never writes to, is closed first, so that read ends at the end of the
    pipe and the pool shuts down as broken."""
    results = getattr(pool, "_result_queue", None)              # taken first: 3.14's terminate drops it
    procs = list((pool._processes or {}).values())
    terminate = getattr(pool, "terminate_workers", None)        # Python 3.14+
    if terminate is not None:
        terminate()
    else:
        for proc in procs:
            proc.terminate()
    # A worker whose code set a SIGTERM handler that does not exit would hold shutdown (and Ctrl-C) for ever
    alive = {proc.sentinel: proc for proc in procs}
    deadline = time.monotonic() + STOP_GRACE_S
    while alive and (left := deadline - time.monotonic()) > 0:
        for ended in wait_for_ended(list(alive), left):
            alive.pop(ended)
    for proc in alive.values():
        proc.kill()
    if results is not None:
        results._writer.close()
    pool.shutdown(wait=True, cancel_futures=True)


def _context() -> mp.context.BaseContext:
    """The start method the program set; else fork where it is safe (fast start, nothing re-imported:
    Linux, also on Python 3.14+ where the default became forkserver), else spawn. Not fork on macOS,
    although it is offered there: macOS's system libraries (libdispatch, which OpenCV's thread pool
    uses there, Accelerate, the Objective-C runtime) crash or hang a forked child of a process that
    used them, which is why spawn is Python's default there."""
    method = mp.get_start_method(allow_none=True)
    if method is None:
        method = "fork" if sys.platform != "darwin" and "fork" in mp.get_all_start_methods() else "spawn"
    return mp.get_context(method)


class _Local:
    """A result computed in this process, queued like a pending chunk."""

    def __init__(self, values: list) -> None:
        self.values = values

    def done(self) -> bool:
        return True

    def result(self) -> list:
        return self.values


def _lost(pending: deque, describe: Callable | None, err: BrokenProcessPool,
          isolate: Callable[[list], tuple[object, str]] | None = None) -> ChildProcessError:
    """The error for a broken pool: a worker died (the items of the chunks still out, as far as
    named; ``isolate`` finds the one that kills a worker alone, if any), or a result could not be
    sent back (an exception its class cannot rebuild: the pool's account of it, a remote traceback,
    is the error's cause)."""
    items = [x for future, chunk in pending if not isinstance(future, _Local) for x in chunk]   # sent out
    told_lines = str(err.__cause__ or "").splitlines()
    cause = [line.strip() for line in told_lines if line.strip() not in ("", "'''")][-1:]
    searched = not cause and isolate is not None and describe is not None and bool(items)
    if searched:                   # the search can take ISOLATE_S and more: without a word, the run looked hung
        log.warning("a worker process died without an error: running the %d input(s) it may have been on again, "
                    "one at a time in a fresh worker, to find one that kills it (at most %.0f s; Ctrl-C stops)",
                    len(items), ISOLATE_S)
    found, how = isolate(items) if searched else (_NOT_FOUND, "")
    if how == "found":
        return ChildProcessError(f"a worker process died without an error while processing {describe(found)}: "
                                 "run again alone in a fresh worker, it killed that one too (a crash in native "
                                 "code on this input: remove or re-encode it). Re-run with workers: 1 and "
                                 "`python -X faulthandler` to see where")
    if how == "every":
        first, second = found
        return ChildProcessError(f"a worker process died without an error; run again alone, {describe(first)} "
                                 f"and {describe(second)} each killed a fresh worker: the worker crashes whatever "
                                 "its input (a model file or a native library it loads, not an input). Re-run with "
                                 "workers: 1 and `python -X faulthandler` to see where")
    named = [describe(x) for x in items[:8]] if describe is not None else []
    more = f" and {len(items) - len(named)} more" if len(items) > len(named) else ""
    where = f" while processing one of: {'; '.join(named)}{more}" if named else ""
    again = {"none": " (run again one at a time in a fresh worker, none of them killed it: killed from outside, "
                     "or out of memory)",
             "late": f" (the search for the one that kills a worker, run again one at a time, ran out of its "
                     f"{ISOLATE_S:.0f} s before trying them all)"}.get(how, "")
    told = f"; the pool says: {cause[0][:300]}" if cause else ""
    return ChildProcessError(f"a worker process died without an error (killed, out of memory, or a crash in "
                             f"native code), or its result could not be sent back{where}{again}{told}. Re-run "
                             "with workers: 1 and `python -X faulthandler` to see where")


_NOT_FOUND = object()
ISOLATE_S = 120.0              # how long the search for the item that kills a worker may take


def _first_that_kills(ctx: mp.context.BaseContext, fn: Callable, describe: Callable | None, items: list,
                      deadline: float) -> tuple[int | None, bool]:
    """The index of the first of ``items`` that kills a fresh worker when run alone (None: none did),
    and whether ``deadline`` cut the search short."""
    pool = _start_pool(ctx, 1, fn, describe)
    try:
        for i, item in enumerate(items):
            if time.monotonic() > deadline:
                return None, True
            try:
                _submit(pool, ctx, [item], first=True).result()
            except BrokenProcessPool:
                return i, False
            except Exception:                   # noqa: BLE001  (an ordinary error is not the crash sought)
                pass
    finally:
        _stop(pool)
    return None, False


def _isolate(ctx: mp.context.BaseContext, fn: Callable, describe: Callable,
             split: Callable | None, items: list) -> tuple[object, str]:
    """(the first of ``items`` that kills a fresh worker when run alone, narrowed with ``split``
    (item -> its parts, each an item of ``fn``) while that one has several parts, "found"); or
    (``_NOT_FOUND``, why): "none" (none does: the worker was killed from outside, or ran out of memory
    only beside the others), "late" (``ISOLATE_S`` ran out first); or ((that one, a part of another
    item named otherwise), "every") when both do: the worker dies whatever its input (not the first two
    items: they may hold the same input, e.g. a photo named by more records than a batch holds)."""
    deadline = time.monotonic() + ISOLATE_S
    found: object = _NOT_FOUND
    control: list = []             # the first item killed its worker: the others, to tell whether any input does
    while items:
        at, late = _first_that_kills(ctx, fn, describe, items, deadline)
        if at is None:
            if found is _NOT_FOUND:
                return _NOT_FOUND, "late" if late else "none"
            break
        if found is _NOT_FOUND and at == 0:
            control = items[1:]
        found = items[at]
        parts = list(split(found)) if split is not None else []
        items = parts if len(parts) > 1 else []
    if control:                    # nothing ran in that worker: is it the input's? Tried on another input, not on
        named = describe(found)    # another part holding the same one
        other = next((q for item in control for q in (split(item) if split is not None else [item])
                      if describe(q) != named), None)
        if other is not None and _first_that_kills(ctx, fn, describe, [other], deadline)[0] == 0:
            return (found, other), "every"
    return found, "found"


def parallel_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                 window: int = 256, chunksize: int = 8,
                 local: Callable[[T], bool] | None = None,
                 describe: Callable[[T], str] | None = None,
                 split: Callable[[T], list[T]] | None = None) -> Iterator[R]:
    """``map(fn, items)`` in order; ``fn`` must be a picklable callable (no lambdas), and so must
    ``describe`` (item -> words naming it in errors). ``split`` (item -> the items it is made of, e.g.
    a batch's one-image batches) narrows down the input that kills a worker (module docstring)."""
    if workers <= 1:
        for item in items:
            yield _named(fn, item, describe)
        return
    pool = None
    pending: deque = deque()       # of (_Local | Future, its items)
    in_flight = 0
    chunk: list = []
    ctx = None

    def isolate(lost: list) -> tuple[object, str]:
        _stop(pool)                            # the broken pool's other workers, before new ones start
        return _isolate(ctx, fn, describe, split, lost)

    def submit() -> None:
        nonlocal pool, ctx, chunk, in_flight
        first = pool is None
        if first:
            ctx = _context()                   # only now: a run all of whose items are local starts nothing
            if ctx.get_start_method() == "fork" and hasattr(fn, "before_fork"):
                fn.before_fork()
            pool = _start_pool(ctx, workers, fn, describe)
        try:
            future = _submit(pool, ctx, chunk, first)
        except BrokenProcessPool as err:       # a worker died while none of its items was out
            pending.append((None, chunk))
            raise _lost(pending, describe, err, isolate) from err
        pending.append((future, chunk))
        in_flight += len(chunk)
        chunk = []

    def results() -> list:
        nonlocal in_flight
        try:
            values = pending[0][0].result()
        except BrokenProcessPool as err:
            raise _lost(pending, describe, err, isolate) from err
        in_flight -= len(pending.popleft()[1])
        return values

    done = False
    try:
        for item in items:
            if local is not None and local(item):
                if chunk:
                    submit()
                pending.append((_Local([_named(fn, item, describe)]), [item]))
                in_flight += 1
            else:
                chunk.append(item)
                if len(chunk) >= chunksize:
                    submit()
            while pending and (in_flight > window or pending[0][0].done()):
                yield from results()
        if chunk:
            submit()
        while pending:
            yield from results()
        done = True
    finally:
        if pool is not None:
            if done:
                pool.shutdown(wait=True)   # let workers exit normally
            else:
                _stop(pool)                # error or consumer stopped early: stop the work now
