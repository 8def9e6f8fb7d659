"""The on-disk cache of compiled shared libraries, shared by every execution that compiles
C++ for the host (``emulated``: CUDA kernels; ``cpu``: the compiled time loops).

The cache holds code that this process loads and runs, so nobody but the user may be able to
write it. Its root is ``$GPULSTM_CACHE_DIR`` or ``~/.cache/gpulstm``; each execution has a
subdirectory. Directories are created with mode 0700 and refused when they (or a file in
them) are writable by the group or others or owned by someone else. Each library has a
SHA-256 digest beside it (``NAME.so.sha256``), checked before ctypes loads the library: a
truncated, corrupted or planted file is rebuilt instead of loaded (its constructor never
runs). Compiles of one library are serialized across processes by a file lock
(``NAME.lock``) and published by ``os.replace``, library first: a reader sees the old pair,
a mismatch (and waits for the lock), or the new pair, never a half-written file.
``$GPULSTM_CXX`` names the compiler (default ``g++``, else ``c++``).
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

LOCK_TIMEOUT_S = 900  # waiting longer than this for another process's compile is an error
STALE_BUILD_S = 24 * 3600  # .build-* directories of other names older than this are removed


def root() -> Path:
    """``$GPULSTM_CACHE_DIR``, else ``~/.cache/gpulstm``."""
    env = os.environ.get("GPULSTM_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "gpulstm"


def compiler() -> str:
    """``$GPULSTM_CXX``, else ``g++``, else ``c++``."""
    return os.environ.get("GPULSTM_CXX") or ("g++" if shutil.which("g++") else "c++")


@functools.lru_cache(maxsize=None)
def compiler_identity(cxx: str) -> str:
    """``cxx --version`` and target triple (part of every cache key). Raises
    FileNotFoundError when ``cxx`` is not on PATH."""
    path = shutil.which(cxx)
    if path is None:
        raise FileNotFoundError(f"C++ compiler {cxx!r} not found (install g++ or set "
                                "GPULSTM_CXX)")
    out = []
    for arg in ("--version", "-dumpmachine"):
        res = subprocess.run([path, arg], capture_output=True, text=True, check=False)
        out.append(res.stdout.strip())
    return path + "\n" + "\n".join(out)


@dataclass(frozen=True)
class BuildCache:
    """One execution's cache: ``root()/subdir``, its errors raised as ``error`` and named
    ``label`` (e.g. "the emulator's compile cache")."""
    subdir: str
    label: str
    error: type

    def path(self) -> Path:
        return root() / self.subdir

    def _refuse(self, path: Path, what: str, problem: str, fix: str):
        raise self.error(
            f"{self.label} {what} {path} {problem}: a library planted there would run as you, "
            f"so it is not used. Fix: {fix}, or set GPULSTM_CACHE_DIR to a private directory "
            "of yours")

    def check_private(self, path: Path, what: str) -> os.stat_result:
        """``path`` must be owned by this user and not writable by group or others."""
        st = os.stat(path)
        uid = os.geteuid() if hasattr(os, "geteuid") else None
        if uid is not None and st.st_uid != uid:
            self._refuse(path, what, f"is owned by uid {st.st_uid}, not by you (uid {uid})",
                         f"remove {path}")
        if st.st_mode & 0o022:
            who = {0o022: "group and others", 0o020: "its group",
                   0o002: "others"}[st.st_mode & 0o022]
            # a sticky shared directory (/tmp) is not one to chmod: pick another
            fix = ("use a directory of your own" if st.st_mode & stat.S_ISVTX
                   else f"chmod go-w {path}")
            self._refuse(path, what,
                         f"is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})", fix)
        return st

    def directory(self) -> Path:
        """The cache directory, created with its missing parents with mode 0700 (whatever
        the umask), then checked to be private (:meth:`check_private`)."""
        path = self.path()
        missing = []
        p = path
        while not os.path.lexists(p) and p != p.parent:
            missing.append(p)
            p = p.parent
        try:
            for d in reversed(missing):
                try:
                    os.mkdir(d, 0o700)  # the umask can only remove bits from 0700
                except FileExistsError:
                    pass
        except OSError as e:
            raise self.error(f"cannot create {self.label} {path} ({e}); set GPULSTM_CACHE_DIR "
                             "to a writable directory") from e
        if not path.is_dir():
            raise self.error(f"{self.label} {path} is not a directory; remove it or set "
                             "GPULSTM_CACHE_DIR to a private directory")
        self.check_private(path, "directory")
        return path

    def verified(self, lib: Path) -> bool:
        """Whether ``lib`` and its digest exist and match (refusing foreign or writable
        files; a link or special file is not verified and gets replaced)."""
        digest = digest_path(lib)
        if not (os.path.lexists(lib) and os.path.lexists(digest)):
            return False
        for p, what in ((lib, "library"), (digest, "digest")):
            if not stat.S_ISREG(os.lstat(p).st_mode):
                return False
            self.check_private(p, what)
        want = digest.read_text(errors="replace").strip()
        return hashlib.sha256(lib.read_bytes()).hexdigest() == want

    def library(self, name: str, compile: Callable[[Path], None]) -> Path:
        """Path of the verified library ``name`` (e.g. ``KEY.so``) in the cache, built by
        ``compile(out)`` (which writes the library to ``out``, in a private build directory
        inside the cache) under the name's lock when missing or not verified."""
        import filelock

        d = self.directory()
        lib = d / name
        if self.verified(lib):
            return lib
        lock = filelock.FileLock(str(d / f"{lib.stem}.lock"), timeout=LOCK_TIMEOUT_S,
                                 mode=0o600)
        try:
            with lock:
                if self.verified(lib):  # another process compiled it while we waited
                    return lib
                self._remove_stale_builds(d, lib.stem)
                self._build(lib, compile)
                if not self.verified(lib):
                    raise self.error(f"the library just compiled into {lib} does not match "
                                     "its digest (is another program writing the cache?)")
        except filelock.Timeout as e:
            raise self.error(f"waited {LOCK_TIMEOUT_S} s for another process compiling "
                             f"{lib} (lock {lock.lock_file}); if no such process runs, "
                             "remove the lock file") from e
        return lib

    @staticmethod
    def _remove_stale_builds(d: Path, stem: str) -> None:
        """Remove build directories left by killed compiles: those of ``stem`` (whose lock
        we hold, so nobody is using them) and any older than STALE_BUILD_S."""
        now = time.time()
        for p in d.glob(".build-*"):
            try:
                if p.name.startswith(f".build-{stem}-") or now - p.lstat().st_mtime > STALE_BUILD_S:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass

    def _build(self, dest: Path, compile: Callable[[Path], None]) -> None:
        try:
            tmpdir = tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".build-{dest.stem}-")
        except OSError as e:
            raise self.error(f"cannot write {self.label} {dest.parent} ({e}); set "
                             "GPULSTM_CACHE_DIR to a writable directory") from e
        with tmpdir as tmp:
            out = Path(tmp) / dest.name
            compile(out)
            os.chmod(out, 0o700)  # the compiler's mode follows the umask (0777 under umask 0)
            digest = Path(tmp) / (dest.name + ".sha256")
            fd = os.open(digest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(hashlib.sha256(out.read_bytes()).hexdigest() + "\n")
            os.replace(out, dest)  # library first, then its digest (see the module doc)
            os.replace(digest, digest_path(dest))


def digest_path(lib: Path) -> Path:
    return lib.with_name(lib.name + ".sha256")
