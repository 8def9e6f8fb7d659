"""A PERFORMANCE MODEL -- not a measurement -- of the time loop on an H100 / H200.

Until a GPU run exists, every GPU number this project states about the device time loop comes
from here. :func:`predict` gives, per algorithm ("stepwise", "fused", "persistent"), the
predicted microseconds per time step of one layer and direction from

* the launch trace (:func:`gpulstm.launch_trace`): how many kernel launches, cuBLAS GEMMs and
  other CuPy operations each step issues, each costing host time (the Python loop issues
  them one by one; the GPU runs them asynchronously);
* the bytes each step moves and the FLOPs it does, over the device's bandwidths and peak rate
  (the recurrent product dominates: ``2 B H G H`` FLOPs per step forward, the same backward).

Per step: ``max(host time, device time)`` for the stepwise and fused loops (asynchronous
launches overlap host and device; with CUDA graphs the host time is one graph launch and the
copies into its arena per direction and phase, amortized over the T steps), device time plus
one grid-wide barrier for the persistent kernel (no host work inside the loop). Device time of a fused or persistent step: a launch
gap (or a grid barrier) plus the block's partial-sum barriers plus the largest of FLOPs /
(peak x active-SM fraction), L2 bytes / L2 bandwidth (weights not resident), the block's
shared-memory wavefronts and its FMAs (one block per SM), plus the inner loop's dependent L2
round trips (:func:`l2_round_trips`) at an assumed L2 latency; of a stepwise step: two
launch gaps, the GEMM at peak or HBM rate, the pointwise kernel at HBM rate. Every constant
below is an assumption with its source; change them with :class:`Device`. :data:`ANCHORS`
are the cuDNN measurements the issue cites.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .backends.kernel_loop import PERSISTENT_MAX_BATCH, ROWS, TILE, persistent_plan
from .tracing import launch_trace


@dataclass(frozen=True)
class Device:
    """Device and host-overhead assumptions (per-SM numbers at boost clock)."""

    name: str
    sm_count: int
    fp32_tflops: float  # non-tensor-core FP32 peak (NVIDIA datasheet)
    fp64_tflops: float  # non-tensor-core FP64 peak (NVIDIA datasheet)
    hbm_tbs: float  # HBM bandwidth (NVIDIA datasheet)
    l2_tbs: float = 7.0  # L2 read bandwidth, whole chip: ASSUMED (about 2x HBM on Hopper)
    clock_ghz: float = 1.98  # boost clock (H100 SXM datasheet)
    launch_gap_us: float = 2.0  # device-side gap between dependent kernels: ASSUMED
    grid_barrier_us: float = 1.0  # one grid-wide barrier of a cooperative kernel: ASSUMED
    block_barrier_us: float = 0.02  # one __syncthreads of a 256-thread block: ASSUMED
    host_kernel_us: float = 8.0  # host time of one CuPy RawKernel launch: ASSUMED
    host_gemm_us: float = 20.0  # host time of one cupy.matmul / cublas.gemm call: ASSUMED
    host_op_us: float = 8.0  # host time of one other CuPy operation: ASSUMED
    host_graph_us: float = 10.0  # host time of one cupy.cuda.Graph.launch: ASSUMED
    graph_gap_us: float = 1.0  # device gap between dependent kernel nodes of a graph: ASSUMED
    l2_latency_us: float = 0.15  # one dependent L2 round trip (~300 cycles at 1.98 GHz): ASSUMED


#: H100 SXM5 and H200 SXM (132 SMs each; the H200 has the faster HBM3e)
DEVICES = {
    "H100": Device("H100 SXM", 132, fp32_tflops=67.0, fp64_tflops=34.0, hbm_tbs=3.35),
    "H200": Device("H200 SXM", 132, fp32_tflops=67.0, fp64_tflops=34.0, hbm_tbs=4.8),
}

def device_for(card_name, sm_count=None):
    """The key of :data:`DEVICES` for a card's name as the driver reports it ("NVIDIA H100 80GB
    HBM3" -> "H100"), or None for a card this model has no figures for -- another chip, a
    PCIe or NVL variant (other SM counts, clocks, bandwidths), or an SM count (as queried)
    unlike the figures' -- so that the caller says so instead of using another card's."""
    name = str(card_name).upper()
    found = [k for k in DEVICES if re.search(rf"\b{k}\b", name)]
    if len(found) != 1 or re.search(r"PCIE|NVL", name):
        return None
    if sm_count is not None and int(sm_count) != DEVICES[found[0]].sm_count:
        return None
    return found[0]


#: cuDNN measurements cited by the issue (FP32 LSTM): µs per time step
ANCHORS = {
    "cudnn persistent SMALL_H, T=2721 B=6 I=128 H=72, forward (PyTorch PR #62143)":
        dict(B=6, H=72, I=128, T=2721, backward=False, us_per_step=2400.0 / 2721),
    "cuDNN 7.6 on a V100, T=25 B=64 H=512, fwd+bwd (DeepBench)":
        dict(B=64, H=512, I=512, T=25, backward=True, us_per_step=3030.0 / 25),
}


def _device_step_us(dev, algo, B, H, G, item, plan=None, forward=True):
    """Device microseconds of one step, forward or backward (backward: the product is
    dG [B, G H] x W_hh [G H, H], one output per unit instead of G); ``plan``: the persistent
    kernel's launch plan (grid, block, whether W_hh is resident)."""
    flops = 2.0 * B * H * G * H
    peak = (dev.fp64_tflops if item == 8 else dev.fp32_tflops) * 1e6  # FLOPs per µs
    w_bytes = G * H * H * item
    if algo == "stepwise":
        # cuBLAS GEMM on all SMs reading W once from L2 / HBM, then the pointwise kernel
        gemm = max(flops / peak, w_bytes / (dev.hbm_tbs * 1e6))
        pointwise = 4.0 * B * G * H * item / (dev.hbm_tbs * 1e6)
        return 2 * dev.launch_gap_us + gemm + pointwise
    # fused / persistent: per block (one per SM), the register-blocked product of
    # kernels/fused_step.cu: S = threads / U slices; per column a slice's warp issues NG
    # weight loads and R broadcast loads of h (one shared-memory wavefront each, one cycle),
    # and R NG FMAs per thread; then R rounds of partial sums (two barriers each)
    t = _tiling(B, H, G, plan, forward)
    rows, cols, NG = t["rows"], t["cols"], t["NG"]
    warps = -(-t["threads"] // 32)
    clock = dev.clock_ghz * 1e3  # cycles per µs
    smem = warps * cols * (rows + NG) / clock
    fma_per_clk = 64 if item == 8 else 128  # FP32 / FP64 FMA lanes per SM (Hopper)
    fma = t["threads"] * cols * rows * NG / fma_per_clk / clock
    reduce = 2 * rows * dev.block_barrier_us
    sms = min(t["blocks"], dev.sm_count)
    l2 = 0.0 if t["resident"] else t["row_groups"] * w_bytes / (dev.l2_tbs * 1e6)
    compute = flops / (peak * sms / dev.sm_count)
    gap = {"persistent": dev.grid_barrier_us, "fused+graphs": dev.graph_gap_us}.get(
        algo, dev.launch_gap_us)
    latency = l2_round_trips(B, H, G, plan, forward) * dev.l2_latency_us
    return gap + reduce + latency + max(smem, fma, l2, compute)


def _tiling(B, H, G, plan, forward):
    """The block shape of a fused (``plan`` None) or persistent step and its reduction."""
    rows = min(ROWS, B)
    row_groups = -(-B // rows)
    if plan:
        (units, _, z), blocks, resident = plan["block"], plan["blocks"], plan["resident"]
    else:
        units, z, blocks, resident = TILE, 1, -(-H // TILE) * row_groups, False
    threads = units * rows * z
    K, NG = (H, G) if forward else (G * H, 1)
    return dict(rows=rows, row_groups=row_groups, blocks=blocks, resident=resident,
                threads=threads, K=K, NG=NG, cols=-(-K // (threads // units)))


def l2_round_trips(B, H, G, plan=None, forward=True):
    """Dependent L2 round trips of one fused (``plan`` None) or persistent step, the latency
    chain of its inner loop: each chunk of the left operand (TILE columns, loaded through L2,
    then a block barrier; no prefetch) is one, and where W is not resident each column a slice
    sums waits for its weight loads (one each; a block's few warps hide little of it).
    ASSUMED: none of them overlap."""
    t = _tiling(B, H, G, plan, forward)
    return -(-t["K"] // TILE) + (0 if t["resident"] else t["cols"])


def detected_device():
    """(key of :data:`DEVICES` or None, what was found) for CuPy's current device: None where
    there is no CuPy or GPU, or the card has no figures here (the caller says so)."""
    try:
        import cupy as cp
        p = cp.cuda.runtime.getDeviceProperties(cp.cuda.runtime.getDevice())
    except Exception as e:  # no CuPy, no driver, no device
        return None, f"no GPU through CuPy ({type(e).__name__}: {e})"
    name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
    return device_for(name, p.get("multiProcessorCount")), name


def predict(module, x, device="H200", backward=True):
    """Predicted µs per time step (one layer, one direction) of each algorithm for ``module``
    on input ``x`` ([T, B, I]) on ``device`` ("H100", "H200" or a :class:`Device`).

    Returns {algo: dict(us_per_step, host_us, device_us, launches_per_step, gemms_per_step,
    note)} for "stepwise", "fused", "fused+graphs" (the fused loop replayed as one CUDA graph
    per direction and phase, ``cuda_graphs=True``: its host calls -- the graph launch and the
    copies into its arena -- amortized over the T steps, ``graph_gap_us`` between nodes) and,
    where its grid is co-resident, "persistent"; plus "auto": the algorithm the module's rule
    picks. ``device="detected"``: the card CuPy sees (:func:`detected_device`; a card without
    figures here is a ValueError). A MODEL: see the module docstring."""
    if isinstance(device, str) and device == "detected":
        key, found = detected_device()
        if key is None:
            raise ValueError(f"no performance-model figures for {found}: the model knows "
                             f"{sorted(DEVICES)} (pass one, or a Device)")
        device = key
    if isinstance(device, str) and device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: expected one of {sorted(DEVICES)}, "
                         "'detected' or a Device")
    dev = DEVICES[device] if isinstance(device, str) else device
    T, B = (x.shape[1], x.shape[0]) if module.batch_first else (x.shape[0], x.shape[1])
    H, G, item = module.hidden_size, module._make_cell().gates, module.dtype.itemsize
    dirs = module.num_layers * module.num_directions
    out = {}
    for algo in ("stepwise", "fused", "fused+graphs", "persistent"):
        plan = persistent_plan(B, H, G, item, dev.sm_count)
        if algo == "persistent" and plan is None:
            continue
        # calls per step do not depend on T: trace a short sequence of the same shape
        Tt = min(T, 4)
        xs = x[:, :Tt] if module.batch_first else x[:Tt]
        graphs = algo == "fused+graphs"
        tr = launch_trace(module, xs, backward=backward, algo=algo.split("+")[0], graphs=graphs)
        per = Tt * dirs  # steps of all layers and directions
        k = tr.count(kind="kernel", in_loop=True) / per
        gm = tr.count(kind="gemm", in_loop=True) / per
        op = tr.count(kind="op", in_loop=True) / per
        host = k * dev.host_kernel_us + gm * dev.host_gemm_us + op * dev.host_op_us
        p = plan if algo == "persistent" else None
        devt = sum(_device_step_us(dev, algo, B, H, G, item, p, forward=f)
                   for f in ((True, False) if backward else (True,)))
        note = ""
        if graphs:
            # per direction and phase: one graph launch and the copies into its arena
            host = (tr.count(kind="graph") * dev.host_graph_us
                    + tr.count(kind="op", name="arena_copy") * dev.host_op_us) / (T * dirs)
            note = "one graph replay per direction and phase (captured on the first call)"
        if algo == "persistent":
            # launched once per direction: its host time amortized over the T steps
            host = tr.count(kind="kernel") * dev.host_kernel_us / (T * dirs)
            note = (f"{plan['blocks']} blocks on {dev.sm_count} SMs, W_hh "
                    f"{'resident in shared memory' if plan['resident'] else 'read through L2'}")
        out[algo] = dict(us_per_step=max(host, devt) if algo != "persistent" else devt + host,
                         host_us=host, device_us=devt, launches_per_step=k, gemms_per_step=gm,
                         note=note)
    fits = "persistent" in out
    out["auto"] = ("persistent" if fits and B <= PERSISTENT_MAX_BATCH else "fused")
    return out


def anchor_table(device="H200"):
    """Rows (anchor, cuDNN µs/step, model µs/step per algorithm) for the FP32 LSTM anchors."""
    import numpy as np

    from .modules import LSTM
    rows = []
    for name, a in ANCHORS.items():
        m = LSTM(a["I"], a["H"], backend="numpy")
        x = np.zeros((a["T"], a["B"], a["I"]), np.float32)
        p = predict(m, x, device, backward=a["backward"])
        rows.append((name, a["us_per_step"],
                     {k: v["us_per_step"] for k, v in p.items() if isinstance(v, dict)}))
    return rows


def report(device="H200"):
    """The anchor table as text, labelled as a model."""
    lines = [f"PERFORMANCE MODEL (not a measurement), {device}: µs per time step"]
    for name, cudnn, model in anchor_table(device):
        algos = ", ".join(f"{k} {v:.1f}" for k, v in model.items())
        lines.append(f"  {name}: cuDNN {cudnn:.2f} measured; model: {algos}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report("H100"))
    print(report("H200"))
