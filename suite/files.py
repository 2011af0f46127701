"""Writing into `--out` and `--work-dir` safely: whole files or none, a full disk in one line, and no
litter left by writers that died.

- `atomic_write(path, write)`: `write(f)` fills a temporary file beside `path` (a unique name per
  process and call, `.<name>.<pid>.<token>.tmp`), which is then renamed over `path`; on any failure
  the temporary is removed, so a reader only ever sees the old file or the new one.
- A full file system (ENOSPC, EDQUOT) becomes `DiskFull`, a `UserError` that names the folder and
  says the run resumes once space is freed. torch.save reports a failed write as
  `RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...`, which hides the cause:
  the file object it writes to here keeps the `OSError` of the failed write, and that is reported.
- `remove_stale_temporaries(folder)`: a writer killed between its write and its rename (kill -9, a
  crashed node) leaves its temporary behind. The pid is in the name: a temporary whose process is
  not running here and that has not changed for `STALE_AFTER_S` (a writer on another machine that
  shares the file system is still writing it otherwise) is stale and removed.
- `Created`: the paths a command may create, noted before it starts, so that a command refused
  after it began (a full disk) takes back what it created and leaves the folders as they were.

No torch here: records are written without it.
"""
from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from suite.errors import UserError

FULL = (errno.ENOSPC, errno.EDQUOT)
STALE_AFTER_S = 60.0      # a temporary unchanged this long, of a process not running here, is stale
MIN_FREE_BYTES = 1 << 20  # a folder whose file system has less than this free is refused up front


class DiskFull(UserError):
    """A write failed because its file system is full."""


def disk_full(folder: Path, what: str) -> DiskFull:
    return DiskFull(f"no space left on device in {folder} (writing {what}); free space on that file system and "
                    "run the same command again: the run resumes from its last checkpoint")


def tmp_path(path: Path) -> Path:
    """A temporary name beside `path`, unique per process and call: two processes writing the same
    file never share a temporary (the rename that follows is atomic, and the last one wins)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


class _Sink:
    """The file object a writer (json, torch.save) sees: writes every byte it is given (a raw file
    may take only part of a write, and torch.save ignores the count), and keeps the OSError of a
    failed write, which torch.save would otherwise replace by its own RuntimeError."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += self.f.write(view[done:])
        except OSError as e:
            self.error = e
            raise
        return done

    def flush(self):
        try:
            self.f.flush()
        except OSError as e:
            self.error = e
            raise


def _open(path: Path):
    # unbuffered: torch.save writes large chunks itself, and a buffer would only copy them (twice as slow)
    return open(path, "wb", buffering=0)


def make_dirs(folder: Path) -> None:
    """mkdir -p, a full disk reported as DiskFull."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        if e.errno in FULL:
            raise disk_full(folder, "a folder") from None
        raise


def atomic_write(path: Path, write: Callable) -> None:
    """`write(f)` writes the file's bytes to f; they appear at `path` whole or not at all."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = tmp_path(path)
    sink = None
    try:
        f = _open(tmp)
        try:
            sink = _Sink(f)
            write(sink)
        finally:
            f.close()
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        cause = sink.error if sink is not None and sink.error is not None else e
        if isinstance(cause, OSError) and cause.errno in FULL:
            raise disk_full(path.parent, path.name) from None
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def check_free_space(folder: Path, flag: str) -> None:
    """A folder whose file system is already full is refused before anything runs."""
    probe = Path(folder).expanduser()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if free < MIN_FREE_BYTES:
        raise DiskFull(f"{flag} {folder}: its file system is full ({free} bytes free); free space there "
                       "(or pass another folder) and run the same command again")


# --- temporaries of writers that died ------------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # a process of another user
    return True


def stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Temporaries in `folder` (of the file `name`, or of any file) whose writer is gone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    out = []
    for p in sorted(folder.glob(f".{name}.*.tmp" if name else ".*.tmp")):
        parts = p.name[1:-len(".tmp")].rsplit(".", 2)  # <name>.<pid>.<token>
        if len(parts) != 3 or not parts[1].isdigit() or (name and parts[0] != name):
            continue
        try:
            age = now - p.stat().st_mtime
        except FileNotFoundError:
            continue
        if int(parts[1]) != os.getpid() and not _alive(int(parts[1])) and age >= STALE_AFTER_S:
            out.append(p)
    return out


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    removed = []
    for p in stale_temporaries(folder, name):
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


# --- taking back what a refused command created -------------------------------------------------------

class Created:
    """Which of some folders (and their parents) exist now; `undo()` removes those created since,
    when empty, deepest first, so a command refused midway leaves no trace."""

    def __init__(self, folders: list[Path]):
        chain = []
        for folder in folders:
            p = Path(folder).expanduser().absolute()
            while not p.exists() and p != p.parent:
                chain.append(p)
                p = p.parent
        self.folders = sorted(set(chain), key=lambda p: len(p.parts), reverse=True)

    def undo(self) -> None:
        for d in self.folders:
            try:
                d.rmdir()
            except OSError:  # not empty (something worth keeping, or another process's), or gone
                pass
