"""Helpers every script shares: user errors and stop signals, atomic writes, the device, mixed
precision and torchrun's process group, seeding, plots, overlays, and the threads and windows of
the inference scripts."""

import _thread
import contextlib
import csv
import errno
import functools
import gc
import importlib
import io
import json
import logging
import math
import multiprocessing
import os
import platform
import queue
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger("dinoseg")


class UserError(Exception):
    """A mistake the user can fix (a path, a flag, a file). Scripts print it and exit 2."""


def first_few(names: list[str]) -> str:
    """The first five of ``names`` for a message: "a, b, c, d, e", and " ..." where there are
    more."""
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, schedulers, container stops), raised to take Ctrl-C's clean path."""


# Set once a stop is under way: a SIGTERM raised, or a Ctrl-C that reached run_script.
_stopping = threading.Event()


def _terminate(signum, frame) -> None:
    # Once: Slurm and systemd signal every process of a job, and torchrun forwards the signal to
    # each of its processes as well, so each one gets two. Raised again, the second one would
    # cut the first one's stop (its message) short with a traceback.
    if _stopping.is_set():
        return
    _stopping.set()
    raise Terminated


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Hold a Ctrl-C or SIGTERM that comes while the block runs, and raise it once the block
    is done: for work that a stop must not cut midway, such as matplotlib drawing the curves,
    whose figures and transforms are global state that an exception raised between two of its
    steps may leave half-made. Only the main thread takes signals: elsewhere it holds nothing.
    A signal left to another handler (ignored, or not run_script's) is left to it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[KeyboardInterrupt] = []

    def hold_ctrl_c(signum, frame) -> None:
        held.append(KeyboardInterrupt())

    def hold_sigterm(signum, frame) -> None:
        if not _stopping.is_set():  # once, as _terminate
            _stopping.set()
            held.append(Terminated())

    ours = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: _terminate}
    holders = {signal.SIGINT: hold_ctrl_c, signal.SIGTERM: hold_sigterm}
    previous = {n: signal.getsignal(n) for n in ours if signal.getsignal(n) is ours[n]}
    for signum in previous:
        signal.signal(signum, holders[signum])
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        raise held[0]


def _stop_again(previous_hook: Callable, unraisable) -> None:
    """``sys.unraisablehook`` of the scripts: a stop raised in a finalizer is raised again.

    A signal's handler runs wherever the main thread is, and that may be a finalizer (a
    ``__del__``, a weakref callback: frequent where progress bars and DataLoaders are
    collected). Python reports an exception raised there as "Exception ignored in" and goes
    on, as if the Ctrl-C or SIGTERM had not come. So the signal is sent to the main thread
    again 10 ms later, by when this hook has usually returned (sent from here, its handler would
    run at once, in the hook, and be ignored again); where it meets another finalizer, it comes
    back here, and where it meets this hook still running, it is sent again from here.
    """
    stop = unraisable.exc_value
    if not isinstance(stop, KeyboardInterrupt):
        previous_hook(unraisable)
        return
    while True:
        try:
            _send_again(stop)
            return
        except KeyboardInterrupt as late:
            # The signal sent again came before this hook returned: a loaded machine can hold
            # the main thread here past the 10 ms. Raised out of the hook, it would be reported
            # as the hook's own failure and the stop lost (a SIGTERM's for good: _stopping set).
            stop = late


def _send_again(stop: KeyboardInterrupt) -> None:
    """Send the signal that raised ``stop`` to the main thread again, 10 ms from now."""
    if isinstance(stop, Terminated):
        _stopping.clear()  # this stop never began
        signum = signal.SIGTERM
    elif _stopping.is_set():  # a Ctrl-C while the script exits adds nothing to its stop
        return
    else:
        signum = signal.SIGINT
    again = threading.Timer(0.01, _signal_main_thread, (signum,))
    again.daemon = True  # an exit does not wait for it
    again.start()


def _signal_main_thread(signum: int) -> None:
    if hasattr(signal, "pthread_kill"):  # a real signal: it also ends a wait in a system call
        signal.pthread_kill(threading.main_thread().ident, signum)
    else:  # Windows: the handler runs when the main thread next runs Python code
        _thread.interrupt_main(signum)


def leave_stop_signals_to_main(main_pid: int, worker_id: int) -> None:
    """A DataLoader's ``worker_init_fn``, given the main process's pid (``functools.partial``):
    the worker ignores Ctrl-C, and SIGTERM from anyone but that process, which stops it as it
    stops itself.

    Schedulers and service managers signal every process of a job (Slurm's scancel and time
    limit, systemd's control-group kill, torchrun's signal to each process's group), and a
    terminal's Ctrl-C reaches the whole foreground process group. A worker killed by such a
    SIGTERM makes PyTorch's check of its workers raise "DataLoader worker ... is killed by
    signal" in the main process, wherever that is: a traceback after its clean stop. The main
    process's own SIGTERM (sent to a worker that hangs at shutdown) still ends the worker, read
    by a thread here: a Python signal handler cannot tell who sent a signal. A spawned worker
    has another, native thread by then, which blocks SIGTERM only if the worker started with it
    blocked (worker_context).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS, Windows: the sender cannot be read
        return
    parent = os.getppid()  # the main process, or a forkserver that ends with it

    def obey_the_main_process() -> None:
        while signal.sigwaitinfo({signal.SIGTERM}).si_pid != main_pid:
            if os.getppid() != parent:  # orphaned: the main process is gone
                break
        os._exit(0)  # as PyTorch's handler exits

    # Blocked here before the thread starts: it and every later thread inherit the mask, so
    # SIGTERM waits for sigwaitinfo instead of reaching a handler.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=obey_the_main_process, daemon=True).start()


# The stop signals that DataLoader workers start with blocked (see worker_context): SIGTERM only
# where leave_stop_signals_to_main reads its sender, for the main process still to end a worker.
_BLOCKED_AT_START = (
    {signal.SIGINT, signal.SIGTERM} if hasattr(signal, "sigwaitinfo") else {signal.SIGINT}
)


class _StartsWithStopSignalsBlocked:
    """A process whose signal mask, at its start, holds _BLOCKED_AT_START: a forked child and a
    spawned one (across exec) take the mask of the thread that starts them, and so does every
    thread they start."""

    def start(self) -> None:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED_AT_START)
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


if hasattr(signal, "pthread_sigmask"):  # not on Windows, which has no signal masks
    # At module level: a spawned child unpickles its process object, and so imports its class.
    class _ForkWorker(_StartsWithStopSignalsBlocked, multiprocessing.context.ForkProcess):
        pass

    class _SpawnWorker(_StartsWithStopSignalsBlocked, multiprocessing.context.SpawnProcess):
        pass

    class _ForkWorkers(multiprocessing.context.ForkContext):
        Process = _ForkWorker

    class _SpawnWorkers(multiprocessing.context.SpawnContext):
        Process = _SpawnWorker


def worker_context() -> multiprocessing.context.BaseContext | None:
    """The ``multiprocessing_context`` of the DataLoaders' workers: this process's start method
    (multiprocessing.set_start_method's, else the platform's default), with processes that start
    with _BLOCKED_AT_START blocked; None (PyTorch's choice) on Windows.

    A worker started by spawn runs a native thread before its worker_init_fn, which cannot block
    a signal for it there (leave_stop_signals_to_main): the job's SIGTERM, taken by that thread,
    ended the worker, and PyTorch printed its traceback after the main process's clean stop.
    Where the start method is the forkserver (Linux from Python 3.14), the workers are spawned
    instead: a forkserver's children take its mask, not this process's, and a forkserver started
    here with these signals blocked would pass them on to every later child it forks, a user's
    own too.
    """
    if not hasattr(signal, "pthread_sigmask"):
        return None
    method = multiprocessing.get_start_method(allow_none=True)
    method = method or multiprocessing.get_all_start_methods()[0]  # the first is the default
    return _ForkWorkers() if method == "fork" else _SpawnWorkers()


def _say(line: str) -> None:
    """Write one line to stderr in a single write: print's two (the text, then its end) let
    another process on the same stream, torchrun's log, cut in between ("interruptedW1130 ...")."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def _report_error(err: UserError) -> None:
    """Print a user error as the scripts do before they exit with code 2, once: an error
    reported early (check_on_main_process) is not printed again on the way out."""
    if not getattr(err, "reported", False):
        _say(f"error: {err}")
        err.reported = True


def _rank_0() -> bool:
    """Whether torchrun started this process as rank 0, or none started it: read from the
    environment, as the process group may not exist yet, or any more."""
    return os.environ.get("RANK", "0") == "0"


def run_script(main: Callable[[], None]) -> None:
    """Run a script's main, turning user errors, Ctrl-C and SIGTERM into a message and exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # libraries: warnings only
    # Under torchrun rank 0 alone reports, from the start: the command line is read (and a
    # --resume's settings named) before the process group exists.
    log.setLevel(logging.INFO if _rank_0() else logging.WARNING)
    # A report's class names and paths may hold characters that stdout's encoding lacks: a
    # Windows code page where the output goes to a file or a pipe. Escaped, not a traceback.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
    # SIGTERM (kill, schedulers, container stops) takes the same clean path as Ctrl-C.
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = functools.partial(_stop_again, sys.unraisablehook)
    stopped = False
    try:
        main()
    except UserError as err:
        _report_error(err)
        sys.exit(2)
    except KeyboardInterrupt:
        _stopping.set()
        if _rank_0():  # under torchrun the others stop without a word
            _say("interrupted")
        stopped = True
    except Exception as err:
        if not out_of_memory(err):
            raise
        # a --batch or --imgsz too large for the device: its first words say how much was asked
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _say(f"error: out of memory ({detail[:200]}); {memory_advice(sys.argv)}")
        sys.exit(1)
    if stopped:  # out of the except clause: the stop's traceback no longer holds main's
        _let_loaders_close()  # frames, and so the DataLoaders they held
        sys.exit(130)


# the scripts that run a model but have no --batch, which the advice must not name
WITHOUT_BATCH_FLAG = ("export.py", "bench_cache.py", "model.py")


def memory_advice(argv: Sequence[str]) -> str:
    """What to lower after running out of memory, for the command line ``argv`` (sys.argv):
    --batch (where the script has one) or --imgsz, and what else of it takes memory in
    proportion."""
    given = {arg.split("=")[0] for arg in argv[1:]}
    batch = Path(argv[0]).name not in WITHOUT_BATCH_FLAG
    advice = "lower --batch or --imgsz" if batch else "lower --imgsz"
    if "--tta" in given:  # each view at up to the largest scale's size
        advice += ", or the largest of --tta-scales"
    if Path(argv[0]).name == "train.py":
        advice += " (--accum K keeps the batch size: K steps of a lower --batch, one update)"
    pairs = zip(argv, [*argv[1:], ""], strict=True)  # each word and the next
    if ("--cache-features", "memory") in pairs or "--cache-features=memory" in argv:
        advice += "; --cache-features disk keeps the features out of memory"
    return advice


def free_memory(device: torch.device) -> int | None:
    """Bytes that new tensors on ``device`` can take at most: CUDA's free memory and what
    PyTorch holds cached there; on Linux MemAvailable and free swap, within this cgroup's limit
    where it has one and no swap; None where it cannot be read (MPS, macOS, Windows)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        kib = {name: int(value.split()[0]) for name, value in (x.split(":", 1) for x in lines)}
        free = (kib["MemAvailable"] + kib.get("SwapFree", 0)) * 1024
    except (OSError, ValueError, KeyError):  # not Linux, or a kernel before 3.14
        return None
    if kib.get("SwapTotal", 0) == 0:
        # a container's limit (cgroup v2) kills a process before the machine runs out
        with contextlib.suppress(OSError, ValueError):
            cgroup = Path("/sys/fs/cgroup")
            limit = int((cgroup / "memory.max").read_text())  # "max": no limit, a ValueError
            free = min(free, limit - int((cgroup / "memory.current").read_text()))
    return free


def check_memory(needed: int, device: torch.device, what: str, advice: str) -> None:
    """Refuse to start a run whose ``needed`` bytes, a lower bound of what it holds at once on
    ``device``, exceed all that it could get (free_memory): past it, the CPU run was killed
    outright (SIGKILL, no message) or the CUDA one failed after loading everything.

    ``what`` names the settings that need it, ``advice`` what to lower."""
    free = free_memory(device)
    if free is not None and needed > free:
        place = "the GPU" if device.type == "cuda" else "this machine"
        raise UserError(
            f"{what} needs at least {needed / 2**30:.1f} GB of memory, and {place} has "
            f"{max(free, 0) / 2**30:.1f} GB free: {advice}"
        )


def _let_loaders_close(timeout: float = 5.0) -> None:
    """Collect the DataLoaders that a stop left, here, and wait (``timeout`` seconds at most) for
    the threads that feed their worker queues to end.

    A DataLoader whose workers were spawned (macOS, forkserver) holds named semaphores, each
    registered with multiprocessing's resource tracker, a process of its own. Collected at exit
    by a feeder thread, a daemon that the interpreter stops where it is, a semaphore was removed
    and not unregistered, and the tracker printed "leaked semaphore" warnings after "interrupted".
    """
    try:
        gc.collect()  # the loaders' queues are closed here, in the main thread
        deadline = time.monotonic() + timeout
        for thread in threading.enumerate():
            if thread.name == "QueueFeederThread":  # multiprocessing.queues.Queue's
                thread.join(max(0.0, deadline - time.monotonic()))
    except KeyboardInterrupt:  # a second Ctrl-C: the stop goes on, without waiting
        pass


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says the device or the CPU ran out of memory: torch's OutOfMemoryError
    (CUDA), NumPy's MemoryError, and the RuntimeErrors of PyTorch's CPU allocator ("can't
    allocate memory") and of MPS or a CUDA library ("out of memory")."""
    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text
    )


def _read_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


# Read once, at import: os.umask can only be read by setting it, which would race with threads.
_UMASK = _read_umask()


def temp_prefix(name: str, limit: int = 120) -> str:
    """``.NAME.`` for a temporary file beside NAME, cut to ``limit`` bytes of NAME.

    A file name may have 255 bytes; the temporary name adds its own characters to NAME, so a
    long NAME (a long title, a few dozen CJK characters) would not fit in full. The cut falls
    between characters, so the name stays valid UTF-8 (which macOS requires). Bytes of NAME that
    are not UTF-8 (a Latin-1 name on Linux, which Python holds as surrogates) are left out.
    """
    return f".{name.encode(errors='surrogatepass')[:limit].decode(errors='ignore')}."


def temp_folder(dest: Path) -> Path:
    """A new empty folder beside ``dest`` to build it in, with the permissions a plain mkdir
    gives: mkdtemp's are private (0700), and a folder renamed into place would keep them."""
    folder = Path(tempfile.mkdtemp(prefix=temp_prefix(dest.name), dir=dest.parent))
    folder.chmod(0o777 & ~_UMASK)
    return folder


def leftover_folders(dest: Path) -> list[Path]:
    """The folders that temp_folder made beside ``dest`` and no run removed: those of runs killed
    outright (SIGKILL, a power cut: no handler runs), or of a run still writing."""
    return [p for p in _temp_names(dest, "") if p.is_dir()]


def leftover_files(dest: Path, suffix: str) -> list[Path]:
    """The files that atomic_path(dest, suffix) made and no run removed, as leftover_folders."""
    return [p for p in _temp_names(dest, suffix) if p.is_file()]


def _temp_names(dest: Path, suffix: str) -> list[Path]:
    """The paths beside ``dest`` named as mkstemp and mkdtemp name its temporary files and
    folders: temp_prefix, 8 of these characters, ``suffix``."""
    pattern = re.escape(temp_prefix(dest.name)) + "[a-z0-9_]{8}" + re.escape(suffix)
    try:
        beside = list(dest.parent.iterdir())
    except OSError:  # missing or unreadable: the caller's own checks name it
        return []
    return sorted(p for p in beside if re.fullmatch(pattern, p.name))


def _settle(file: Path) -> None:
    """Ready a finished temporary file for its rename: the permissions a plain open() would
    give, and on disk first, so a crash cannot leave an empty file under the final name."""
    file.chmod(0o666 & ~_UMASK)
    with open(file, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def new_folder(folder: Path) -> Iterator[None]:
    """Create ``folder`` and its missing parents for the block; if the block fails, remove
    those it created that are still empty, so that a failed run leaves no empty folders."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # the deepest first
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for p in missing:
            try:
                p.rmdir()
            except OSError:  # written into meanwhile (by another run, another process): kept
                break
        raise


@contextlib.contextmanager
def atomic_path(dest: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; it replaces ``dest`` only if the block succeeds.

    Readers therefore see the old file or the new one, never a half-written one. ``suffix``
    ends the temporary name, for writers that choose the format from it (VideoWriter).
    """
    dest = Path(dest)
    with new_folder(dest.parent):
        fd, name = tempfile.mkstemp(prefix=temp_prefix(dest.name), suffix=suffix, dir=dest.parent)
        # Everything after mkstemp is inside the try: a Ctrl-C or SIGTERM is raised wherever
        # the main thread is, and one raised in Path() left the file behind.
        try:
            os.close(fd)
            tmp = Path(name)
            yield tmp
            _settle(tmp)  # mkstemp made it private (0600)
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


@contextlib.contextmanager
def atomic_files(dest: Path) -> Iterator[Path]:
    """Like atomic_path, for writers that may add files named after ``dest`` beside it (an ONNX
    graph's external weights, ``NAME.data``, which the graph names and so must not be renamed).

    Yields ``dest``'s name inside a private temporary folder beside it. Only if the block
    succeeds does every file written there move into place, ``dest`` last, so ``dest`` never
    appears before the files it refers to.
    """
    dest = Path(dest)
    with new_folder(dest.parent):
        prefix = temp_prefix(dest.name)
        name = tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=dest.parent)
        try:  # from mkdtemp on, as in atomic_path
            folder = Path(name)
            yield folder / dest.name
            files = sorted(folder.iterdir(), key=lambda f: f.name == dest.name)
            for file in files:
                _settle(file)  # some writers (ONNX's external data) create their files private
            for file in files:
                os.replace(file, dest.parent / file.name)
        finally:
            shutil.rmtree(name, ignore_errors=True)


def check_writable(
    folder: Path, needed_bytes: int, flag: str = "--out-dir", purpose: str = "its outputs"
) -> None:
    """Fail before any work if ``folder`` cannot be written or lacks ``needed_bytes`` of space.

    A missing ``folder`` is not created here, but only by the first file written into it
    (atomic_path), so that a run that stops before then leaves no empty folder: its nearest
    existing parent, where it would be created, is checked instead.
    """
    base = existing_parent(folder)
    if not base.exists():  # a broken link, where mkdir would only say "File exists"
        what = "a loop of links" if links_in_a_loop(base) else "a link to nothing"
        raise UserError(f"{flag} {folder} is not writable: {base} is {what}")
    if not base.is_dir():
        what = "it" if base == Path(folder).absolute() else str(base)
        raise UserError(f"{flag} {folder} is not writable: {what} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=base, prefix=".write-check-"):
            pass
    except OSError as err:
        raise UserError(f"{flag} {folder} is not writable: {err.strerror or err}") from err
    free = shutil.disk_usage(base).free
    if free < needed_bytes:
        raise UserError(
            f"{flag} {folder} has {free / 2**20:.0f} MB free, but this run needs about "
            f"{needed_bytes / 2**20:.0f} MB for {purpose}; free some space or choose "
            "another folder"
        )


def existing_parent(path: Path) -> Path:
    """``path`` (made absolute) if it exists, else its nearest parent that does, or the first
    broken link on the way up (a link to nothing, which no folder can be created at)."""
    path = Path(path).absolute()
    while not path.exists() and not path.is_symlink() and path != path.parent:
        path = path.parent
    return path


def links_in_a_loop(path: Path) -> bool:
    """Whether ``path`` is a link that leads, through others, back to itself."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False


def is_utf8(path) -> bool:
    """Whether ``path`` is UTF-8, as libraries that take paths to C++ need: a Latin-1 name on
    Linux, which Python holds as surrogates, is not."""
    try:
        str(path).encode()
    except UnicodeEncodeError:
        return False
    return True


def check_utf8(path, flag: str, reader: str, remedy: str) -> None:
    """Refuse a path that is not UTF-8 (is_utf8) before ``reader``, a library that cannot take
    it, fails or crashes on it; the message names ``flag`` and ``remedy``."""
    if not is_utf8(path):
        raise UserError(
            f"{flag} {path} is not UTF-8, which {reader} cannot take as a path: {remedy}"
        )


def within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, neither needing to exist.

    Folders are compared by identity (device and inode) where they exist: on a case-insensitive
    file system (macOS, Windows) ../Proj is the folder proj, and a mount can show one folder at
    two paths, which a comparison of resolved paths misses. Where ``folder`` does not exist,
    nothing existing lies inside it, and the resolved paths are compared.
    """
    path, folder = path.resolve(), folder.resolve()
    try:
        identity = folder.stat()
    except OSError:
        return folder == path or folder in path.parents
    for part in (path, *path.parents):
        with contextlib.suppress(OSError):
            if os.path.samestat(part.stat(), identity):
                return True
    return False


def same_folder(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one folder, compared as ``within`` compares them."""
    return within(a, b) and within(b, a)


def torch_save(obj, path: Path) -> None:
    """torch.save, with a write the file system cut short raised as an OSError.

    PyTorch's zip writer reports a full disk, a quota or a file size limit as a RuntimeError
    ("unexpected pos ..."), which the callers' handling of failed writes would miss.
    """
    try:
        torch.save(obj, path)
    except RuntimeError as err:
        if "unexpected pos" not in str(err) and "file write failed" not in str(err):
            raise
        raise OSError("the file system took only part of a file: is the disk full?") from err


def write_text(dest: Path, text: str) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text)


def write_image(path: Path, image, format: str, **params) -> None:
    """Save a PIL image to ``path``, raising OSError if the file system takes less than all of it.

    Pillow's encoders write to a file descriptor themselves and ignore a short write: on a full
    disk (or past a file size limit) it left a truncated JPEG and reported success. Encoded in
    memory first, the bytes go through Python's file writes, which retry short writes and raise.
    """
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    Path(path).write_bytes(buffer.getbuffer())


def link_or_copy(source: Path, dest: Path) -> None:
    """Make ``dest`` a hard link to the file ``source``, or a copy of it where the file system
    refuses one (another disk, a file system without hard links, a file of another user's under
    Linux's protected_hardlinks).

    A hard link, not a symbolic one: the dataset keeps its images when the source is moved or
    deleted, and a disk holds the tens of gigabytes of a public dataset's images once. An
    existing ``dest`` is an error (FileExistsError), never copied into: it may be a hard link
    to another source, whose bytes the copy would overwrite.
    """
    try:
        os.link(source, dest)
    except FileExistsError:
        raise
    except OSError:  # copying fails in its turn where the cause was dest's (a full disk)
        shutil.copyfile(source, dest)


def write_png(path: Path, array: np.ndarray) -> None:
    """Save an (H, W) uint8 array (a mask of class ids) as a grayscale PNG at ``path``.

    OpenCV's encoder, not Pillow's: for a 1920x1080 mask 4.4 instead of 16 ms (0/1 blobs) and
    5.3 instead of 25 ms (a random model's ragged masks), in files within 10% of the size; the
    pixels read back are the same. The bytes go through Python's file writes, as write_image's.
    """
    import cv2

    if array.ndim != 2 or array.dtype != np.uint8:
        raise ValueError(f"write_png takes an (H, W) uint8 array, not {array.shape} {array.dtype}")
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array))
    if not ok:
        raise OSError(f"OpenCV could not encode a {array.shape} PNG")
    Path(path).write_bytes(data.data)


def write_json(dest: Path, obj) -> None:
    write_text(dest, json.dumps(obj, indent=2) + "\n")


def write_csv(dest: Path, rows: Sequence[dict]) -> None:
    """Write dict rows (all with the keys of the first) as a CSV file, atomically."""
    with atomic_path(dest) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    """Read a CSV written by write_csv, with numbers parsed back to float (epoch to int).

    A byte-order mark, which spreadsheets add when they save a CSV as UTF-8, is skipped.
    """
    with Path(path).open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    return [{k: int(v) if k == "epoch" else float(v) for k, v in row.items()} for row in rows]


# Seconds a download may wait for the server's next bytes before it gives up: torch.hub's
# downloads set no timeout, and a connection that goes silent (a proxy or a network that drops
# it midway) would leave the run waiting forever.
NETWORK_TIMEOUT = 60


@contextlib.contextmanager
def network_timeout() -> Iterator[None]:
    """Sockets opened in the block give up after NETWORK_TIMEOUT seconds without a byte (an
    OSError: TimeoutError, or URLError from urllib); a slow download that keeps coming is
    unaffected."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(NETWORK_TIMEOUT)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def pick_device(name: str) -> torch.device:
    """Resolve --device: auto tries CUDA, then MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(
            "--device cuda was asked for, but PyTorch sees no CUDA GPU here: pass --device auto "
            "or --device cpu"
        )
    if name == "mps" and not torch.backends.mps.is_available():
        # A Mac build still has no MPS device before macOS 12.3, and in a virtual machine (most
        # hosted CI runners), which gives it no Metal GPU
        why = (
            "this Mac gives PyTorch no MPS device (it needs macOS 12.3 or later and a Metal GPU, "
            "which virtual machines lack)"
            if torch.backends.mps.is_built()
            else "this PyTorch build has no MPS support (MPS is for Macs)"
        )
        raise UserError(
            f"--device mps was asked for, but {why}: pass --device auto or --device cpu"
        )
    return torch.device(name)


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when started by torchrun (WORLD_SIZE > 1).

    Returns:
        (rank, world size, this process's device): NCCL and cuda:LOCAL_RANK on CUDA, gloo on the
        CPU. A single process returns (0, 1, device) and starts nothing.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device.type == "mps":
        raise UserError("torchrun training runs on CUDA or the CPU, not MPS: pass --device cpu")
    if device.type == "cuda" and not dist.is_nccl_available():
        # PyTorch's Windows builds have gloo only, which lacks the GPU collectives used here
        raise UserError(
            "torchrun training on CUDA needs NCCL, which this PyTorch build lacks (as on "
            "Windows): train on one GPU without torchrun, or pass --device cpu"
        )
    if device.type == "cuda":
        local_rank, gpus = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if local_rank >= gpus:
            raise UserError(
                f"torchrun started process {local_rank} on this machine, but it has only {gpus} "
                f"CUDA GPU(s): pass --nproc_per_node {gpus} or fewer, or --device cpu"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    # torch._dynamo (imported by DistributedDataParallel and timm) keeps references to a process
    # group that exists when it is imported, which destroy_process_group cannot drop: the group
    # would then live, and its threads run, until the interpreter's exit, which they can abort.
    importlib.import_module("torch._dynamo")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def in_process_group() -> bool:
    """Whether this process has joined torchrun's process group (setup_distributed)."""
    return dist.is_available() and dist.is_initialized()


def leave_distributed() -> None:
    """Destroy the process group, if any: call it in the ``finally`` block around a run.

    An exception on its way out keeps the locals of every frame it left, and so
    DistributedDataParallel, which holds the process group. Destroyed then, the group's gloo
    threads would live on into the interpreter's exit and could abort it there (SIGABRT rather
    than the error's exit code). So those locals are cleared first; the traceback still prints.
    """
    if not in_process_group():
        return
    leaving = sys.exc_info()[2]
    if leaving is not None:
        traceback.clear_frames(leaving)
    del leaving
    gc.collect()  # DistributedDataParallel's hooks make reference cycles
    dist.destroy_process_group()


def is_main_process() -> bool:
    """True in a single process, and in rank 0 under torchrun: the one that logs and writes."""
    return not in_process_group() or dist.get_rank() == 0


def warn_on_main_process(message: str, *args: Any) -> None:
    """``log.warning`` in rank 0 alone: for a warning that every process under torchrun would
    give alike (they read the same command line and checkpoint)."""
    if is_main_process():
        log.warning(message, *args, stacklevel=2)


def check_on_main_process(check: Callable[[], None]) -> None:
    """Run ``check`` in rank 0 alone; if it raises a UserError, stop every process.

    Rank 0 raises the error (and so reports it); under torchrun the others exit quietly with
    the same code, rather than run on into the same problem (a traceback) or wait in a
    collective that rank 0 never reaches. Rank 0 prints the error before the others learn of
    it: the first process to exit makes torchrun end the rest, rank 0 too, perhaps before its
    error would have reached run_script.
    """
    error = None
    if is_main_process():
        try:
            check()
        except UserError as err:
            error = err
    if in_process_group():
        if error is not None:
            _report_error(error)
        found = [error is not None]
        dist.broadcast_object_list(found, src=0)
        if found[0] and dist.get_rank() != 0:
            raise SystemExit(2)  # run_script's exit code for a UserError
    if error is not None:
        raise error


def on_main_process(compute: Callable[[], Any]) -> Any:
    """``compute()`` run in rank 0 alone, its result (any picklable value) given to every process:
    a check whose problems and warnings are then reported once, not by each process. A UserError
    stops every process, as in check_on_main_process."""
    result = [None]

    def run() -> None:
        result[0] = compute()

    check_on_main_process(run)
    if in_process_group():
        dist.broadcast_object_list(result, src=0)
    return result[0]


def gather_objects(obj: Any) -> list:
    """Every process's ``obj`` (any picklable value), in rank order: ``[obj]`` in a single
    process."""
    if not in_process_group():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors in place across processes; nothing happens in a single process."""
    if in_process_group():
        for t in tensors:
            dist.all_reduce(t)


# How gloo's collectives fail where another process of the group has gone (exited on an error
# of its own, or killed): its connection to this one closed under a send or a receive.
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


def raise_if_another_process_stopped(err: BaseException, during: str, kept: str = "") -> None:
    """Turn ``err`` into one message where it is a collective's failure because another process
    of the group has gone: that process reports its own error, and this one's traceback would
    only bury it. ``during`` says when ("during epoch 3"), ``kept`` (with its separator) what
    the run keeps."""
    if in_process_group() and any(text in str(err) for text in PEER_GONE):
        raise UserError(
            f"another process stopped {during}, and this one with it (its error: line, or "
            f"torchrun's report of its exit, says why){kept}"
        ) from err


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics), as checkpoints hold."""
    if in_process_group():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; otherwise this process's peak resident memory, or
    nan where it cannot be read (Windows has no ``resource`` module)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource  # POSIX only: not on Windows
    except ImportError:
        return math.nan

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def memory_report(device: torch.device) -> str:
    """A run's memory for its final line, "" where nothing can be read: "peak GPU memory 812 MB"
    on CUDA, "peak memory 812 MB resident" elsewhere.

    On MPS the resident figure may leave out the GPU's own buffers (Metal's private storage,
    outside the process's address space), and MPS keeps no peak: what its driver holds at the
    end is added, which its allocator's cache of freed buffers keeps near the peak.
    """
    peak = peak_memory_mb(device)
    if device.type == "cuda":
        return f"peak GPU memory {peak:.0f} MB"
    parts = [f"peak memory {peak:.0f} MB resident"] if math.isfinite(peak) else []
    if device.type == "mps":
        parts.append(f"{torch.mps.driver_allocated_memory() / 2**20:.0f} MB held by MPS at the end")
    return ", ".join(parts)


def torch_version() -> tuple[int, int]:
    """(major, minor) of the running PyTorch, e.g. (2, 14) for "2.14.1+cu130"."""
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int(minor)


# GradScaler's kernels for MPS, and its unscaling there without float64, came with torch 2.8
# (pytorch/pytorch#150255, which fixed #142397)
MPS_GRAD_SCALER_MIN_TORCH = (2, 8)


def check_grad_scaler(amp: str, device: torch.device) -> None:
    """Refuse --amp fp16 training on MPS where this PyTorch's GradScaler cannot run there.

    torch 2.7's GradScaler.unscale_ takes the scale's reciprocal in float64, which MPS lacks: the
    first optimizer step raised "Cannot convert a MPS Tensor to float64 dtype", a TypeError that
    PYTORCH_ENABLE_MPS_FALLBACK does not catch (pytorch/pytorch#142397).
    """
    if amp != "fp16" or device.type != "mps" or torch_version() >= MPS_GRAD_SCALER_MIN_TORCH:
        return
    floor = ".".join(map(str, MPS_GRAD_SCALER_MIN_TORCH))
    raise UserError(
        f"--amp fp16 training on MPS needs torch {floor} or later for its gradient scaler; this "
        f"is {torch.__version__}: upgrade torch, or train with --amp off (inference with --amp "
        "fp16 runs on MPS without it)"
    )


# The reduced precisions of --amp, by name; config.AMP_CHOICES adds "off" to these.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The device types each of them runs on here. MPS takes fp16 alone: its bf16 needs macOS 14 or
# later, and no Mac has run it with this code.
AMP_DEVICES = {"bf16": ("cuda", "cpu"), "fp16": ("cuda", "mps")}


def amp_advice(device_type: str, instead_of: str | None = None) -> str:
    """The --amp values to suggest on ``device_type``, for messages: "--amp fp16 or --amp off"
    on MPS; ``instead_of`` (a precision the run cannot use, or gave up on) left out."""
    modes = [amp for amp, devices in AMP_DEVICES.items() if device_type in devices]
    return " or ".join(f"--amp {amp}" for amp in [*modes, "off"] if amp != instead_of)


def amp_dtype(amp: str, device: torch.device, training: bool = False) -> torch.dtype | None:
    """The reduced-precision dtype for --amp, or None for full precision.

    bf16 runs on CUDA and on CPUs (fast where they have AVX-512 BF16 or AMX); fp16 on CUDA and
    MPS. ``training`` also refuses what this PyTorch's gradient scaler cannot train with (see
    check_grad_scaler).
    """
    if training:
        check_grad_scaler(amp, device)
    if amp == "off":
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be 'off' or one of {list(AMP_DTYPES)}, not {amp!r}")
    supported = AMP_DEVICES[amp]
    if device.type not in supported:
        raise UserError(
            f"--amp {amp} needs a {' or '.join(supported)} device; this run uses {device.type}: "
            f"use {amp_advice(device.type, amp)}"
        )
    bf16_on_gpu = amp == "bf16" and device.type == "cuda"
    if bf16_on_gpu and not torch.cuda.is_bf16_supported(including_emulation=False):
        log.warning(
            "--amp bf16: this GPU has no bf16 arithmetic of its own (it arrived with Ampere, "
            "compute capability 8.0); PyTorch emulates it, slowly. Use --amp fp16 on this GPU."
        )
    if amp == "bf16" and device.type == "cpu" and cpu_has_bf16_arithmetic() is False:
        log.warning(
            "--amp bf16: this CPU has no bf16 matrix instructions (AVX-512 BF16, AMX or Arm's "
            "BF16); PyTorch emulates bf16 here, usually slower than --amp off. Compare both with "
            "benchmarks/bench_inference.py."
        )
    return AMP_DTYPES[amp]


def cpu_has_bf16_arithmetic() -> bool | None:
    """Whether this CPU multiplies bf16 in hardware (AVX-512 BF16, AMX or Arm's BF16), or None
    where this PyTorch cannot tell."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # recent PyTorch
    if capabilities is not None:
        found = capabilities()
        return any(found.get(k, False) for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    probes = [getattr(torch.cpu, f"_is_{k}_supported", None) for k in ("avx512_bf16", "amx_tile")]
    if not x86 or None in probes:
        return None
    return any(probe() for probe in probes)


def _triton_compiler_missing() -> str | None:
    """Why Triton would find no C compiler, or None when it finds one."""
    if sys.platform == "win32":
        # Triton's Windows port (triton-windows) finds Visual Studio's compiler or the TinyCC it
        # bundles, neither of them on PATH: its own search decides
        try:
            from triton.runtime.build import get_cc
        except ImportError:  # no Triton, or another port: torch.compile names what is missing
            return None
        try:
            get_cc()
        except RuntimeError as err:
            return str(err)
        return None
    # Triton's own search: $CC, else gcc, else clang
    if os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang"):
        return None
    return "gcc or clang on PATH, or $CC"


def check_compiler(flag: str, device: torch.device) -> None:
    """torch.compile builds C++ kernels on the CPU, and Triton builds a C launcher for its CUDA
    kernels: without a working compiler, refuse ``flag`` now rather than fail at the first
    batch."""
    if device.type == "cuda":
        if (missing := _triton_compiler_missing()) is not None:
            raise UserError(
                f"{flag} on CUDA needs a C compiler, which Triton uses to build its kernels' "
                f"launcher, and none was found ({missing}). Install gcc (on Windows, reinstall "
                f"triton-windows, which bundles one, or Visual Studio's C++ tools), or drop {flag}"
            )
        return
    if device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # another PyTorch layout: compilation will say it itself
        return
    try:
        get_cpp_compiler()
    except Exception as err:  # Inductor's InvalidCxxCompiler
        raise UserError(
            f"{flag} compiles C++ kernels on the CPU, and no working C++ compiler was found "
            f"({err}). Install one (g++ on Linux, Xcode's command line tools on macOS, Visual "
            f"Studio's C++ tools on Windows) or drop {flag}"
        ) from err


def check_int8_cpu() -> None:
    """Warn where --int8 is unlikely to pay: int8 matrix multiplies (``torch._int_mm``) are fast
    on x86 CPUs with int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if x86 and capabilities is None:
        return  # an older PyTorch that cannot tell
    dot = ("avx512_vnni", "avx_vnni", "amx_int8")
    if not x86 or not any(capabilities().get(k, False) for k in dot):
        log.warning(
            "--int8: this CPU has no int8 dot-product instructions that PyTorch's int8 kernels "
            "use (x86 with AVX-512 VNNI, AVX-VNNI or AMX); it may run slower than float32. "
            "Compare both with benchmarks/bench_inference.py."
        )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# the curves plot_curves draws: (metrics.csv column without its split, title, file name)
CURVES = (
    ("loss", "Loss", "loss.png"),
    ("acc", "Pixel accuracy", "accuracy.png"),
    ("miou", "mIoU", "miou.png"),
)


def plot_curves(history: Sequence[dict], out_dir: Path) -> None:
    """Redraw loss.png, accuracy.png and miou.png (train and valid curves) from metrics rows.

    A Ctrl-C or SIGTERM meanwhile waits until they are drawn (stops_held): matplotlib keeps
    its figures as global state, which a stop raised between two of its steps may leave
    half-made.
    """
    with stops_held():
        _draw_curves(history, out_dir)


def _draw_curves(history: Sequence[dict], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    for key, title, name in CURVES:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for split, color in (("train", "tab:blue"), ("valid", "tab:orange")):
            ax.plot(
                epochs, [row[f"{split}_{key}"] for row in history], "o-", color=color, label=split
            )
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(set(epochs)) == 1:
            # a single point: matplotlib pads the view by a fraction of an epoch, where the
            # integer locator finds no two whole epochs and falls back to 0.945, 0.960, ...
            ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
            ax.set_xticks(epochs[:1])
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        # tight_layout leaves a placeholder layout engine, for which savefig draws the whole
        # figure once more before the drawing it saves (a quarter of its time): the layout is done
        fig.set_layout_engine(None)
        with atomic_path(out_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)


# --eval-only's, drawn by plot_confusion: one for each way it scores the valid split
CONFUSION_PLOTS = {
    "plain": "confusion_matrix.png",
    "tta": "confusion_matrix_tta.png",
    "slide": "confusion_matrix_slide.png",
}
CELL_VALUES_UP_TO = 20  # classes whose cells show their share; more leave too small a cell
CONFUSION_SIDE = (3.0, 16.0)  # inches of the matrix: from 0.45 a class, within these bounds
TICK_FONT = (5.0, 9.0)  # points: below the least, every n-th class is named instead
LABEL_CHARS = 24  # a longer class name is cut in the tick labels, which would crowd the matrix


def plot_confusion(
    matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path, title: str = ""
) -> None:
    """Draw ``path`` (one of CONFUSION_PLOTS): the (K, K) pixel counts ``matrix`` (rows = ground
    truth, cols = prediction, in class-id order) with each row divided by its sum, so that the
    diagonal holds each class's recall, named by ``names`` (K) on both axes. A class in no mask
    has no row to divide: its row stays blank. ``title`` follows "Confusion matrix" (" with
    TTA")."""
    fig = confusion_figure(matrix, names, title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi="figure")


def confusion_figure(matrix: Sequence[Sequence[int]], names: Sequence[str], title: str = ""):
    """plot_confusion's matplotlib Figure, its first axes the matrix: its size grows with the K
    classes within CONFUSION_SIDE, its tick labels as large as a row allows within TICK_FONT,
    every n-th class named where the least is too large."""
    # a Figure of its own, not pyplot's: no global state that a stop could leave half-made
    # (plot_curves holds stops for that), and nothing to close
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.float64)
    k = len(names)
    truth = counts.sum(1, keepdims=True)
    rows = np.divide(counts, truth, out=np.full_like(counts, np.nan), where=truth > 0)
    side = min(max(0.45 * k, CONFUSION_SIDE[0]), CONFUSION_SIDE[1])
    cell = side * 72 / k  # points
    font = min(TICK_FONT[1], 0.8 * cell)
    step = 1 if font >= TICK_FONT[0] else math.ceil(TICK_FONT[0] / font)
    font = max(font, TICK_FONT[0])
    labels = [n if len(n) <= LABEL_CHARS else n[: LABEL_CHARS - 1] + "\u2026" for n in names]
    margin = (max(map(len, labels)) * 0.5 * font + 40) / 72  # the tick labels and axis title
    # small tick labels get more pixels, to stay legible
    fig = Figure(figsize=(side + margin + 1.5, side + margin + 0.8), dpi=100 if font >= 7 else 150)
    ax = fig.subplots()
    # masked cells (a row without ground truth) are left undrawn: the white axes show
    image = ax.imshow(np.ma.masked_invalid(rows), cmap="Blues", vmin=0, vmax=1)
    ax.set_facecolor("white")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="share of the ground-truth row")
    ticks = np.arange(0, k, step)
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=90, fontsize=font)
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground-truth class")
    ax.set_title(f"Confusion matrix{title}\n(rows sum to 1; the diagonal is recall)")
    if k <= CELL_VALUES_UP_TO:
        for t in range(k):
            if truth[t, 0] == 0:
                ax.text(k / 2 - 0.5, t, "no ground-truth pixel", ha="center", va="center",
                        fontsize=8, color="0.4")  # fmt: skip
                continue
            for p in range(k):
                value = rows[t, p]
                ax.text(p, t, "0" if value == 0 else f"{value:.2f}", ha="center", va="center",
                        fontsize=8, color="white" if value > 0.5 else "black")  # fmt: skip
    fig.tight_layout()
    return fig


def colorize(mask: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class indices (< 256) -> (H, W, 3) uint8 RGB; pixels outside the palette stay
    black."""
    import cv2

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    lut = np.zeros((256, 1, 3), dtype=np.uint8)
    lut[: len(colors), 0] = np.asarray(colors, dtype=np.uint8)
    # OpenCV's table look-up: 10x faster than NumPy's fancy indexing on a video frame
    return cv2.LUT(cv2.merge([mask, mask, mask]), lut)


def draw_overlay(
    image: np.ndarray, mask: np.ndarray, colors: Sequence[Sequence[int]], alpha: float
) -> np.ndarray:
    """Blend class colours over an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) integer class indices 0-255, same H and W; pixels outside the palette are
            drawn black.
        colors: one RGB colour per class.
        alpha: weight of the colours, 0 to 1; class 0 is left unblended where its colour is
            black (background, in the default colours).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    import cv2

    # OpenCV throughout: 0.5 ms for a 640x480 frame, where float NumPy takes 22 ms.
    image = np.ascontiguousarray(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"the mask is {mask.shape}, its image {image.shape[:2]}: (H, W) of both")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    # colorize reads the mask as uint8: any other ids would wrap around (256 as background, 257
    # as class 1) or be truncated (0.7 as 0)
    if mask.dtype != np.uint8 and mask.size:
        if mask.dtype != bool and not np.issubdtype(mask.dtype, np.integer):
            raise ValueError(f"the mask holds {mask.dtype} values: pass integer class ids")
        if mask.min() < 0 or mask.max() > 255:
            raise ValueError(
                f"the mask holds values {mask.min()} to {mask.max()}: class ids are 0 to 255"
            )
    out = cv2.addWeighted(image, 1 - alpha, colorize(mask, colors), alpha, 0.0)
    # A black class 0 is background, which keeps the image's pixels; one given a colour is a
    # class like the others (Cityscapes' road, class 0 of its training ids)
    if len(colors) and tuple(colors[0]) == (0, 0, 0):
        background = np.ascontiguousarray(mask == 0).view(np.uint8)
        cv2.copyTo(image, background, out)
    return out


# --legend's key of class colours and names, drawn in an overlay's top-left corner
LEGEND_ROWS = 10  # rows at most, the last of them "+K more" where more classes are keyed
# text height (the font's ascent, which accented capitals reach) per pixel of the image's
# shorter side: 27 px on a 1080p frame, 54 px on a 4K one
LEGEND_TEXT = 0.025
LEGEND_MIN_TEXT = 10  # px: smaller text is unreadable (capitals 8 px high); no smaller key is drawn
LEGEND_SHADE = 0.35  # what the panel keeps of the image: dark enough for white text on any photo
LEGEND_HEIGHT = 0.5  # the share of the image's height the key may cover
# The text's typeface, DejaVu Sans: matplotlib ships it, and it draws class names in Latin,
# Greek and Cyrillic scripts as written, where OpenCV's own Hershey fonts draw ASCII alone
LEGEND_FONT_FILE = "fonts/ttf/DejaVuSans.ttf"  # within matplotlib.get_data_path()
HERSHEY_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX: the fallback where DejaVu Sans cannot be read
# Texts kept rendered, each about 25 kB at 1080p: a video's key draws the same few names on
# every frame, and rendering one anew takes 1.5 ms; legend_sheet names ADE20K's 150 classes
TEXT_BITMAPS = 256
TEXT_WIDTHS = 4096  # texts kept measured (0.2 ms each): fit_text measures cuts of a long name
# FreeType's faces are not to be used by two threads at once, and overlays are drawn on the
# inference scripts' writer thread and, for --show, on the main thread
_font_lock = threading.Lock()


@functools.cache
def legend_font_file() -> str | None:
    """DejaVu Sans's file: matplotlib's own, else the one its font manager finds (a
    distribution's matplotlib may leave the font to a system package). None, warned once,
    where neither can be read: the text is then drawn in OpenCV's ASCII-only Hershey font."""
    with _font_lock:  # the writer's thread and --show's, drawing their first keys at once
        return _find_legend_font()


@functools.cache
def _find_legend_font() -> str | None:
    import matplotlib

    def found() -> Iterator[Path]:
        yield Path(matplotlib.get_data_path()) / LEGEND_FONT_FILE
        from matplotlib import font_manager

        try:
            path = font_manager.findfont("DejaVu Sans", fallback_to_default=False)
        except ValueError:  # not found
            return
        yield Path(path)

    for path in found():
        try:
            _open_font(str(path), LEGEND_MIN_TEXT)
            return str(path)
        except OSError:
            continue
    log.warning(
        "matplotlib's DejaVu Sans font (%s) cannot be read: --legend's class names are drawn in "
        "ASCII, accents dropped and other letters as ?; reinstall matplotlib to draw them as "
        "written",
        LEGEND_FONT_FILE,
    )
    return None


def _open_font(font_file: str, size: int):
    """PIL's FreeTypeFont of ``font_file`` at ``size`` pixels to the em. Read from the open
    file: given a path it cannot read, Pillow would load any font of that file name it finds
    in the system's folders instead."""
    from PIL import ImageFont

    with open(font_file, "rb") as file:
        return ImageFont.truetype(file, size)


@functools.cache
def _font(font_file: str, text_h: int):
    """``font_file``'s font at the size whose ascent is ``text_h`` pixels."""
    with _font_lock:
        ascent = _open_font(font_file, 100).getmetrics()[0]
        return _open_font(font_file, round(text_h * 100 / ascent))


def _hershey(text_h: int) -> tuple[float, int]:
    """The scale and thickness of the Hershey font for text ``text_h`` pixels high."""
    import cv2

    thickness = max(1, round(text_h / 12))
    return cv2.getFontScaleFromHeight(HERSHEY_FONT, text_h, thickness), thickness


def legend_text(name: str) -> str:
    """``name`` as the legend draws it: as written, composed (NFC: "cafe" and a combining
    accent draw as "café"), with control characters and line breaks as spaces (Pillow's
    layout of a line break fails). Where DejaVu Sans is missing (legend_font_file), as
    OpenCV's Hershey font can draw it: accents dropped (café -> cafe), other characters as ?,
    which putText would draw as ? each anyway."""
    return _legend_text(name, legend_font_file())


@functools.lru_cache(TEXT_WIDTHS)
def _legend_text(name: str, font_file: str | None) -> str:
    if font_file is not None:
        breaks = ("Cc", "Zl", "Zp")
        composed = unicodedata.normalize("NFC", name)
        return "".join(" " if unicodedata.category(c) in breaks else c for c in composed)
    decomposed = unicodedata.normalize("NFKD", name)
    return "".join(c if c.isascii() else "?" for c in decomposed if not unicodedata.combining(c))


def text_width(text: str, text_h: int) -> int:
    """The pixels right of its origin that draw_text's ``text`` ``text_h`` high covers."""
    return _text_width(text, text_h, legend_font_file())


@functools.lru_cache(TEXT_WIDTHS)
def _text_width(text: str, text_h: int, font_file: str | None) -> int:
    if font_file is None:
        import cv2

        return cv2.getTextSize(text, HERSHEY_FONT, *_hershey(text_h))[0][0]
    font = _font(font_file, text_h)
    with _font_lock:
        return max(0, font.getbbox(text, anchor="ls")[2])


@functools.lru_cache(TEXT_BITMAPS)
def _text_ink(
    text: str, text_h: int, color: tuple[int, ...], font_file: str | None
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``text`` rendered ``text_h`` high in ``color``, for draw_text to lay over an image as
    ``image * keep / 255 + ink``: ``keep`` and ``ink``, (h, w, 3) uint8, and the offset (x, y)
    of their top-left corner from the left end of the text's baseline."""
    import cv2

    if font_file is None:
        scale, thickness = _hershey(text_h)
        (w, h), below = cv2.getTextSize(text, HERSHEY_FONT, scale, thickness)
        t = thickness  # the stroke's half width, and anti-aliasing, reach past getTextSize's box
        coverage = np.zeros((t + h + below + t, t + w + t), np.uint8)
        cv2.putText(coverage, text, (t, t + h), HERSHEY_FONT, scale, 255, thickness, cv2.LINE_AA)
        left, top = -t, -(t + h)
    else:
        from PIL import Image, ImageDraw

        font = _font(font_file, text_h)
        with _font_lock:
            left, top, right, bottom = font.getbbox(text, anchor="ls")
            image = Image.new("L", (max(0, right - left), max(0, bottom - top)))
            ImageDraw.Draw(image).text((-left, -top), text, fill=255, font=font, anchor="ls")
        coverage = np.asarray(image)
    coverage = np.repeat(coverage[..., None].astype(np.uint16), 3, axis=2)  # (h, w, 3)
    ink = (coverage * np.asarray(color, np.uint16) + 127) // 255
    return (255 - coverage).astype(np.uint8), ink.astype(np.uint8), left, top


def draw_text(
    image: np.ndarray, text: str, origin: tuple[int, int], text_h: int, color: Sequence[int]
) -> None:
    """Draw ``text`` anti-aliased on ``image``, (H, W, 3) uint8, in place, cut at its edges.

    Args:
        origin: (x, y) of the left end of the text's baseline.
        text_h: the font's ascent in pixels, the height accented capitals reach above the
            baseline; descenders (g, p, y) reach about a third of it below.
        color: the text's colour, in ``image``'s channel order.
    """
    import cv2

    keep, ink, left, top = _text_ink(text, text_h, tuple(map(int, color)), legend_font_file())
    x, y = origin[0] + left, origin[1] + top
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + ink.shape[1], image.shape[1]), min(y + ink.shape[0], image.shape[0])
    if x0 >= x1 or y0 >= y1:
        return
    cut = np.s_[y0 - y : y1 - y, x0 - x : x1 - x]
    region = image[y0:y1, x0:x1]
    # OpenCV's uint8 arithmetic: 20 us for a 1080p name, where NumPy's float blend took 290
    region[:] = cv2.add(cv2.multiply(region, keep[cut], scale=1 / 255), ink[cut])


def fit_text(text: str, text_h: int, room: int) -> str | None:
    """``text``, cut to ``room`` pixels with "..."; None where not even "..." fits."""
    return _fit_text(text, text_h, room, legend_font_file())


@functools.lru_cache(TEXT_WIDTHS)
def _fit_text(text: str, text_h: int, room: int, font_file: str | None) -> str | None:
    if text_width(text, text_h) <= room:
        return text

    def cut(n: int) -> str:
        return f"{text[:n].rstrip()}..."

    if text_width(cut(0), text_h) > room:
        return None
    # the longest cut that fits, found by halving: a 70-letter name takes 7 measures, not 70
    fits, too_long = 0, len(text)
    while too_long - fits > 1:
        n = (fits + too_long) // 2
        fits, too_long = (n, too_long) if text_width(cut(n), text_h) <= room else (fits, n)
    return cut(fits)


def class_pixels(mask: np.ndarray) -> np.ndarray:
    """(256,) int64: the pixels of each value of an (H, W) uint8 mask of class ids."""
    import cv2

    # OpenCV's histogram: 1 ms for a 1920x1080 mask, where np.unique sorts it (50 ms)
    counts = cv2.calcHist([np.ascontiguousarray(mask, dtype=np.uint8)], [0], None, [256], [0, 256])
    return counts.ravel().astype(np.int64)  # (256, 1), or (256,) in OpenCV 5


def keyed_classes(classes: Iterable[int], colors: Sequence[Sequence[int]]) -> list[int]:
    """The ids of ``classes`` a legend lists, ascending: those of the palette, less a black
    class 0 (background, which draw_overlay leaves undrawn)."""
    black_0 = len(colors) > 0 and tuple(colors[0]) == (0, 0, 0)
    return sorted({c for c in classes if 0 <= c < len(colors) and not (c == 0 and black_0)})


def draw_legend(
    image: np.ndarray,
    classes: Iterable[int],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
    max_height: float = LEGEND_HEIGHT,
    pixels: np.ndarray | None = None,
) -> np.ndarray:
    """Key ``classes`` in ``image``'s top-left corner: a colour swatch and the class name per
    row, on a darkened panel, at most LEGEND_ROWS rows (the last "+K more" where more are
    keyed) covering at most ``max_height`` of the image's height, with names cut to its width.
    Rows list classes by id; where not all fit, those of the most ``pixels`` (else the lowest
    ids).

    Args:
        image: (H, W, 3) uint8 RGB, drawn on in place (an overlay).
        classes: class ids to key; those keyed_classes leaves out are not listed.
        names: each class's name, by id.
        colors: each class's RGB colour, by id.
        max_height: the share of the image's height the key may cover, 0 to 1.
        pixels: (256,) each class's pixels in the mask (class_pixels), or None.

    Returns:
        ``image``; untouched where it has no room for one row of text LEGEND_MIN_TEXT high.
    """
    import cv2

    keyed = keyed_classes(classes, colors)
    height, width = image.shape[:2]
    text_h = max(LEGEND_MIN_TEXT, round(min(height, width) * LEGEND_TEXT))
    pad = max(2, text_h // 3)
    row = text_h + 2 * pad  # room below the baseline for descenders (g, p, y)
    rows = min(LEGEND_ROWS, (int(height * max_height) - 2 * pad) // row)
    if not keyed or rows < 1:
        return image
    shown = keyed
    if len(keyed) > rows:
        # a 19-class street scene keyed in id order ran out of rows before its cars and people
        largest = keyed if pixels is None else sorted(keyed, key=lambda c: -pixels[c])
        shown = sorted(largest[: rows - 1])
    text_x = 3 * pad + text_h  # the margin, the panel's pad, the swatch, a gap
    room = width - text_x - 2 * pad  # the text's width: the panel's pad and the margin after it
    lines = [(fit_text(legend_text(names[c]), text_h, room), colors[c]) for c in shown]
    if len(shown) < len(keyed):
        lines.append((fit_text(f"+{len(keyed) - len(shown)} more", text_h, room), None))
    if any(text is None for text, _ in lines):
        return image  # too narrow for even "..."
    right = text_x + max(text_width(text, text_h) for text, _ in lines) + pad
    bottom = 2 * pad + len(lines) * row
    panel = image[pad:bottom, pad:right]
    panel[:] = cv2.convertScaleAbs(panel, alpha=LEGEND_SHADE)
    white = (255, 255, 255)
    for i, (text, color) in enumerate(lines):
        top = 2 * pad + i * row
        if color is not None:
            corner = (2 * pad + text_h - 1, top + text_h - 1)
            cv2.rectangle(image, (2 * pad, top), corner, tuple(map(int, color)), cv2.FILLED)
            # a light edge: a dark class's swatch would vanish into the panel
            cv2.rectangle(image, (2 * pad, top), corner, white, 1)
        draw_text(image, text, (text_x, top + text_h), text_h, white)
    return image


SHEET_TEXT = 16  # px: legend_sheet's text height, at which a screen shows it at full size
SHEET_ROWS = 40  # rows per column of legend_sheet: ADE20K's 150 classes in 4 columns


def legend_sheet(names: Sequence[str], colors: Sequence[Sequence[int]]) -> np.ndarray:
    """A key of every class, to read masks of class ids by: a swatch, the id and the name per
    row, in columns of SHEET_ROWS, black on white. Class 0 is listed whatever its colour: its
    id is in the masks.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    import cv2

    pad = SHEET_TEXT // 2
    row = SHEET_TEXT + 2 * pad
    texts = [f"{i}  {legend_text(name)}" for i, name in enumerate(names)]
    columns = [texts[i : i + SHEET_ROWS] for i in range(0, len(texts), SHEET_ROWS)]
    text_x = pad + SHEET_TEXT + pad  # within a column: its pad, the swatch, a gap
    widths = [text_x + max(text_width(t, SHEET_TEXT) for t in column) for column in columns]
    height = pad + min(len(texts), SHEET_ROWS) * row + pad
    sheet = np.full((height, sum(widths) + pad * (len(columns) + 1), 3), 255, np.uint8)
    left = 0
    for c, (column, column_width) in enumerate(zip(columns, widths, strict=True)):
        for r, text in enumerate(column):
            top = 2 * pad + r * row
            color = tuple(map(int, colors[c * SHEET_ROWS + r]))
            corner = (left + pad + SHEET_TEXT - 1, top + SHEET_TEXT - 1)
            cv2.rectangle(sheet, (left + pad, top), corner, color, cv2.FILLED)
            # a dark edge: a white or pale class's swatch would vanish into the page
            cv2.rectangle(sheet, (left + pad, top), corner, (64, 64, 64), 1)
            draw_text(sheet, text, (left + text_x, top + SHEET_TEXT), SHEET_TEXT, (0, 0, 0))
        left += column_width + pad
    return sheet


@contextlib.contextmanager
def opencv_threads_for(device_type: str) -> Iterator[None]:
    """Run OpenCV on one thread while the model runs on the CPU, then restore its setting.

    There the model's threads use every core, and OpenCV's own pool (decoding, resizing,
    drawing and encoding on the inference pipelines' threads) competes with them: 1.27 instead
    of 1.34 FPS end to end for 640x480 video at 644x644 on 2 cores. With the model on a GPU the
    pool speeds those steps up, so it is kept.

    Args:
        device_type: where the model's work runs, Predictor.work_device() ("cpu", "cuda",
            "mps"): not the predictor's device, which for ONNX Runtime is the host where inputs
            and outputs live, wherever the graph runs.
    """
    import cv2

    before = cv2.getNumThreads()
    if device_type == "cpu":
        cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(before)


# The most bytes of frames, images and masks that each inference queue (prefetch's, the
# OrderedWriter's) holds: a depth in batches alone lets the two hold about 10 batches of 33 MB
# frames and masks at 4K with --batch 16, 3.7 GB resident.
QUEUE_BYTES = 256 * 2**20


def array_bytes(*groups) -> int:
    """The bytes of NumPy arrays: each of ``groups`` an array, a list of arrays, or None."""
    total = 0
    for group in groups:
        if isinstance(group, np.ndarray):
            total += group.nbytes
        elif group is not None:
            total += sum(a.nbytes for a in group)
    return total


def prefetch(
    items: Iterable,
    depth: int = 2,
    max_bytes: int | None = None,
    nbytes: Callable[[Any], int] | None = None,
) -> Iterator:
    """Iterate ``items`` in a background thread, at most ``depth`` items ahead.

    Decoding (OpenCV, PIL) releases the GIL, so it runs while the model computes. With
    ``max_bytes``, the items waiting also hold at most that many bytes (``nbytes(item)`` each),
    but one always may wait, however large. The next item is made once one as large as the last
    may wait, so the thread holds none beyond them. An exception raised by ``items`` is
    re-raised here.
    """
    q: queue.Queue = queue.Queue()  # bounded by ``room`` below, in items and in bytes
    room = threading.Condition()
    waiting = [0, 0]  # items and bytes in ``q``
    stop = threading.Event()
    end = object()

    def full(size: int) -> bool:
        over = max_bytes is not None and waiting[1] + size > max_bytes
        return waiting[0] > 0 and (waiting[0] >= depth or over)

    def wait_for_room(size: int) -> bool:
        """Wait until an item of ``size`` bytes may wait; False if the consumer stopped."""
        with room:
            while full(size) and not stop.is_set():
                room.wait(0.1)
            return not stop.is_set()

    def put(item, size: int = 0, err: BaseException | None = None) -> bool:
        if not wait_for_room(size):
            return False
        with room:
            waiting[0] += 1
            waiting[1] += size
        q.put((item, err, size))
        return True

    def work() -> None:
        size = 0  # of the last item, to guess the next one's by
        try:
            iterator = iter(items)
            # Room for the next item before it is made: made first, it was held while put
            # waited, one more than the queue holds (a batch of 8 4K frames: 200 MB)
            while wait_for_room(size):
                item = next(iterator, end)
                if item is end:
                    put(end)
                    return
                size = nbytes(item) if nbytes else 0
                if not put(item, size):
                    return
        except BaseException as err:  # handed to the consumer, which re-raises it
            put(end, err=err)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item, err, size = q.get()
            with room:
                waiting[0] -= 1
                waiting[1] -= size
                room.notify()
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


class OrderedWriter:
    """Runs write jobs one at a time, in order, on a background thread.

    At most ``depth`` jobs wait, and with ``max_bytes`` the jobs waiting hold at most that many
    bytes (each job's ``nbytes``, as submitted; one always may wait), so a slow disk or encoder
    slows the producer down instead of filling memory. An exception in a job is re-raised by
    the next ``submit`` or ``finish``.
    """

    def __init__(self, depth: int = 4, max_bytes: int | None = None):
        self.depth = depth
        self.max_bytes = max_bytes
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: deque[tuple[Future, int]] = deque()
        self.pending_bytes = 0

    def submit(self, fn: Callable, *args, nbytes: int = 0) -> None:
        self.pending.append((self.pool.submit(fn, *args), nbytes))
        self.pending_bytes += nbytes
        while len(self.pending) > self.depth or (
            self.max_bytes is not None
            and len(self.pending) > 1
            and self.pending_bytes > self.max_bytes
        ):
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        job, nbytes = self.pending.popleft()
        self.pending_bytes -= nbytes
        job.result()

    def finish(self) -> None:
        """Wait for every job; re-raise the first failure."""
        try:
            while self.pending:
                self._wait_oldest()
        finally:
            for job, _ in self.pending:
                job.cancel()
            self.pool.shutdown(wait=True)


def check_gui() -> None:
    """Fail early and clearly when --show cannot open a window."""
    import cv2

    no_windows = (
        "--show needs an OpenCV build with windows (pip install opencv-python instead of "
        "opencv-python-headless) and a display; run without --show"
    )
    if re.search(r"^\s*GUI:\s*NONE\s*$", cv2.getBuildInformation(), re.MULTILINE):
        raise UserError(no_windows)
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        # opencv-python's Linux wheels draw windows with Qt, which aborts the whole process (no
        # exception to catch) when it finds no display, as over SSH without -X
        raise UserError(
            "--show needs a display, and neither DISPLAY nor WAYLAND_DISPLAY is set (over SSH, "
            "connect with ssh -X); run without --show"
        )
    try:
        cv2.namedWindow("check")
        cv2.destroyWindow("check")
    except cv2.error as err:
        raise UserError(no_windows) from err


# How often a wait for a key (wait_ms 0) looks whether its window is still open
SHOW_POLL_MS = 100


def show(title: str, overlay: np.ndarray, wait_ms: int) -> bool:
    """Show an (H, W, 3) RGB overlay for --show, waiting ``wait_ms`` ms for a key (0: until
    one is pressed); False, the window closed, when the user pressed q or Esc or closed it."""
    import cv2

    cv2.imshow(title, cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    # A closed window is told from one whose backend does not report it (Cocoa before OpenCV
    # 4.7) by its being visible when just shown
    watched = _window_visible(title)
    poll = watched and wait_ms == 0  # waitKey(0) need not return when the window closes
    while True:
        key = cv2.waitKey(SHOW_POLL_MS if poll else wait_ms)
        if watched and not _window_visible(title):
            break  # its close button
        if key & 0xFF in (ord("q"), 27):
            break
        if key != -1 or not poll:
            return True
    # The next imshow would open the window again, and one no longer fed events stops responding
    cv2.destroyAllWindows()
    return False


def _window_visible(title: str) -> bool:
    import cv2

    try:
        return cv2.getWindowProperty(title, cv2.WND_PROP_VISIBLE) >= 1
    except cv2.error:  # a build without windows has none to ask about
        return False


def shell_quote(text: str) -> str:
    """``text`` as one argument of a command to paste into this system's shell.

    POSIX quoting, except on Windows: there cmd.exe (and so the Anaconda Prompt) passes single
    quotes on as part of the argument, so every quoted path would keep them. The double quotes
    used there instead are read by cmd.exe and PowerShell alike.

    A POSIX path that is not UTF-8 (a Latin-1 name on Linux, which Python holds as surrogates)
    is written in $'...' quotes with those bytes as \\xHH, which bash, zsh and ksh read back
    to the same bytes; shlex's quotes would hold the surrogates, which print as text that names
    another file.
    """
    if sys.platform == "win32":
        return subprocess.list2cmdline([text])
    if is_utf8(text):
        return shlex.quote(text)
    quoted = []
    for char in text:
        if "\udc80" <= char <= "\udcff":  # surrogateescape's stand-in for one byte
            quoted.append(f"\\x{ord(char) - 0xDC00:02x}")
        elif char in "\\'":
            quoted.append("\\" + char)
        elif not char.isprintable():  # a newline or tab, as escapes too
            quoted.extend(f"\\x{byte:02x}" for byte in char.encode())
        else:
            quoted.append(char)
    return "$'" + "".join(quoted) + "'"
