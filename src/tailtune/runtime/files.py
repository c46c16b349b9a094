"""Writing files so that a failure leaves no half-written file behind and says what happened.

Every file tailtune writes goes through :func:`atomic` (a temporary file beside the target,
renamed over it when complete) or, for a file written in place, through :func:`writing`. An
``OSError`` on the way (disk full, read-only file system, permission, quota) removes the
temporary file and becomes one :class:`~tailtune.errors.WriteError` naming the file and the
cause; the caller (a run, an export) adds what was kept and how to continue.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator
from pathlib import Path

from tailtune.errors import WriteError

TMP = ".tmp"  # the suffix of a temporary file beside its target (a run folder never keeps one)

_CAUSES = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def cause(e: BaseException) -> str:
    """Why ``e`` (an OSError, or an error of a library that wraps one) failed, in words."""
    code = getattr(e, "errno", None)
    if code is None:  # safetensors: "I/O error: No space left on device (os error 28)"
        m = re.search(r"os error (\d+)", str(e))
        code = int(m.group(1)) if m else None
    if code in _CAUSES:
        return _CAUSES[code]
    return getattr(e, "strerror", None) or str(e)


def write_error(path: str | Path, e: BaseException, then: str = "") -> WriteError:
    """The error for ``path`` that could not be written because of ``e``; ``then``: what was
    kept and what to do (appended)."""
    return WriteError(f"cannot write {path}: {cause(e)}." + (f" {then}" if then else ""), str(path))


def tmp_path(path: str | Path, suffix: str = "") -> Path:
    """The temporary file :func:`atomic` writes ``path`` through (``suffix``: an extension a
    writer insists on, e.g. numpy's ``.npz``)."""
    path = Path(path)
    return path.with_name(path.name + TMP + suffix)


@contextlib.contextmanager
def atomic(path: str | Path, suffix: str = "", errors: tuple[type[BaseException], ...] = ()) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s contents to; it replaces ``path`` when the block
    ends. On any failure the temporary file is removed (``path`` keeps its previous contents);
    an OSError, or one of ``errors`` (a library's own I/O error), becomes a WriteError."""
    path = Path(path)
    tmp = tmp_path(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, *errors) as e:
        _remove(tmp)
        raise write_error(path, e) from e
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """A block that writes ``path`` in place (a memmap, a file appended to): an OSError becomes a
    WriteError naming it."""
    try:
        yield
    except OSError as e:
        raise write_error(path, e) from e


def write_text(path: str | Path, text: str) -> None:
    """``text`` (UTF-8) into ``path``, atomically."""
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | Path, data: bytes) -> None:
    """``data`` into ``path``, atomically."""
    with atomic(path) as tmp:
        tmp.write_bytes(data)


def _remove(tmp: Path) -> None:
    tmp.unlink(missing_ok=True)  # none in a read-only folder: it could not be created either
