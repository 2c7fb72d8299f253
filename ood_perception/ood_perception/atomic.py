"""Atomic file and directory writes: the one place that does "temp in the same folder + os.replace".

Every file that matters (models, checkpoints, caches, datasets, reports) is written through here so
that a reader -- or a run resumed after a kill -- sees either the previous content or the new one,
never half a file. Temp files live in the destination's directory (same filesystem, so the final
``os.replace`` is atomic), are flushed and fsynced before the rename, are removed when the write
fails, and end up with the permissions a plain ``open()`` would give (``0o666 & ~umask``; files from
``tempfile.mkstemp`` would otherwise stay private, mode 0600). Directories made here get
``0o777 & ~umask`` for the same reason (``tempfile.mkdtemp`` makes them 0700).

A process stopped by SIGTERM (``kill``, a container or systemd stop, ``multiprocessing``'s
``Pool.terminate``) would by default die without running any of that clean-up and leave its
``.<name>.tmp-*`` folders behind; :func:`terminate_as_exception` turns SIGTERM into
:class:`Terminated` (a ``KeyboardInterrupt``), so ``finally`` blocks and the removal of temporaries
run as they do on Ctrl-C. The command line installs it for every subcommand; process-pool workers
use :func:`install_worker_signal_handlers`.

Stdlib only: this module sits below every room of the package and may be imported from anywhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "Terminated",
    "atomic_dir",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "current_umask",
    "install_worker_signal_handlers",
    "replace_dir",
    "terminate_as_exception",
]


def current_umask() -> int:
    """The process umask, read without changing it where Linux exposes it (``/proc/self/status``);
    elsewhere via the set-and-restore ``os.umask`` idiom."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so a rename in it survives a crash (not all systems allow it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = "", fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit it becomes ``path`` atomically.

    For writers that need a filename rather than bytes (``np.savez``, ``torch.save``,
    ``cv2.imwrite``, ``fig.savefig``): write to the yielded path inside the ``with`` block. The
    temp name is ``.<name>.<random>.tmp<suffix>``; pass the real extension as ``suffix`` when the
    writer infers the format from it or appends one otherwise (``".npz"``, ``".npy"``, ``".png"``).
    On success the file is fsynced (when ``fsync``), given mode ``0o666 & ~umask`` and
    ``os.replace``d over ``path`` (replacing an existing file); on any exception it is removed and
    the exception propagates, leaving an existing ``path`` untouched. Parent folders are created.
    """
    path = Path(path)
    if not path.name:
        raise ValueError(f"atomic write needs a file path, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"the writer did not leave a file at the temporary path {tmp} for {path}")
        commit_file(tmp, path, fsync=fsync)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def commit_file(tmp: str | os.PathLike[str], path: str | os.PathLike[str], fsync: bool = True) -> Path:
    """Move a finished file ``tmp`` (same filesystem) onto ``path`` atomically: fsynced (when
    ``fsync``), mode ``0o666 & ~umask``, ``os.replace``d, its folder fsynced. For writers that
    choose their own temporary file (e.g. a bag writer's folder); :func:`atomic_path` ends with it.
    Returns ``path``."""
    tmp, path = Path(tmp), Path(path)
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.chmod(tmp, 0o666 & ~current_umask())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes needs bytes for {path}, got {type(data).__name__}")
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8", fsync: bool = True) -> Path:
    """Write ``text`` (encoded with ``encoding``, no newline translation) to ``path`` atomically;
    returns ``path``."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text needs a str for {path}, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)


def replace_dir(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Move the finished ``src`` (a directory, same filesystem) onto ``dst``.

    An existing ``dst`` (directory or file) is first renamed aside and only deleted once the move
    succeeded; if the move fails it is put back. Returns ``dst``.
    """
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists() or dst.is_symlink():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        _remove(old)
        os.replace(dst, old)
    try:
        os.replace(src, dst)
    except BaseException:
        if old is not None:
            os.replace(old, dst)
        raise
    if old is not None:
        _remove(old)
    return dst


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; on a clean exit it replaces ``path``.

    Fill the yielded directory inside the ``with`` block. On success the directory gets mode
    ``0o777 & ~umask`` and its top-level files ``0o666 & ~umask`` (like ``mkdir``/``open``), then it
    is moved onto ``path`` with :func:`replace_dir` (an existing ``path`` is replaced, and kept if
    the move fails). On any exception the temporary directory is deleted and ``path`` is untouched.
    Checking whether ``path`` may be overwritten is the caller's job.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        umask = current_umask()
        os.chmod(tmp, 0o777 & ~umask)
        for p in tmp.iterdir():
            if p.is_file() and not p.is_symlink():
                os.chmod(p, 0o666 & ~umask)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (see :func:`terminate_as_exception`). A
    ``KeyboardInterrupt`` so that every clean-up written for Ctrl-C runs, and ``except Exception``
    blocks do not swallow it."""

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def _exit_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM during the clean-up kills at once
    raise SystemExit(128 + signal.SIGTERM)


def install_worker_signal_handlers() -> None:
    """For worker processes (a ``multiprocessing.Pool`` initializer): SIGINT is ignored (Ctrl-C
    reaches the whole process group; the parent decides and terminates the pool), and SIGTERM
    (``Pool.terminate``) exits via ``SystemExit`` so ``finally`` blocks and the removal of
    temporaries run, quietly, once; a second SIGTERM kills."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_terminated)


@contextlib.contextmanager
def terminate_as_exception() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (a no-op in other
    threads); the previous handler is restored afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
