"""The CUDA sources in ``kernels/`` as one self-contained string plus its name expressions.

One loader serves every consumer of the kernels: the ``cupy`` backend (``cupy.RawModule``),
the ``emulated`` backend (the same text compiled for the CPU) and the NVRTC compile test.

* The folder is found both in a wheel (``gpulstm/kernels``, put there by hatchling's
  ``force-include``) and in a checkout (``<repo>/kernels``); the environment variable
  ``GPULSTM_KERNEL_DIR`` overrides both.
* Local ``#include "..."`` lines of our own headers are inlined (each header once), so the
  returned text is everything the compiler sees and CuPy's on-disk cache keys on all of it.
  ``#include <...>`` (system or CUDA headers) is refused: NVRTC runs without the toolkit's
  headers and the CPU emulation has none.
* Every kernel is a ``template <typename T> __global__`` function instantiated for float and
  double through name expressions ``"<kernel><float>"`` / ``"<kernel><double>"``; the time-loop
  kernels are templates on the cell too, ``"fused_forward<LstmCell, float>"``, instantiated for
  every cell header of ``kernels/cells/`` (a new cell's header is compiled in by being there).
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import NamedTuple

#: kernel source files, in the order they are concatenated
KERNEL_FILES = (
    "lstm_forward.cu",
    "lstm_backward.cu",
    "lstm_projection.cu",
    "gru_forward.cu",
    "gru_backward.cu",
    "rnn_forward.cu",
    "rnn_backward.cu",
    "fused_step.cu",
    "persistent.cu",
    "dropout.cu",
)
#: every kernel (each named like its reference in gpulstm.backends.numpy_pointwise)
KERNELS = (
    "lstm_forward",
    "lstm_backward",
    "lstm_proj_forward",
    "lstm_proj_backward",
    "gru_forward",
    "gru_backward",
    "rnn_forward",
    "rnn_backward",
)
#: the time-loop kernels (gpulstm.backends.kernel_loop), templates on the cell: each is
#: instantiated for every cell struct of ``kernels/cells/`` (:func:`cell_structs`), e.g.
#: ``fused_forward<LstmCell, float>``; a recurrent product followed by the cell's pointwise step
LOOP_KERNELS = (
    "fused_forward",
    "fused_backward",
    "persistent_forward",
    "persistent_backward",
)
#: the random-number kernels; each has its NumPy twin in gpulstm.backends.philox
RNG_KERNELS = (
    "dropout_mask",
)
#: the kernels with one template argument, the dtype
ALL_KERNELS = KERNELS + RNG_KERNELS
#: NumPy dtype name -> C++ template argument
CTYPES = {"float32": "float", "float64": "double"}
#: bfloat16 storage (float compute; ``gl_bf16`` of kernels/gpulstm_common.cuh): the stepwise
#: pointwise kernels and the fused time-loop kernels (the persistent and random-number kernels
#: are float32/float64 only)
BF16_CTYPE = "gl_bf16"
BF16_KERNELS = KERNELS
BF16_LOOP_KERNELS = ("fused_forward", "fused_backward")
#: NVRTC options of every compile (CuPy adds the architecture and ``-ftz=true`` itself).
#: No fast-math: results must match the NumPy reference to rounding.
NVRTC_OPTIONS = ("--std=c++17",)

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"]+)[>"].*$', re.M)


#: a cell struct of a header in kernels/cells/: ``struct LstmCell {`` at the start of a line
_CELL_STRUCT = re.compile(r"^struct[ \t]+([A-Za-z_]\w*)[ \t]*\{", re.M)


class KernelSource(NamedTuple):
    code: str  # the whole translation unit, our headers inlined
    name_expressions: tuple  # ("lstm_forward<float>", ..., "fused_forward<LstmCell, float>", ...)


def name_expression(kernel, dtype, cell=None):
    """``("lstm_forward", "float32")`` -> ``"lstm_forward<float>"``; a time-loop kernel takes
    the cell struct: ``("fused_forward", "float32", "LstmCell")`` ->
    ``"fused_forward<LstmCell, float>"``."""
    if str(dtype) == "bfloat16" and kernel in BF16_KERNELS and cell is None:
        return f"{kernel}<{BF16_CTYPE}>"
    if str(dtype) == "bfloat16" and kernel in BF16_LOOP_KERNELS and cell in cell_structs():
        return f"{kernel}<{cell}, {BF16_CTYPE}>"
    try:
        ctype = CTYPES[str(dtype)]
    except KeyError:
        bf = " (bfloat16: " + ", ".join(BF16_KERNELS + BF16_LOOP_KERNELS) + ")"
        raise TypeError(f"kernels exist for dtypes {tuple(CTYPES)}{bf}; got {dtype!s} for "
                        f"{kernel!r}") from None
    if kernel in LOOP_KERNELS:
        structs = cell_structs()
        if cell not in structs:
            raise ValueError(f"kernel {kernel!r} is a template on the cell: cell must be one of "
                             f"the structs of kernels/cells/ {structs}; got {cell!r}")
        return f"{kernel}<{cell}, {ctype}>"
    if kernel not in ALL_KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of "
                         f"{ALL_KERNELS + LOOP_KERNELS}")
    if cell is not None:
        raise ValueError(f"kernel {kernel!r} takes no cell; got {cell!r}")
    return f"{kernel}<{ctype}>"


def name_expressions():
    return (tuple(name_expression(k, d) for k in ALL_KERNELS for d in CTYPES)
            + tuple(name_expression(k, "bfloat16") for k in BF16_KERNELS)
            + tuple(name_expression(k, "bfloat16", c) for k in BF16_LOOP_KERNELS
                    for c in cell_structs())
            + tuple(name_expression(k, d, c) for k in LOOP_KERNELS for c in cell_structs()
                    for d in CTYPES))


def cell_headers(directory=None):
    """The cell headers ``kernels/cells/*.cuh`` (sorted; ``cell_common.cuh`` is what they
    share, not a cell): each defines one cell struct, and every one is compiled in."""
    d = Path(directory or kernel_dir()) / "cells"
    return tuple(p for p in sorted(d.glob("*.cuh")) if p.name != "cell_common.cuh")


@functools.lru_cache(maxsize=None)
def _cell_structs(directory):
    out = []
    for p in cell_headers(directory):
        found = _CELL_STRUCT.findall(p.read_text(encoding="utf-8"))
        if len(found) != 1:
            raise ValueError(f"{p}: a cell header defines exactly one cell struct "
                             f"('struct Name {{' at the start of a line); found {found}")
        out.append(found[0])
    return tuple(out)


def cell_structs():
    """Names of the cell structs the time-loop kernels are instantiated for, one per header
    of ``kernels/cells/`` (``("CifgCell", "GruCell", "IndRnnCell", "LstmCell", "RnnCell")``):
    a new cell's header dropped there is compiled into every loop kernel."""
    return _cell_structs(kernel_dir())


def _candidates():
    env = os.environ.get("GPULSTM_KERNEL_DIR")
    if env:
        return [Path(env)]
    here = Path(__file__).resolve().parent
    return [here / "kernels", here.parent / "kernels"]  # wheel, then checkout


def kernel_dir():
    """The folder holding the ``.cu``/``.cuh`` sources (wheel or checkout)."""
    tried = _candidates()
    for d in tried:
        if (d / KERNEL_FILES[0]).is_file():
            return d
    raise FileNotFoundError(
        "gpulstm kernel sources not found; looked for " + KERNEL_FILES[0] + " in "
        + ", ".join(str(d) for d in tried))


def _inline(path, directory, seen):
    """Text of ``path`` with its local includes replaced by their (inlined) text. An include
    is resolved against the including file's folder (``cells/lstm.cuh`` includes
    ``"cell_common.cuh"`` beside it, which includes ``"../kernel_flags.cuh"``) and must stay
    inside ``directory``; each file is inlined once."""
    text = path.read_text(encoding="utf-8")
    rel = path.resolve().relative_to(directory.resolve()).as_posix()
    out = [f'#line 1 "{rel}"\n']
    pos = 0
    line = 1
    for m in _INCLUDE.finditer(text):
        out.append(text[pos:m.start()])
        line += text.count("\n", pos, m.start())
        kind, name = m.group(1), m.group(2)
        if kind == "<":
            raise ValueError(f"{rel}:{line}: system include <{name}> is not allowed in "
                             "kernels/ (NVRTC runs without CUDA headers; so does the emulation)")
        inc = (path.parent / name).resolve()
        if not inc.is_relative_to(directory.resolve()):
            raise ValueError(f"{rel}:{line}: #include \"{name}\" points outside {directory}")
        if not inc.is_file():
            raise FileNotFoundError(f"{rel}:{line}: #include \"{name}\" not found in "
                                    f"{path.parent}")
        if inc not in seen:
            seen.add(inc)
            out.append(_inline(inc, directory, seen))
            out.append(f'#line {line + 1} "{rel}"')
        else:
            out.append(f"// (already included: {name})")
        pos = m.end()
    out.append(text[pos:])
    return "".join(out) + ("" if text.endswith("\n") else "\n")


@functools.lru_cache(maxsize=None)
def _assemble(directory):
    seen = set()
    parts = ["// gpulstm kernels: generated from kernels/ by gpulstm/kernel_source.py\n"]
    for name in KERNEL_FILES:
        parts.append(_inline(directory / name, directory, seen))
    for header in cell_headers(directory):  # every cell, for the loop kernels' instantiations
        if header.resolve() not in seen:
            seen.add(header.resolve())
            parts.append(_inline(header, directory, seen))
    return "".join(parts)


def kernel_source():
    """The assembled source and every name expression (each kernel for float and double)."""
    return KernelSource(_assemble(kernel_dir()), name_expressions())
