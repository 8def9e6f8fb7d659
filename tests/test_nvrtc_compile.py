"""The assembled kernel source compiles with NVRTC (no GPU needed) for sm_80 and sm_90, with
the options the cupy backend uses, every name expression, and an empty log (a warning fails).

Prints the NVRTC log and a per-kernel resource report (registers, stack frame) read from the
cubin's ``.nv.info`` section; also ``cuobjdump --dump-resource-usage`` when that tool exists.
"""
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from gpulstm.backends import numpy_pointwise
from gpulstm.kernel_source import (KERNELS, LOOP_KERNELS, NVRTC_OPTIONS, RNG_KERNELS, cell_structs,
                                   kernel_dir,
                                   kernel_source)

nvrtc = pytest.importorskip(
    "cuda.bindings.nvrtc", reason="cuda-bindings is not installed (pip install 'gpulstm[nvrtc]')")

#: options CuPy's RawModule adds to ours (cupy/cuda/compiler.py): flush denormals, real arch
CUPY_ADDED = ("-ftz=true",)
ARCHS = ("sm_80", "sm_90")


def _check(result):
    err, *rest = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise RuntimeError(f"NVRTC call failed: {err}")
    return rest[0] if len(rest) == 1 else rest


def compile_nvrtc(code, name_expressions, options):
    """-> (ok, log, {name expression: lowered name}, cubin bytes or None)."""
    prog = _check(nvrtc.nvrtcCreateProgram(code.encode(), b"gpulstm_kernels.cu", 0, [], []))
    try:
        for ne in name_expressions:
            _check(nvrtc.nvrtcAddNameExpression(prog, ne.encode()))
        opts = [o.encode() for o in options]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        size = _check(nvrtc.nvrtcGetProgramLogSize(prog))
        # a fresh mutable buffer: NVRTC writes into it (b" " * 1 would be CPython's shared
        # one-byte bytes object, and overwriting it corrupts every b" " in the process)
        log = bytearray(size)
        _check(nvrtc.nvrtcGetProgramLog(prog, log))
        log = bytes(log).rstrip(b"\0").decode(errors="replace").strip()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return False, log, {}, None
        lowered = {ne: _check(nvrtc.nvrtcGetLoweredName(prog, ne.encode())).decode()
                   for ne in name_expressions}
        size = _check(nvrtc.nvrtcGetCUBINSize(prog))
        cubin = bytearray(size)
        _check(nvrtc.nvrtcGetCUBIN(prog, cubin))
        return True, log, lowered, bytes(cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def resource_usage(cubin):
    """{mangled kernel: (registers, stack frame bytes)} from the cubin's global ``.nv.info``
    (EIATTR_REGCOUNT 0x2f, EIATTR_FRAME_SIZE 0x11). ELF64 little-endian."""
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    secs = [struct.unpack_from("<IIQQQQIIQQ", cubin, shoff + i * shentsize) for i in range(shnum)]

    def cstr(base, off):
        return cubin[base + off:cubin.index(b"\0", base + off)].decode()

    names = [cstr(secs[shstrndx][4], s[0]) for s in secs]
    symtab = secs[names.index(".symtab")]
    strbase = secs[symtab[6]][4]
    syms = [cstr(strbase, struct.unpack_from("<I", cubin, symtab[4] + i * 24)[0])
            for i in range(symtab[5] // 24)]
    info = secs[names.index(".nv.info")]
    d = cubin[info[4]:info[4] + info[5]]
    out, i = {}, 0
    while i + 4 <= len(d):
        fmt, attr = d[i], d[i + 1]
        if fmt == 4:  # EIFMT_SVAL: u16 size, payload
            size, = struct.unpack_from("<H", d, i + 2)
            if attr in (0x2F, 0x11) and size >= 8:
                sym, val = struct.unpack_from("<II", d, i + 4)
                regs, frame = out.get(syms[sym], (None, None))
                out[syms[sym]] = (val, frame) if attr == 0x2F else (regs, val)
            i += 4 + size
        else:
            i += 4
    return out


@pytest.fixture(scope="module")
def source():
    return kernel_source()


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_without_warnings(source, arch, tmp_path):
    options = NVRTC_OPTIONS + CUPY_ADDED + (f"--gpu-architecture={arch}",)
    ok, log, lowered, cubin = compile_nvrtc(source.code, source.name_expressions, options)
    print(f"NVRTC {'.'.join(map(str, _check(nvrtc.nvrtcVersion())))} {' '.join(options)}: "
          f"log {'empty' if not log else 'below'}")
    if log:
        print(log)
    assert ok, f"NVRTC failed for {arch}:\n{log}"
    assert not log, f"NVRTC log for {arch} is not empty (warnings fail the build):\n{log}"
    assert set(lowered) == set(source.name_expressions)
    for ne, mangled in lowered.items():
        assert ne.split("<")[0] in mangled, (ne, mangled)

    try:
        usage = resource_usage(cubin)
    except Exception as e:  # the report is informative only
        print(f"resource report unavailable: {type(e).__name__}: {e}")
        usage = {}
    if usage:
        print(f"{arch} resource usage (registers, stack frame bytes):")
        for ne, mangled in sorted(lowered.items()):
            regs, frame = usage.get(mangled, (None, None))
            print(f"  {ne:32s} {regs!s:>4} regs  {frame!s:>4} B frame")
        frames = {ne: usage[m][1] for ne, m in lowered.items() if m in usage and usage[m][1]}
        assert not frames, f"stack frames (local memory: spills or local arrays) in {frames}"
    tool = shutil.which("cuobjdump") or next(
        (str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/cuobjdump"))), None)
    if tool:
        path = tmp_path / f"kernels_{arch}.cubin"
        path.write_bytes(cubin)
        r = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True, text=True)
        print(r.stdout or r.stderr)
    else:
        print("cuobjdump not found: no cuobjdump report")


def test_source_is_self_contained(source):
    assert not re.search(r"^\s*#\s*include", source.code, re.M), "includes left in the source"
    assert source.code.count("#ifndef GPULSTM_COMMON_CUH") == 1
    for k in KERNELS + RNG_KERNELS:
        assert re.search(rf"__global__\s+void\s+{k}\s*\(", source.code), k
    for k in LOOP_KERNELS:  # templates on the cell: one instantiation per cell header
        assert re.search(rf"template <class Cell, typename T>\s*__global__\s+void\s+{k}\s*\(",
                         source.code), k
    structs = cell_structs()
    assert {"LstmCell", "GruCell", "RnnCell", "CifgCell", "IndRnnCell"} <= set(structs)
    # float and double for every kernel, plus the bfloat16 storage of the stepwise and the two
    # fused kernels
    assert len(source.name_expressions) == 2 * (len(KERNELS) + len(RNG_KERNELS)
                                                 + len(LOOP_KERNELS) * len(structs)) \
        + len(KERNELS) + 2 * len(structs)
    assert "fused_forward<CifgCell, double>" in source.name_expressions
    assert "lstm_forward<gl_bf16>" in source.name_expressions
    assert "fused_backward<IndRnnCell, gl_bf16>" in source.name_expressions


def test_a_cell_header_dropped_in_kernels_cells_is_compiled_into_the_loop_kernels(tmp_path):
    """A new cell's header in kernels/cells/ (nothing else) is inlined into the source and gets
    every time-loop kernel's name expressions; a header with no or two cell structs is refused."""
    from gpulstm import kernel_source as ks
    d = tmp_path / "kernels"
    shutil.copytree(kernel_dir(), d)
    text = (d / "cells" / "cifg.cuh").read_text().replace("CifgCell", "MyCell").replace(
        "GPULSTM_CELL_CIFG_CUH", "GPULSTM_CELL_MY_CUH")
    (d / "cells" / "mycell.cuh").write_text(text)
    assert "MyCell" in ks._cell_structs(d)
    assert "struct MyCell {" in ks._assemble(d)
    (d / "cells" / "two.cuh").write_text("struct A {\n};\nstruct B {\n};\n")
    ks._cell_structs.cache_clear()  # (read once per folder)
    with pytest.raises(ValueError, match="exactly one cell struct"):
        ks._cell_structs(d)
    ks._cell_structs.cache_clear()


def test_flag_values_match_numpy_reference():
    text = (kernel_dir() / "kernel_flags.cuh").read_text()
    found = dict(re.findall(r"^\s*(LSTM_\w+|RNN_\w+)\s*=\s*(\d+)", text, re.M))
    names = ("LSTM_NO_FORGET", "LSTM_PEEPHOLE", "LSTM_PROJ", "RNN_RELU")
    assert {k: int(v) for k, v in found.items()} == {k: getattr(numpy_pointwise, k) for k in names}


def test_kernel_signatures_follow_numpy_reference(source):
    """Each kernel's parameters are the NumPy function's (same names, same order; flags last),
    with B and H inserted before flags."""
    import inspect
    for k in KERNELS:
        m = re.search(rf"__global__\s+void\s+{k}\s*\((.*?)\)\s*\{{", source.code, re.S)
        params = [re.sub(r"//[^\n]*", "", p).split()[-1].lstrip("*")
                  for p in re.sub(r"//[^\n]*", "", m.group(1)).split(",")]
        want = list(inspect.signature(getattr(numpy_pointwise, k)).parameters)
        if want[-1] == "flags":
            want = want[:-1] + ["B", "H", "flags"]
        else:
            want = want + ["B", "H"]
        assert params == want, f"{k}: {params} vs {want}"


def test_kernel_dir_override(tmp_path, monkeypatch):
    """GPULSTM_KERNEL_DIR points the loader elsewhere (used to test modified kernels)."""
    from gpulstm import kernel_source as ks
    for f in kernel_dir().iterdir():
        if f.is_file():  # the CUDA sources (kernels/cpu/ holds the CPU execution's C++)
            (tmp_path / f.name).write_bytes(f.read_bytes())
    shutil.copytree(kernel_dir() / "cells", tmp_path / "cells")  # the cell headers
    monkeypatch.setenv("GPULSTM_KERNEL_DIR", str(tmp_path))
    assert ks.kernel_dir() == tmp_path
    assert ks.kernel_source().code == kernel_source().code


_PTXAS_ENTRY = re.compile(r"Function properties for (\S+)\n.*?(\d+) bytes stack frame, (\d+) bytes "
                          r"spill stores, (\d+) bytes spill loads\n.*?Used (\d+) registers"
                          r"(?:, used \d+ barriers)?(?:, (\d+) bytes smem)?", re.S)


def ptxas_report(log):
    """{mangled kernel: dict(frame, spill_stores, spill_loads, registers, smem)} from the
    ``ptxas -v`` lines NVRTC writes to its log with ``--ptxas-options=-v``."""
    out = {}
    for m in _PTXAS_ENTRY.finditer(log):
        name, *vals = m.groups()
        out[name] = dict(zip(("frame", "spill_stores", "spill_loads", "registers", "smem"),
                             (int(v or 0) for v in vals)))
    return out


_PTXAS_RUNS = {}


def _ptxas_compile(source, arch):
    """(ok, log, lowered) of a compile with ptxas's verbose report, once per arch."""
    if arch not in _PTXAS_RUNS:
        options = NVRTC_OPTIONS + CUPY_ADDED + (f"--gpu-architecture={arch}", "--ptxas-options=-v")
        _PTXAS_RUNS[arch] = compile_nvrtc(source.code, source.name_expressions, options)[:3]
    return _PTXAS_RUNS[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_ptxas_resource_report_no_spills(source, arch):
    """ptxas's own report (registers, spill stores/loads, stack frame, static shared memory
    per block) for every kernel, printed; a kernel that spills or uses a stack frame fails."""
    ok, log, lowered = _ptxas_compile(source, arch)
    assert ok, log
    report = ptxas_report(log)
    print(f"\nptxas {arch}: kernel, registers, spill stores/loads bytes, stack frame bytes, "
          f"static shared bytes per block")
    for ne, mangled in sorted(lowered.items()):
        r = report[mangled]
        print(f"  {ne:32s} {r['registers']:4d} regs  spills {r['spill_stores']}/{r['spill_loads']} B"
              f"  frame {r['frame']} B  smem {r['smem']} B")
    assert set(lowered.values()) <= set(report), "ptxas report misses kernels"
    bad = {ne: report[m] for ne, m in lowered.items()
           if report[m]["spill_stores"] or report[m]["spill_loads"] or report[m]["frame"]}
    assert not bad, f"kernels spill to local memory on {arch}: {bad}"
    from gpulstm.backends.kernel_loop import ROWS, THREADS, TILE
    for ne, m in lowered.items():  # static FusedShared<T>: the left operand's tile, partial sums
        if ne.startswith(("fused_", "persistent_")):
            want = (ROWS * (TILE + 1) + 4 * THREADS) * (8 if ne.endswith("double>") else 4)
            if "<IndRnnCell," in ne:  # no dense recurrence: no product, no shared memory
                want = 0
            assert report[m]["smem"] == want, (ne, report[m]["smem"], want)


def test_persistent_kernels_are_co_resident_on_h100_h200(source):
    """For every shape the "auto" rule sends to a persistent kernel (B, H from the issue's
    grid; 132 SMs as on an H100 SXM / H200), ONE block fits on an SM by ptxas's sm_90 numbers
    (registers x threads <= 64 Ki, static + dynamic shared <= 227 KiB) and the grid has at most
    132 blocks: all blocks co-resident, as the grid-wide barrier needs."""
    from gpulstm.backends import kernel_loop as kl
    ok, log, lowered = _ptxas_compile(source, "sm_90")
    assert ok, log
    report = ptxas_report(log)
    checked = 0
    for cell, G in (("LstmCell", 4), ("GruCell", 3), ("RnnCell", 1), ("CifgCell", 3)):
        for ctype, item in (("float", 4), ("double", 8)):
            for B in (1, 6, 8, 32, 64):
                for H in (72, 128, 512, 1024):
                    plan = kl.persistent_plan(B, H, G, item)
                    if plan is None or B > kl.PERSISTENT_MAX_BATCH:
                        continue  # "auto" runs fused here
                    threads = plan["block"][0] * plan["block"][1] * plan["block"][2]
                    for d in ("forward", "backward"):
                        r = report[lowered[f"persistent_{d}<{cell}, {ctype}>"]]
                        smem = r["smem"] + plan["shared"]
                        print(f"  persistent_{d}<{cell}, {ctype}> B={B} H={H}: {plan['blocks']} "
                              f"blocks, {threads} threads x {r['registers']} regs, {smem} B shared"
                              f"{' (W_hh resident)' if plan['resident'] else ''}")
                        assert plan["blocks"] <= kl.SM_COUNT
                        assert threads * r["registers"] <= 65536 and threads <= 1024
                        assert smem <= kl.SMEM_PER_BLOCK
                        checked += 1
    assert checked > 60
