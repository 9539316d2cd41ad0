"""Run a script as torchrun would, recording every file this process writes.

    python -m torch.distributed.run ... tests/record_writes.py LOG_DIR SCRIPT [ARGS...]

Appends one line per write to LOG_DIR/<RANK>.txt: files opened for writing (Python's own open,
and so torch.save, PIL and matplotlib), and every rename, removal and new folder, through which
the atomic writes of OpenCV's images and videos end. Python's audit hooks see these calls in
every library written in Python, so a test can tell which process wrote what.
"""

import os
import runpy
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
CHANGES = {"os.rename": 1, "os.remove": 0, "os.rmdir": 0, "os.mkdir": 0, "shutil.rmtree": 0}


def written_path(event: str, args: tuple) -> str | None:
    """The path that this audit event writes to, or None for a read or another event."""
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if isinstance(mode, str) else flags & WRITE_FLAGS
        return os.fsdecode(path) if writes and isinstance(path, str | bytes) else None
    if event in CHANGES:
        path = args[CHANGES[event]]
        return os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else None
    return None


def main() -> None:
    log_dir, script, *script_args = sys.argv[1:]
    log_path = os.path.join(log_dir, f"{os.environ.get('RANK', '0')}.txt")
    with open(log_path, "a", buffering=1) as log:

        def hook(event: str, args: tuple) -> None:
            path = written_path(event, args)
            if path is not None and not log.closed:  # hooks stay installed until exit
                log.write(f"{event} {os.path.abspath(path)}\n")

        sys.addaudithook(hook)
        sys.argv = [script, *script_args]
        sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
