"""Turn CUDA C++ kernel source into a loaded CPU shared library (the emulated execution).

Steps: read the source once (comments stripped) to decide the schedule and find the
``extern "C"`` kernels; rewrite ``extern __shared__`` declarations; generate one C++ file =
``cuda_on_cpu.h`` + the source + a launch table; compile it with the host g++; cache the
``.so`` on disk; load it with ctypes and memoize it per process.

Compiler flags: ``-std=c++17 -O2 -fPIC -shared -fvisibility=hidden`` plus
``-ffp-contract=off`` (no silent fused multiply-add: float and double expressions round
exactly as written, IEEE binary32/binary64 on x86-64 SSE), ``-fno-math-errno`` (libm results
are unchanged; only errno is not set) and ``-fno-strict-aliasing`` (CUDA code often
type-puns through ``reinterpret_cast``). No ``-ffast-math``: NaN and infinities behave.

Cache: ``$GPULSTM_CACHE_DIR/emulated`` (default ``~/.cache/gpulstm/emulated``), with the trust
rules of :mod:`gpulstm.buildcache` (private directory, owner, digest verified before loading,
one compile per library across processes). The file name is a hash of (header text,
rewritten source, launch table, options, compiler flags, compiler identity, and the path and
content of every non-system header the source includes). ``$GPULSTM_CXX`` names the compiler
(default ``g++``, else ``c++``).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .. import buildcache
from ._errors import EmulatorError

_FORMAT_VERSION = "1"  # bump when the generated file's layout changes
_HEADER_PATH = Path(__file__).with_name("cuda_on_cpu.h")
_BASE_FLAGS = (
    "-std=c++17", "-O2", "-fPIC", "-shared", "-fvisibility=hidden",
    "-ffp-contract=off", "-fno-math-errno", "-fno-strict-aliasing",
)

# Calls that make a thread wait for others: a module that uses any of them runs its blocks'
# threads as fibers; otherwise each thread runs to completion (cheaper, same results).
_SYNC_TOKENS = re.compile(
    r"\b(__syncthreads\w*|__syncwarp|__shfl\w*_sync|__ballot_sync|__any_sync|__all_sync"
    r"|__activemask)\b")
_EXTERN_C_KERNEL = re.compile(
    r'extern\s+"C"\s+(?:__\w+__\s+|static\s+|__launch_bounds__\s*\([^)]*\)\s*)*'
    r"__global__\s+(?:__\w+__\s+|__launch_bounds__\s*\([^)]*\)\s*)*void\s+"
    r"(?:__launch_bounds__\s*\([^)]*\)\s*)?([A-Za-z_]\w*)\s*\(")
# extern __shared__ [__align__(n)] TYPE NAME[] [__align__(n)];
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?"
    r"(?P<type>[A-Za-z_][\w:<>\s]*?)\s*\b(?P<name>[A-Za-z_]\w*)\s*\[\s*\]\s*"
    r"(?:__align__\s*\(\s*\d+\s*\)\s*)?;")
_NAME_EXPRESSION = re.compile(r"[A-Za-z_][\w:<>,\s*&().+\-]*")

# Options of NVRTC that have no meaning on the CPU: accepted and ignored (fast math,
# architecture, debug info, register limits). The CPU always computes IEEE-exact operations.
_IGNORED_OPTIONS = re.compile(
    r"(-{1,2}(use_fast_math|use-fast-math|lineinfo|generate-line-info|G|device-debug|"
    r"restrict|extra-device-vectorization|dlink-time-opt|dlto|default-device|"
    r"relocatable-device-code(=\w+)?|rdc(=\w+)?)"
    r"|-{1,2}(arch|gpu-architecture|fmad|ftz|prec-div|prec-sqrt|maxrregcount|dopt|"
    r"ptxas-options|std|minimal)=\S*)$")


@dataclass(frozen=True)
class KernelInfo:
    """One launchable kernel of a compiled library: its table index and C++ signature."""
    index: int
    arity: int
    signature: tuple[str, ...]  # per-parameter type code, e.g. ("Pf4", "i4"); see header


class Library:
    """A loaded emulated module: ctypes handle, kernel table and schedule."""

    def __init__(self, path: Path, names: list[str], fibers: bool):
        self.path = path
        self.fibers = fibers
        self._dll = ctypes.CDLL(str(path), mode=os.RTLD_LOCAL)
        self._dll.gpulstm_emu_arity.argtypes = [ctypes.c_int]
        self._dll.gpulstm_emu_arity.restype = ctypes.c_int
        self._dll.gpulstm_emu_signature.argtypes = [ctypes.c_int]
        self._dll.gpulstm_emu_signature.restype = ctypes.c_char_p
        launch = self._dll.gpulstm_emu_launch
        launch.argtypes = [ctypes.c_int, ctypes.c_int] + [ctypes.c_uint] * 6 + [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
        launch.restype = ctypes.c_int
        self.launch = launch
        self.kernels: dict[str, KernelInfo] = {}
        for i, name in enumerate(names):
            sig = self._dll.gpulstm_emu_signature(i).decode()
            self.kernels[name] = KernelInfo(
                i, self._dll.gpulstm_emu_arity(i), tuple(sig.split(",")) if sig else ())


def strip_comments(code: str) -> str:
    """``code`` without // and /* */ comments (string and char literals kept)."""
    pattern = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'',
                         re.DOTALL)
    return pattern.sub(lambda m: " " if m.group(0)[0] == "/" else m.group(0), code)


def needs_fibers(code: str) -> bool:
    """Whether the source calls a barrier or warp intrinsic (outside comments)."""
    return _SYNC_TOKENS.search(strip_comments(code)) is not None


def extern_c_kernels(code: str) -> list[str]:
    """Names of the ``extern "C" __global__`` kernels declared in the form
    ``extern "C" __global__ void name(`` (braced ``extern "C" { }`` blocks are not scanned:
    list such kernels in ``name_expressions``)."""
    return list(dict.fromkeys(_EXTERN_C_KERNEL.findall(strip_comments(code))))


def rewrite_dynamic_shared(code: str) -> str:
    """``extern __shared__ T name[];`` -> a ``T*`` into the emulator's dynamic shared buffer.
    Line numbers are preserved for compiler messages."""
    def repl(m: re.Match) -> str:
        ctype = " ".join(m.group("type").split())
        newlines = "\n" * m.group(0).count("\n")
        return (f"{ctype}* {m.group('name')} = reinterpret_cast<{ctype}*>("
                f"::gpulstm_emu::dynamic_shared());{newlines}")
    out = _EXTERN_SHARED.sub(repl, code)
    if re.search(r"\bextern\s+__shared__\b", strip_comments(out)):
        raise EmulatorError(
            "unsupported 'extern __shared__' declaration: the emulator understands "
            "'extern __shared__ [__align__(n)] TYPE NAME[];'")
    return out


def translate_options(options) -> list[str]:
    """NVRTC options -> g++ flags: -D/-U/-I pass through, CPU-meaningless ones are ignored."""
    options = (options,) if isinstance(options, str) else tuple(options)
    flags = []
    for opt in options:
        if not isinstance(opt, str):
            raise TypeError(f"options must be strings, got {type(opt).__name__}: {opt!r}")
        m = re.fullmatch(r"(?:-D|--define-macro=)(.+)", opt)
        if m:
            flags.append("-D" + m.group(1))
        elif re.fullmatch(r"-U.+|-I.+", opt):
            flags.append(opt)
        elif m := re.fullmatch(r"--include-path=(.+)", opt):
            flags.append("-I" + m.group(1))
        elif not _IGNORED_OPTIONS.fullmatch(opt):
            raise EmulatorError(
                f"option {opt!r} is not supported by the emulator (supported: -D, -U, -I; "
                "NVRTC-only options such as -arch, --use_fast_math, --std are ignored)")
    return flags


def check_name_expression(expr: str) -> str:
    if not isinstance(expr, str) or not _NAME_EXPRESSION.fullmatch(expr):
        raise ValueError(f"invalid name expression {expr!r}: expected a kernel name or "
                         "template instantiation such as 'lstm_forward<float>'")
    return expr


def generate_source(header: str, code: str, names: list[str]) -> str:
    """The single translation unit: header, kernel source, launch table and C exports."""
    entries = "\n".join(f"  ::gpulstm_emu::entry<&{n}>()," for n in names)
    return f"""#line 1 "cuda_on_cpu.h"
{header}
#line 1 "kernel.cu"
{code}
#line 1 "launch_table.cpp"
static const ::gpulstm_emu::KernelEntry gpulstm_emu_kernels[] = {{
{entries}
}};
#define GPULSTM_EMU_EXPORT extern "C" __attribute__((visibility("default")))
GPULSTM_EMU_EXPORT int gpulstm_emu_arity(int i) {{ return gpulstm_emu_kernels[i].arity; }}
GPULSTM_EMU_EXPORT const char* gpulstm_emu_signature(int i) {{
  return gpulstm_emu_kernels[i].signature();
}}
GPULSTM_EMU_EXPORT int gpulstm_emu_launch(int i, int fibers, unsigned gx, unsigned gy,
    unsigned gz, unsigned bx, unsigned by, unsigned bz, const unsigned char* args,
    size_t shared_mem, char* err, size_t errlen) {{
  return ::gpulstm_emu::launch(gpulstm_emu_kernels[i], fibers, dim3(gx, gy, gz),
                               dim3(bx, by, bz), args, shared_mem, err, errlen);
}}
"""


def cache_dir() -> Path:
    return CACHE.path()


def compiler() -> str:
    return buildcache.compiler()


def compiler_identity(cxx: str) -> str:
    try:
        return buildcache.compiler_identity(cxx)
    except FileNotFoundError as e:
        raise EmulatorError(f"{e}: the emulated execution needs a C++ compiler") from None


_INCLUDE_DIRECTIVE = re.compile(r"^[ \t]*#[ \t]*include\b", re.M)


def included_files(cxx: str, text: str, flags: list[str]) -> str:
    """Paths and contents of the non-system headers ``text`` includes (through ``-I``,
    ``CPATH`` or a path), as the compiler resolves them (``-MM``): part of the cache key, so
    that editing such a header rebuilds the library. Empty for a source without includes."""
    if not _INCLUDE_DIRECTIVE.search(strip_comments(text)):
        return ""
    with tempfile.TemporaryDirectory(prefix="gpulstm-deps-") as tmp:
        src = Path(tmp) / "kernel.cpp"
        src.write_text(text)
        res = subprocess.run([cxx, *_BASE_FLAGS, *flags, "-MM", "-MT", "k", str(src)],
                             capture_output=True, text=True, check=False, cwd=tmp)
    if res.returncode != 0:  # a missing header: the compile that follows reports it
        return "unresolved includes:\n" + res.stderr
    deps = res.stdout.replace("\\\n", " ").split(":", 1)[-1].split()
    out = []
    for dep in deps:
        p = Path(dep)
        if p.name == "kernel.cpp":
            continue
        try:
            out.append(f"{p.resolve()}\n{hashlib.sha256(p.read_bytes()).hexdigest()}")
        except OSError as e:
            out.append(f"{dep}\nunreadable: {e}")
    return "\n".join(out)


_memo: dict[str, Library] = {}
_memo_lock = threading.Lock()
compile_count = 0  # compilations done by this process (tests read it)
CACHE = buildcache.BuildCache("emulated", "the emulator's compile cache", EmulatorError)


def load(code: str, names: list[str], options) -> Library:
    """Compile (or fetch from the disk cache) and load the module; memoized per process."""
    fibers = needs_fibers(code)
    source = rewrite_dynamic_shared(code)
    flags = translate_options(options)
    cxx = compiler()
    header = _HEADER_PATH.read_text()
    text = generate_source(header, source, names)
    key_material = "\0".join([_FORMAT_VERSION, compiler_identity(cxx), *_BASE_FLAGS, *flags,
                              text, included_files(cxx, source, flags)])
    key = hashlib.sha256(key_material.encode()).hexdigest()[:32]
    with _memo_lock:
        lib = _memo.get(key)
        if lib is None:
            lib = Library(_cached_library(cxx, text, flags, key), names, fibers)
            _memo[key] = lib
        return lib


def _cached_library(cxx: str, text: str, flags: list[str], key: str) -> Path:
    """Path of the verified library of ``key`` (gpulstm/buildcache.py: private directory,
    digest checked before loading, compiled once under a lock)."""
    return CACHE.library(f"{key}.so", lambda out: _compile(cxx, text, flags, out))


def _compile(cxx: str, text: str, flags: list[str], out: Path) -> None:
    """Compile ``text`` into the library ``out`` (inside a private build directory)."""
    global compile_count
    src = out.with_suffix(".cpp")
    src.write_text(text)
    cmd = [cxx, *_BASE_FLAGS, *flags, "-o", str(out), str(src)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    compile_count += 1
    if res.returncode != 0:
        raise EmulatorError(
            f"compiling the emulated CUDA module failed ({' '.join(cmd[:-3])} ...), "
            f"exit status {res.returncode}. Compiler log (kernel.cu = your source):\n"
            f"{res.stderr}{res.stdout}")


def clear_memo() -> None:
    """Forget the loaded modules of this process (tests; libraries stay mapped)."""
    with _memo_lock:
        _memo.clear()
