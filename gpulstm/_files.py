"""Output files written whole or not at all: :func:`atomic_write` writes to a temporary file
in the destination's folder and renames it into place (``os.replace``), so a reader running
at the same time (a second report, a browser, CI collecting artifacts) sees the old file or
the new one, never a half-written one. Every output of the report and the CLI uses it."""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_write(path, mode: str = "w", encoding: str | None = "utf-8"):
    """``with atomic_write(path) as f: f.write(...)``: ``path`` appears only once the block
    has finished without an error (with the mode a new file would get under the umask)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
