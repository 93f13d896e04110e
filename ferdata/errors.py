"""The command lines' error policy: bad input is one clear line, a bug keeps its traceback.

A user's mistake or bad input - a missing file or model, a dataset laid out otherwise, an unknown
name, a bad parameter value, shards that fail their checks - raises ``OSError``, ``ValueError``,
``KeyError`` or one of their subclasses with a message that says what is wrong and how to fix it.
The commands and the DVC stage scripts print that message as ``error: ...`` on stderr and exit with
status 1; ``FER_TRACEBACK=1`` (or ``--verbose``/``-v`` where a command has it) shows the traceback
too. Any other exception is a bug and keeps its full traceback, and so does a plain ``KeyError``, a
lookup that missed (``error: options`` said nothing of where or why): a name the user gave that is
not there raises :class:`NamedKeyError`. Under torchrun a warning every rank would give alike is
told by one (:func:`warnings_told_here`).
"""
from __future__ import annotations

import atexit
import errno
import logging
import os
import re
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Callable, Iterator, Sequence

USER_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError)
INTERRUPTED = 130              # the exit status of a command stopped by Ctrl-C (128 + SIGINT)
# What a terminal acts on rather than shows: C0/C1 controls (ESC sequences that recolour the screen or set
# its title, a carriage return or newline that starts a line of the file name's making), DEL, bidi
# overrides and marks (the Arabic letter mark too), line and paragraph separators, and a name's undecodable
# bytes (kept as lone surrogates).
_UNSHOWN = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def shown(name: object) -> str:
    """``name`` (a file name, a path) as a console line shows it, on one line: every character a
    terminal would act on written as its Python escape (``\\x1b``, ``\\n``, ``\\udcff``), the rest as it is."""
    return _UNSHOWN.sub(lambda m: repr(m[0])[1:-1], str(name))


def inert_lines(text: object) -> str:
    """``text`` as the console shows a message: each of its lines as :func:`shown` writes a name, the line
    breaks the message itself makes kept. The guard for what no call site escaped (a name in an exception's
    text, a third party's message): nothing in it recolours the terminal, sets its title, moves the cursor
    back over a line or reverses it."""
    return "\n".join(shown(line) for line in str(text).split("\n"))


class ConsoleFormatter(logging.Formatter):
    """A log record (its traceback too) as :func:`inert_lines` shows it: the console handler's formatter of
    the command lines and the stage scripts, and of the preprocessing workers they start."""

    def format(self, record: logging.LogRecord) -> str:
        return inert_lines(super().format(record))


def console_logging(level: int, fmt: str) -> None:
    """``logging.basicConfig(level=level, format=fmt)`` with the console's lines inert (:class:`ConsoleFormatter`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(ConsoleFormatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])


def utf8_name(name: str) -> bool:
    """Whether ``name`` is UTF-8 text: not a file name's undecodable bytes, kept as lone surrogates (which
    DVC cannot hash, and ``cv2.VideoCapture`` crashes the process on)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# torch's CPU allocator failing (a RuntimeError: "DefaultCPUAllocator: can't allocate memory"), or numpy's
_OUT_OF_MEMORY = re.compile(r"can't allocate memory|not enough memory|out of memory|Unable to allocate", re.IGNORECASE)


def out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is the machine running out of memory (``MemoryError``, or the allocator's
    RuntimeError torch raises instead), not a fault of the file being read."""
    return isinstance(e, MemoryError) or (isinstance(e, RuntimeError) and bool(_OUT_OF_MEMORY.search(str(e))))


def no_memory_for(path: Path, e: BaseException) -> OSError:
    """The error to raise for ``out_of_memory(e)`` while loading ``path``: the machine's, so the file
    is not called damaged (the advice to copy it again or delete it threw away good runs)."""
    told = _first_line(str(e)) or type(e).__name__
    return OSError(errno.ENOMEM, f"not enough memory to load {path} ({path.stat().st_size / 1e6:.0f} MB; {told}): "
                   "the machine's shortage, not a fault of the file; free memory or use a machine with more, and "
                   "run again")


def _first_line(text: str, most: int = 200) -> str:
    line = text.strip().split("\n", 1)[0]
    return line if len(line) <= most else line[:most] + " ..."


class NamedKeyError(KeyError):
    """A name that is not there (a dataset, a params section, a registered name), said in a sentence
    with what to do: bad input under the policy above, printed plain (``KeyError`` quotes its message)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@contextmanager
def warnings_told_here(first: bool) -> Iterator[None]:
    """While the block runs, log records below ERROR only where ``first`` (rank 0; under torchrun,
    ``LOCAL_RANK`` 0 for what each machine checks of its own): the checks every rank makes on the same
    params and shards (a split's settings, its classes, a frozen random trunk, a resume's threads) are
    told once, not once per rank; an error stays each rank's own."""
    if first:
        yield
        return
    before = logging.root.manager.disable
    logging.disable(max(before, logging.WARNING))     # never lower a level the user disabled
    try:
        yield
    finally:
        logging.disable(before)


def message(err: BaseException) -> str:
    """The error's own message (``KeyError`` would quote it), with its type when it has none, and its
    notes; an output path of the wrong kind (a file where a folder must go, or the reverse) in plain
    words."""
    if isinstance(err, OSError) and (plain := _wrong_kind(err)):
        return plain
    if (died := _loader_worker_died(err)) is not None:
        said = str(died).strip()
        if _EXIT_CODE.search(said):            # an exit, not a kill: Python's own on an uncaught error
            return (f"{said.split('. Details are lost')[0]} (not a kill: the worker ended on an error of its "
                    "own, its traceback printed above; under spawn / forkserver often one raised while "
                    "the worker started, e.g. an import that fails there; train.workers 0 raises it here)")
        cause = ("out of memory, or a signal from outside" if "killed by signal" in said else    # its exit unknown:
                 "out of memory, a signal from outside, or an error of its own printed above")   # torch's watchdog
        return (f"{said} ({cause}): lower the workers, "
                "train.shuffle_buffer or the batch size, or give the machine more memory, and run again "
                "(training resumes from its last checkpoint)")
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else str(err)
    notes = "".join(f" ({note})" for note in getattr(err, "__notes__", ()))     # e.g. which input a worker was on
    return (_from_loader_worker(str(text)) or type(err).__name__) + notes


_WORKER_WRAPPED = re.compile(r"Caught (\w+) in DataLoader worker process (\d+)\.\nOriginal Traceback")


# torch says "(pid N) is killed by signal" from its SIGCHLD handler (the workers are this process's children:
# fork, spawn) and "(pid(s) N, M) exited unexpectedly" from its watchdog (forkserver: the fork server's children)
_LOADER_WORKER_DIED = re.compile(r"DataLoader worker \(pid(?:s|\(s\))? [^)]*\) "
                                 r"(?:is killed by signal|exited unexpectedly)")


_EXIT_CODE = re.compile(r"exited unexpectedly with exit code [1-9]")


def _loader_worker_died(err: BaseException | None) -> BaseException | None:
    """torch's plain ``RuntimeError`` for a DataLoader worker that died without an error (the OOM
    killer, a signal), or for an error it interrupted: torch's SIGCHLD handler raises it in the main
    thread wherever that is (inside ``torch.save``: "unexpected pos ...", the kill only its context)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if type(err) is RuntimeError and _LOADER_WORKER_DIED.search(str(err)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _from_loader_worker(text: str) -> str:
    """The worker's own message of an error torch's DataLoader re-raised in the main process: torch
    makes the message "Caught ValueError in DataLoader worker process 0." followed by the worker's
    whole traceback (20 lines after ``error:`` for a damaged shard read by ``train.workers`` 2). Other
    texts as they are."""
    wrapped = _WORKER_WRAPPED.match(text)
    if not wrapped:
        return text
    heads = list(re.finditer(rf"(?:^|\n)(?:[\w.]+\.)?{wrapped.group(1)}(?:: |\s*$)", text))
    if not heads:
        return text
    own = " ".join(line.strip() for line in text[heads[-1].end():].strip().splitlines()) or wrapped.group(1)
    return f"{own} (in loader worker {wrapped.group(2)})"


def _wrong_kind(err: OSError) -> str | None:
    """For the OS's "[Errno 17] File exists: 'x'" / "Not a directory" / "Is a directory": what is in
    the way, judged by what is on disk now (None when that does not explain the error)."""
    if err.errno not in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR) or err.filename is None:
        return None
    named = [Path(os.fsdecode(f)) for f in (err.filename2, err.filename) if f is not None]   # a rename: its target
    if err.errno == errno.EISDIR:
        folder = next((p for p in named if p.is_dir()), None)
        return f"{folder} is a folder, but a file must be written there: choose a file name" if folder else None
    path = named[-1]
    if err.errno == errno.EEXIST:           # mkdir over a file, or a file created exclusively: both "exist"
        return f"{path} exists and is a file: move it away or choose another path" if path.is_file() else None
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    held = f" (to hold {path})" if blocker != path else ""
    return (f"{blocker} is a file, but a folder is needed there{held}: move it away or choose "
            "another path") if blocker else None


def _user_error_named(name: str) -> bool:
    """Whether ``name`` is the name of a bad-input class (a subclass of ``OSError``, ``ValueError`` or
    :class:`NamedKeyError`)."""
    todo: list[type[BaseException]] = [OSError, ValueError, NamedKeyError]
    while todo:
        cls = todo.pop()
        if cls.__name__ == name:
            return True
        todo.extend(cls.__subclasses__())
    return False


def _unrebuilt_worker_error(err: BaseException) -> bool:
    """A bad-input error a DataLoader worker raised that torch could not rebuild in the main process
    (a constructor taking other arguments than one message, such as ``BadTarError(where, err)``):
    torch then raises a plain ``RuntimeError`` with the same "Caught <type> in DataLoader worker" text."""
    wrapped = _WORKER_WRAPPED.match(str(err)) if type(err) is RuntimeError else None
    return wrapped is not None and _user_error_named(wrapped.group(1))


def is_user_error(err: BaseException, extra: Sequence[type[BaseException]] = ()) -> bool:
    """Whether ``err`` is bad input under the policy above (a ``KeyError`` only as :class:`NamedKeyError`)."""
    if _unrebuilt_worker_error(err) or _loader_worker_died(err) is not None:
        return True
    if isinstance(err, KeyError) and not isinstance(err, (NamedKeyError, *extra)):
        return False
    return isinstance(err, (*USER_ERRORS, *extra))


def run_cli(app: Callable[[], object], extra: Sequence[type[BaseException]] = (),
            argv: Sequence[str] | None = None) -> None:
    """Run a typer ``app`` under the policy above; ``extra``: more exception types that mean bad input."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        app()
    except SystemExit as end:
        if end.code == INTERRUPTED:                        # typer's answer to Ctrl-C, silent: said as a stage says it
            print("interrupted", file=sys.stderr)
        raise
    except (*USER_ERRORS, RuntimeError, *extra) as err:
        if _traceback_wanted(argv) or not is_user_error(err, extra):
            raise
        _report(err)
        raise SystemExit(1) from None


def install_excepthook() -> None:
    """The same policy for a script that ends on an uncaught exception (the DVC stage scripts)."""
    def hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
        interrupted = issubclass(kind, KeyboardInterrupt)
        if issubclass(kind, BrokenPipeError):              # the reader of our output left (`| head -1`): quiet
            _silence_stdout()
        elif _traceback_wanted(sys.argv[1:]):
            sys.__excepthook__(kind, err, tb)
        elif interrupted:                                  # Ctrl-C: no traceback
            print("interrupted", file=sys.stderr)
        elif is_user_error(err):
            _report(err)
        else:
            sys.__excepthook__(kind, err, tb)
        if interrupted:
            _end_as_interrupted()

    sys.excepthook = hook


def _silence_stdout() -> None:
    """Point standard output at /dev/null: the interpreter's last flush of what the closed pipe did
    not take would print "Exception ignored ... BrokenPipeError" (the exit status stays 1, as click's)."""
    try:
        target = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):          # no real stream (replaced, or closed): nothing to flush
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, target)
    os.close(devnull)


def _end_as_interrupted() -> None:
    """End as Python ends on an unhandled Ctrl-C (status 130 to a shell, -2 to ``subprocess``), after
    the exit handlers. Left to the interpreter, the status came out 1 once ``torch._dynamo`` was
    imported (every stage from detect on imports it: its exit handler imports modules, which clears
    the interpreter's note of the unhandled KeyboardInterrupt), so DVC and ``set -e`` scripts read an
    interrupted stage as one that failed."""
    atexit._run_exitfuncs()                                # the interpreter's exit work, before the signal ends it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):                      # a closed pipe or stream
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def _traceback_wanted(argv: Sequence[str]) -> bool:
    return os.environ.get("FER_TRACEBACK") == "1" or bool({"-v", "--verbose"} & set(argv))


def _report(err: BaseException) -> None:
    print(f"error: {inert_lines(message(err))}", file=sys.stderr)
    print("(FER_TRACEBACK=1 shows the traceback)", file=sys.stderr)
