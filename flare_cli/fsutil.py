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
    """A fresh hidden folder ``parent/.name.PID.XXXX.tmp`` with the usual folder mode.

    The pid in the name lets a later run tell a killed writer's leftovers from a live one's.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=parent))
    os.chmod(tmp, dir_mode())
    return tmp


def give_usual_modes(folder: PathLike) -> None:
    """chmod a folder that we just wrote (and everything in it) to 0666/0777 minus the umask:
    some writers (safetensors) create private 0600 files."""
    fmode, dmode = file_mode(), dir_mode()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, dmode)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, fmode)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_temp_dirs(parent: PathLike, name: str) -> list[Path]:
    """Folders a killed writer of ``parent/name`` left: ``.name.PID.XXXX.tmp`` (make_temp_dir) and
    ``.name.old-PID`` (a replaced folder not yet removed) whose process is gone. A name without a
    pid (flare_cli before 0.2) counts as stale."""
    parent = Path(parent)
    if not parent.is_dir():
        return []
    stale = []
    for path in parent.iterdir():
        rest = path.name[len(name) + 2:] if path.name.startswith(f".{name}.") else None
        if rest is None or not path.is_dir() or path.is_symlink():
            continue
        if rest.endswith(".tmp"):
            pid = rest.split(".")[0]
        elif rest.startswith("old-"):
            pid = rest[4:]
        else:
            continue
        if not (pid.isdigit() and _alive(int(pid))):
            stale.append(path)
    return sorted(stale)


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
def file_lock(lock_path: PathLike, busy_message: str) -> Iterator[None]:
    """Hold ``lock_path`` for the block; FolderBusyError(busy_message) at once when another process has it.

    An OS file lock (flock), so a killed holder never leaves a stale lock behind.
    """
    from filelock import FileLock, Timeout

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FolderBusyError(busy_message) from None
    try:
        yield
    finally:
        lock.release()


def run_lock(folder: PathLike, what: str):
    """Hold ``folder/.flare.lock`` while ``what`` (e.g. "flare train") writes into ``folder``."""
    folder = Path(folder)
    return file_lock(
        folder / LOCK_NAME,
        f"{folder} is in use by another {what} (lock {folder / LOCK_NAME}); wait for it to finish "
        "or pick another output folder",
    )
