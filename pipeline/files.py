"""Writing outputs so that a crash, a full disk or a second writer never leaves a file that looks complete.

An output is written under a temporary name, flushed to disk (file, then directory), and only
then renamed into place; an I/O error becomes one `FacekdError` naming the file. A lock per output
lets one process write it at a time; readers never take it and keep reading the last published file.
"""
from __future__ import annotations

import errno
import fcntl
import os
import resource
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from pipeline.errors import FacekdError

# Errors of the storage rather than of the program: they become one line naming the file.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EIO, errno.EDQUOT, errno.EROFS})


def partial_name(path: Path) -> Path:
    """The name an output is written under until it is complete (git-ignored: `*.partial`)."""
    return path.with_name(path.name + ".partial")


def lock_name(path: Path) -> Path:
    """The lock file of an output (git-ignored: `*.partial.*`)."""
    return path.with_name(path.name + ".partial.lock")


def storage_error(path: Path, error: Exception, kept: str) -> FacekdError:
    """The one line a user sees for a failed write: the file, the system's reason, what was kept."""
    code = getattr(error, "errno", None)
    reason = os.strerror(code) if code else (str(error).splitlines() or ["I/O error"])[0]
    return FacekdError(f"{path}: cannot write ({reason}); {kept}")


def is_storage_error(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in STORAGE_ERRNOS


def check_room(path: Path, needed_bytes: int, kept: str) -> None:
    """Refuse to start a file of about `needed_bytes` that the disk or the file-size limit cannot hold.

    Checked before HDF5 writes the file: HDF5 reports a failed write of a file it is creating only
    while freeing it, and can crash the process doing so.
    """
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if limit != resource.RLIM_INFINITY and needed_bytes > limit:
        raise FacekdError(
            f"{path}: cannot write ({os.strerror(errno.EFBIG)}: needs about {needed_bytes} bytes, the file-size "
            f"limit (ulimit -f) is {limit} bytes); {kept}"
        )
    available = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
    if needed_bytes > available:
        raise FacekdError(
            f"{path}: cannot write ({os.strerror(errno.ENOSPC)}: needs about {needed_bytes} bytes, "
            f"{available} are free); {kept}"
        )


def sync_file(path: Path) -> None:
    """Flush a written file's data to the disk (a rename is only durable after its content is)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename or a new file) to the disk."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def publish(temporary: Path, path: Path) -> None:
    """Make a complete, verified temporary file the output: fsync it, rename it, fsync the directory."""
    sync_file(temporary)
    os.replace(temporary, path)
    sync_directory(path.parent)


@contextmanager
def written_together(*paths: str | os.PathLike[str]) -> Iterator[tuple[Path, ...]]:
    """Yield a temporary path per output; on success all are synced and renamed, on failure all removed.

    For outputs that are only valid together (a `.rec` and its `.idx`): none is published unless
    every one was written. They are renamed in the order given, so the last one appearing means
    all are in place. A full disk, a file-size limit or an I/O error while writing or publishing
    becomes one `FacekdError` naming the outputs.
    """
    paths = tuple(Path(path) for path in paths)
    temporaries = tuple(partial_name(path) for path in paths)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield temporaries
        for temporary in temporaries:  # all are on the disk before the first is renamed
            sync_file(temporary)
        for temporary, path in zip(temporaries, paths):
            os.replace(temporary, path)
        for directory in dict.fromkeys(path.parent for path in paths):
            sync_directory(directory)
    except OSError as error:
        if is_storage_error(error):
            if len(paths) == 1:
                raise storage_error(paths[0], error, f"{paths[0].name} was left as it was") from None
            names = " and ".join(path.name for path in paths)
            raise storage_error(paths[0].parent / names, error, f"{names} were left as they were") from None
        raise
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


@contextmanager
def written_atomically(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is synced and renamed to `path`, on failure removed.

    A full disk, a file-size limit or an I/O error while writing or publishing becomes one
    `FacekdError` naming `path`.
    """
    with written_together(path) as (temporary,):
        yield temporary


@contextmanager
def opened_atomically(path: str | os.PathLike[str], mode: str = "w", **open_arguments: Any) -> Iterator[IO[Any]]:
    """`open` for an output that is written atomically: the stream writes the temporary file, which
    is closed, synced and renamed to `path` when the block ends without an error."""
    with written_atomically(path) as temporary, open(temporary, mode, **open_arguments) as stream:
        yield stream


def write_text_atomically(path: str | os.PathLike[str], text: str) -> None:
    with written_atomically(path) as temporary:
        temporary.write_text(text)


def write_bytes_atomically(path: str | os.PathLike[str], data: bytes) -> None:
    with written_atomically(path) as temporary:
        temporary.write_bytes(data)


@contextmanager
def exclusive_writer(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock of output `path` while writing it; another writer is refused at once, naming our PID.

    The lock is `flock` on `lock_name(path)` (released by the kernel when a process dies, so a
    crash never leaves it held); the file holds the PID of its holder for the refusal message.
    """
    path = Path(path)
    lock_path = lock_name(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(descriptor)
            raise FacekdError(
                f"{path}: another facekd process (PID {holder}) is writing it; wait for it to finish or stop it"
            ) from None
        # A holder that was releasing may have removed the lock file we opened: lock the current one.
        if lock_path.exists() and os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino:
            break
        os.close(descriptor)
    try:
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        except OSError as error:
            raise storage_error(lock_path, error, f"{path.name} was left as it was") from None
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        os.close(descriptor)
