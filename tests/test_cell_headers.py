"""The per-cell headers kernels/cells/<cell>.cuh, compiled as plain C++ and checked one unit at a
time: forward against the NumPy reference step (LSTM, GRU, RNN) or the published formulas
written out here (CIFG, IndRNN), backward against central finite differences of the header's
own forward, in float64; and compiled for the device with NVRTC (sm_80, sm_90). The flag bits of kernels/kernel_flags.cuh must equal gpulstm/kernel_flags.py's."""
import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

from gpulstm import kernel_flags
from gpulstm.backends import numpy_pointwise as npw
from gpulstm.kernel_source import kernel_dir

CELLS = {  # struct name, G, SAVED, NCONST, HAS_C, SPLIT_DGH
    "lstm": ("LstmCell", 4, 4, 3, True, False),
    "gru": ("GruCell", 3, 4, 1, False, True),
    "rnn": ("RnnCell", 1, 0, 0, False, False),
    "cifg": ("CifgCell", 3, 3, 0, True, False),
    "indrnn": ("IndRnnCell", 1, 0, 1, False, False),
}

DRIVER = r"""
#include <cmath>
#include "cells/lstm.cuh"
#include "cells/gru.cuh"
#include "cells/rnn.cuh"
#include "cells/cifg.cuh"
#include "cells/indrnn.cuh"
struct Math {
  static double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
  static double tanh(double x) { return std::tanh(x); }
};
// Arrays are [q, n] blocks (gate / constant / saved column q of unit j at q n + j).
#define CELL_API(name, S)                                                                      \
  extern "C" void name##_forward(int n, const double* gx, const double* gh, const double* k,   \
                                 const double* cp, const double* hp, int flags, double* saved, \
                                 double* c, double* h) {                                       \
    for (int j = 0; j < n; ++j)                                                                \
      S::forward<Math, double>(gx + j, gh + j, n, k + j, n, cp[j], hp[j], flags, saved + j, n, \
                               c[j], h[j]);                                                    \
  }                                                                                            \
  extern "C" void name##_backward(int n, const double* saved, const double* k, const double* c, \
                                  const double* cp, const double* h, const double* hp,         \
                                  const double* dh, double* dc, int flags, double* dgx,        \
                                  double* dgh, double* dhp) {                                  \
    for (int j = 0; j < n; ++j)                                                                \
      S::backward<Math, double>(saved + j, n, k + j, n, c[j], cp[j], h[j], hp[j], dh[j], dc[j], \
                                flags, dgx + j, dgh + j, n, dhp[j]);                           \
  }
CELL_API(lstm, LstmCell)
CELL_API(gru, GruCell)
CELL_API(rnn, RnnCell)
CELL_API(cifg, CifgCell)
CELL_API(indrnn, IndRnnCell)
"""


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.fail("no C++ compiler: the cell headers must compile as plain C++")
    d = tmp_path_factory.mktemp("cells")
    src, so = d / "driver.cpp", d / "cells.so"
    src.write_text(DRIVER)
    subprocess.run([cxx, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
                    "-I", str(kernel_dir()), str(src), "-o", str(so)], check=True,
                   capture_output=True, text=True)
    return ctypes.CDLL(str(so))


def _ptr(a):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_double))


class Unit:
    """Calls one header's forward/backward over n units."""

    def __init__(self, lib, cell):
        self.lib, self.cell = lib, cell
        _, self.G, self.SAVED, self.NCONST, self.HAS_C, self.SPLIT = CELLS[cell]

    def forward(self, gx, gh, k, cp, hp, flags):
        n = hp.size
        saved = np.full((max(self.SAVED, 1), n), np.nan)
        c, h = np.full(n, np.nan), np.full(n, np.nan)
        getattr(self.lib, self.cell + "_forward")(
            ctypes.c_int(n), _ptr(gx), _ptr(gh), _ptr(k), _ptr(cp), _ptr(hp), ctypes.c_int(flags),
            _ptr(saved), _ptr(c), _ptr(h))
        return saved, c, h

    def backward(self, saved, k, c, cp, h, hp, dh, dc, flags):
        n = hp.size
        dc = dc.copy()
        dgx, dgh = np.full((self.G, n), np.nan), np.full((self.G, n), np.nan)
        dhp = np.full(n, np.nan)
        getattr(self.lib, self.cell + "_backward")(
            ctypes.c_int(n), _ptr(saved), _ptr(k), _ptr(c), _ptr(cp), _ptr(h), _ptr(hp),
            _ptr(dh), _ptr(dc), ctypes.c_int(flags), _ptr(dgx), _ptr(dgh), _ptr(dhp))
        if not self.SPLIT:
            assert np.isnan(dgh).all(), "a cell without SPLIT_DGH must not write dgh"
            dgh = dgx
        return dgx, dgh, dc, dhp


def _inputs(rng, cell, n):
    _, G, _, NCONST, _, _ = CELLS[cell]
    gx, gh = rng.standard_normal((G, n)), rng.standard_normal((G, n))
    k = rng.standard_normal((max(NCONST, 1), n))
    cp, hp = rng.standard_normal(n), rng.uniform(-1, 1, n)
    return gx, gh, k, cp, hp


VARIANTS = [("lstm", 0), ("lstm", npw.LSTM_PEEPHOLE), ("lstm", npw.LSTM_NO_FORGET),
            ("lstm", npw.LSTM_PEEPHOLE | npw.LSTM_NO_FORGET), ("gru", 0), ("rnn", 0),
            ("rnn", npw.RNN_RELU), ("cifg", 0), ("indrnn", 0), ("indrnn", npw.RNN_RELU)]


def test_flag_bits_agree():
    text = (kernel_dir() / "kernel_flags.cuh").read_text()
    found = dict((m, int(v)) for m, v in re.findall(r"\b([A-Z_]+) = (\d+)", text))
    want = {n: getattr(kernel_flags, n) for n in ("LSTM_NO_FORGET", "LSTM_PEEPHOLE", "LSTM_PROJ", "RNN_RELU")}
    assert found == want


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _reference_forward(cell, gx, gh, k, cp, hp, flags):
    """(c, h) from the NumPy reference step or the published formula."""
    n = hp.size
    row = lambda a: a.reshape(1, -1)  # [G, n] blocks -> one batch row [1, G n]
    L = np.array([1])
    if cell == "lstm":
        gates, c, h, y = np.empty((1, 4 * n)), np.empty((1, n)), np.empty((1, n)), np.empty((1, n))
        npw.lstm_forward(row(gx), row(gh), row(cp), row(hp), L, 0, k, gates, c, h, y, flags)
        return c[0], h[0]
    if cell == "gru":
        gates, h, y = np.empty((1, 4 * n)), np.empty((1, n)), np.empty((1, n))
        npw.gru_forward(row(gx), row(gh), k[0], row(hp), L, 0, gates, h, y)
        return None, h[0]
    if cell == "rnn":
        h, y = np.empty((1, n)), np.empty((1, n))
        npw.rnn_forward(row(gx), row(gh), row(hp), L, 0, h, y, flags)
        return None, h[0]
    if cell == "cifg":  # Greff et al. 2017: i = 1 - f
        a = gx + gh
        f, g, o = _sigmoid(a[0]), np.tanh(a[1]), _sigmoid(a[2])
        c = f * cp + (1 - f) * g
        return c, o * np.tanh(c)
    if cell == "indrnn":  # Li et al. 2018: h = act(W x + u * h_prev + b)
        a = gx[0] + k[0] * hp
        return None, (np.maximum(a, 0) if flags & npw.RNN_RELU else np.tanh(a))
    raise AssertionError(cell)


@pytest.mark.parametrize("cell,flags", VARIANTS)
def test_forward_matches_reference(lib, cell, flags):
    rng = np.random.default_rng([7, len(cell), flags])
    u = Unit(lib, cell)
    gx, gh, k, cp, hp = _inputs(rng, cell, 37)
    saved, c, h = u.forward(gx, gh, k, cp, hp, flags)
    c_ref, h_ref = _reference_forward(cell, gx, gh, k, cp, hp, flags)
    np.testing.assert_allclose(h, h_ref, rtol=1e-13, atol=1e-15)
    if u.HAS_C:
        np.testing.assert_allclose(c, c_ref, rtol=1e-13, atol=1e-15)
    else:
        assert np.isnan(c).all(), "a cell without HAS_C must not write c"
    if u.SAVED == 0:
        assert np.isnan(saved).all()
    else:
        assert np.isfinite(saved).all(), "every saved column is written"


@pytest.mark.parametrize("cell,flags", [v for v in VARIANTS if v[0] in ("lstm", "gru", "rnn")])
def test_backward_matches_numpy_reference(lib, cell, flags):
    rng = np.random.default_rng([11, len(cell), flags])
    n = 29
    u = Unit(lib, cell)
    gx, gh, k, cp, hp = _inputs(rng, cell, n)
    saved, c, h = u.forward(gx, gh, k, cp, hp, flags)
    dh, dc = rng.standard_normal(n), rng.standard_normal(n)
    dgx, dgh, dcp, dhp = u.backward(saved, k, c, cp, h, hp, dh, dc, flags)
    row = lambda a: a.reshape(1, -1).copy()
    L, z = np.array([1]), np.zeros((1, n))
    if cell == "lstm":
        ref, dc_ref, dh_ref = np.empty((1, 4 * n)), row(dc), row(dh)
        npw.lstm_backward(row(saved), row(c), row(cp), None, dh_ref, z, dc_ref, L, 0, k, ref,
                          flags)
        np.testing.assert_allclose(dcp, dc_ref[0], rtol=1e-13, atol=1e-15)
        ref_h = ref
    elif cell == "gru":
        ref, ref_h, dh_ref = np.empty((1, 3 * n)), np.empty((1, 3 * n)), row(dh)
        npw.gru_backward(row(saved), row(hp), dh_ref, z, L, 0, ref, ref_h)
    else:
        ref, dh_ref = np.empty((1, n)), row(dh)
        npw.rnn_backward(row(h), dh_ref, z, L, 0, ref, flags)
        ref_h = ref
    np.testing.assert_allclose(dgx.reshape(1, -1), ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dgh.reshape(1, -1), ref_h, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(dhp, dh_ref[0], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("cell,flags", VARIANTS)
def test_backward_matches_finite_differences(lib, cell, flags):
    """L = sum(wh h) + sum(wc c) through the header's forward; the header's backward with
    dh = wh, dc = wc gives dL/dgx, dL/dgh, dL/dc_prev and the direct dL/dh_prev."""
    rng = np.random.default_rng([13, len(cell), flags])
    n = 23
    u = Unit(lib, cell)
    gx, gh, k, cp, hp = _inputs(rng, cell, n)
    if cell == "indrnn" or (cell == "rnn" and flags & npw.RNN_RELU):  # keep off relu's kink
        a = gx[0] + (k[0] * hp if cell == "indrnn" else gh[0])
        gx[0] += np.where(np.abs(a) < 0.05, 0.1, 0)
    wh, wc = rng.standard_normal(n), rng.standard_normal(n)

    def loss(gx, gh, cp, hp):
        _, c, h = u.forward(gx, gh, k, cp, hp, flags)
        return (wh * h).sum() + ((wc * c).sum() if u.HAS_C else 0.0)

    saved, c, h = u.forward(gx, gh, k, cp, hp, flags)
    dgx, dgh, dcp, dhp = u.backward(saved, k, c, cp, h, hp, wh, wc if u.HAS_C else np.zeros(n),
                                    flags)
    eps = 1e-6
    args = {"gx": gx, "gh": gh, "cp": cp, "hp": hp}

    def numeric(name):
        out = np.zeros_like(args[name])
        flat = out.reshape(-1)
        for i in range(flat.size):
            plus = {key: v.copy() for key, v in args.items()}
            minus = {key: v.copy() for key, v in args.items()}
            plus[name].reshape(-1)[i] += eps
            minus[name].reshape(-1)[i] -= eps
            flat[i] = (loss(**plus) - loss(**minus)) / (2 * eps)
        return out

    tol = dict(rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dgx, numeric("gx"), **tol)
    gh_num = numeric("gh")
    if cell == "indrnn":  # no recurrent GEMM: gh is never read
        assert not gh_num.any()
    else:
        np.testing.assert_allclose(dgh, gh_num, **tol)
    np.testing.assert_allclose(dhp, numeric("hp"), **tol)
    if u.HAS_C:
        np.testing.assert_allclose(dcp, numeric("cp"), **tol)


DEVICE_DRIVER = r"""
#include "cells/lstm.cuh"
#include "cells/gru.cuh"
#include "cells/rnn.cuh"
#include "cells/cifg.cuh"
#include "cells/indrnn.cuh"
struct DevMath {
  __device__ static float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
  __device__ static float tanh(float x) { return tanhf(x); }
  __device__ static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
  __device__ static double tanh(double x) { return ::tanh(x); }
};
template <class S, class T>
__global__ void cell_step(const T* gx, const T* gh, const T* k, const T* cp, const T* hp, T* saved,
                          T* c, T* h, T* dgx, T* dgh, T* dhp, int n, int flags) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= n) return;
  T cn = T(0), hn = T(0), dc = T(1), d = T(0);
  S::template forward<DevMath, T>(gx + j, gh + j, n, k + j, n, cp[j], hp[j], flags, saved + j, n,
                                  cn, hn);
  S::template backward<DevMath, T>(saved + j, n, k + j, n, cn, cp[j], hn, hp[j], hn, dc, flags,
                                   dgx + j, dgh + j, n, d);
  c[j] = cn + dc;
  h[j] = hn;
  dhp[j] = d;
}
"""


@pytest.mark.parametrize("arch", ("sm_80", "sm_90"))
def test_headers_compile_with_nvrtc(arch):
    """Every cell header compiles for the device (float and double), without a warning."""
    pytest.importorskip("cuda.bindings.nvrtc",
                        reason="cuda-bindings is not installed (pip install 'gpulstm[nvrtc]')")
    from test_nvrtc_compile import CUPY_ADDED, compile_nvrtc

    from gpulstm.kernel_source import NVRTC_OPTIONS
    names = [f"cell_step<{s}, {t}>" for s, *_ in CELLS.values() for t in ("float", "double")]
    options = NVRTC_OPTIONS + CUPY_ADDED + (f"--gpu-architecture={arch}",
                                            f"--include-path={kernel_dir()}")
    ok, log, lowered, _ = compile_nvrtc(DEVICE_DRIVER, names, options)
    assert ok, f"NVRTC failed for {arch}:\n{log}"
    assert not log, f"NVRTC log for {arch} is not empty:\n{log}"
    assert set(lowered) == set(names)


def test_kernel_source_resolves_includes_beside_the_including_file(tmp_path):
    """kernel_source inlines ``cells/x.cuh`` -> ``"common.cuh"`` (beside it) ->
    ``"../flags.cuh"``, each once, and refuses an include that leaves the kernel folder."""
    from gpulstm.kernel_source import _inline
    (tmp_path / "cells").mkdir()
    (tmp_path / "flags.cuh").write_text("int FLAGS;\n")
    (tmp_path / "cells" / "common.cuh").write_text('#include "../flags.cuh"\nint COMMON;\n')
    (tmp_path / "cells" / "x.cuh").write_text('#include "common.cuh"\nint X;\n')
    (tmp_path / "main.cu").write_text('#include "cells/x.cuh"\n#include "flags.cuh"\nint MAIN;\n')
    code = _inline(tmp_path / "main.cu", tmp_path, set())
    assert [w for w in re.findall(r"int (\w+);", code)] == ["FLAGS", "COMMON", "X", "MAIN"]
    assert "already included: flags.cuh" in code and '#line 1 "cells/common.cuh"' in code
    (tmp_path / "bad.cu").write_text('#include "../outside.cuh"\n')
    (tmp_path.parent / "outside.cuh").write_text("int OUT;\n")
    with pytest.raises(ValueError, match="outside"):
        _inline(tmp_path / "bad.cu", tmp_path, set())
