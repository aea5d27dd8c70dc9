"""How flare_cli writes files: atomically, with the user's usual permissions, never over their data.

- ``atomic_write_*`` replace a file in one step (a temp file next to it, then ``os.replace``);
  the result gets the mode a plain ``open()`` would give (0666 minus the umask), not
  ``mkstemp``'s private 0600.
- ``make_temp_dir`` is ``mkdtemp`` with the usual 0777-minus-umask mode, for folders that are
  renamed into place when complete (merged models, checkpoints).
- ``check_output_file`` / ``check_output_dir`` turn "the path is a folder" or "a parent is a
  file" into one ConfigError before any work is done.
- ``run_lock`` keeps two processes out of one output folder (an OS lock: a killed holder frees it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Union

from flare_cli.errors import ConfigError, FlareError

PathLike = Union[str, Path]
LOCK_NAME = ".flare.lock"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    return 0o777 & ~current_umask()


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` all at once: readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, data: Any, **dump_kwargs: Any) -> None:
    dump_kwargs.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(data, **dump_kwargs) + "\n")


def atomic_copy(src: PathLike, dst: PathLike) -> None:
    """Copy a file into place atomically (contents only; the mode follows the umask)."""
    atomic_write_bytes(dst, Path(src).read_bytes())


def make_temp_dir(parent: PathLike, name: str) -> Path:
    """A fresh hidden folder ``parent/.name.XXXX.tmp`` with the usual folder mode."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
    os.chmod(tmp, dir_mode())
    return tmp


def stale_temp_dirs(parent: PathLike, name: str, older_than_s: float = 0.0) -> list[Path]:
    """Leftover ``make_temp_dir(parent, name)`` folders (a killed run's), oldest first."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    now = time.time()
    found = [p for p in parent.glob(f".{name}.*.tmp") if p.is_dir() and now - p.stat().st_mtime >= older_than_s]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def remove_tree(path: PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------- output paths


def _file_ancestor(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` when it is not a folder (so nothing can go under it)."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def check_output_file(path: PathLike, option: str) -> None:
    """ConfigError unless ``path`` can become a file: not a folder, not under a file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    blocker = _file_ancestor(path)
    if blocker is not None:
        raise ConfigError(f"{option} {path}: {blocker} is a file, not a folder")


def check_output_dir(path: PathLike, option: str) -> None:
    """ConfigError unless ``path`` can be (or is) a folder: not a file, not under a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a folder")
    blocker = _file_ancestor(path)
    if blocker is not None:
        raise ConfigError(f"{option} {path}: {blocker} is a file, not a folder")


def overlaps(a: PathLike, b: PathLike) -> bool:
    """True when ``a`` and ``b`` are the same folder or one lies inside the other."""
    ra, rb = Path(a).resolve(), Path(b).resolve()
    return ra == rb or ra in rb.parents or rb in ra.parents


# ------------------------------------------------------------------------------------ locking


class FolderBusyError(FlareError):
    """Another process holds the folder's lock (a runtime failure: retry later)."""


@contextlib.contextmanager
def run_lock(folder: PathLike, what: str) -> Iterator[None]:
    """Hold ``folder/.flare.lock`` for the block; FolderBusyError at once when another process has it.

    An OS file lock (flock), so a killed holder never leaves a stale lock behind.
    """
    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusyError(
            f"{folder} is in use by another {what} (lock {folder / LOCK_NAME}); wait for it to finish "
            "or pick another output folder"
        ) from None
    try:
        yield
    finally:
        lock.release()
