"""gpulstm.perfmodel: a model, labelled as one; its host part follows the launch trace."""
import numpy as np

import gpulstm as gl
from gpulstm.perfmodel import ANCHORS, DEVICES, predict, report


def test_report_is_labelled_a_model_and_lists_the_anchors():
    text = report("H200")
    assert "PERFORMANCE MODEL (not a measurement)" in text
    for name in ANCHORS:
        assert name in text


def test_host_time_follows_the_trace():
    dev = DEVICES["H100"]
    m = gl.LSTM(32, 128, backend="numpy")
    x = np.zeros((50, 4, 32), np.float32)
    p = predict(m, x, dev)
    # stepwise: per step one GEMM and one kernel in each of forward and backward
    assert p["stepwise"]["gemms_per_step"] == 2 and p["stepwise"]["launches_per_step"] == 2
    assert p["stepwise"]["host_us"] == 2 * dev.host_gemm_us + 2 * dev.host_kernel_us
    assert p["fused"]["gemms_per_step"] == 0 and p["fused"]["launches_per_step"] == 2
    assert p["persistent"]["launches_per_step"] == 0
    # fused with graphs: no launch in the loop; per direction and phase one graph launch and
    # the copies into its arena (forward: w_hh_T, lengths, h0, c0, peepholes; backward: w_hh,
    # lengths, dY, dh, dc, peepholes), amortized over T = 50 steps
    g = p["fused+graphs"]
    assert g["launches_per_step"] == 0 and g["gemms_per_step"] == 0
    assert g["host_us"] == (2 * dev.host_graph_us + 11 * dev.host_op_us) / 50
    assert g["device_us"] < p["fused"]["device_us"]  # graph_gap_us < launch_gap_us
    assert g["us_per_step"] <= p["fused"]["us_per_step"]
    for algo in ("stepwise", "fused", "fused+graphs", "persistent"):
        assert p[algo]["us_per_step"] >= p[algo]["device_us"] > 0
    assert p["auto"] == "persistent"
    # forward only: less device work, the same kernels per step in the forward phase
    f = predict(m, x, dev, backward=False)
    for algo in ("fused", "persistent"):
        assert 0 < f[algo]["device_us"] < p[algo]["device_us"]
    assert f["fused"]["launches_per_step"] == 1


def test_no_persistent_entry_when_the_grid_does_not_fit():
    m = gl.GRU(16, 1024, backend="numpy")
    p = predict(m, np.zeros((3, 64, 16), np.float32), "H200")  # 32 x 8 blocks > 132 SMs
    assert "persistent" not in p and p["auto"] == "fused"


def test_l2_round_trips_enter_the_latency_term():
    """The inner loop's dependent L2 round trips: one per 32-column chunk of the left operand,
    plus one per column of a slice where W is read through L2; each costs l2_latency_us."""
    import dataclasses
    from gpulstm.backends.kernel_loop import persistent_plan
    from gpulstm.perfmodel import _device_step_us, l2_round_trips
    plan = persistent_plan(8, 512, 4, 4)  # resident: chunks only
    assert plan["resident"]
    assert l2_round_trips(8, 512, 4, plan, True) == 512 // 32
    assert l2_round_trips(8, 512, 4, plan, False) == 4 * 512 // 32
    # fused: W through L2; 32 x 8 x 1 threads = 8 slices, each sums K / 8 columns
    assert l2_round_trips(8, 512, 4, None, True) == 16 + 512 // 8
    assert l2_round_trips(8, 512, 4, None, False) == 64 + 4 * 512 // 8
    dev = DEVICES["H100"]
    fast = dataclasses.replace(dev, l2_latency_us=0.0)
    for p, algo in ((plan, "persistent"), (None, "fused")):
        for fwd in (True, False):
            extra = _device_step_us(dev, algo, 8, 512, 4, 4, p, fwd) - _device_step_us(
                fast, algo, 8, 512, 4, 4, p, fwd)
            assert abs(extra - l2_round_trips(8, 512, 4, p, fwd) * dev.l2_latency_us) < 1e-9


def test_detected_device_without_a_gpu_says_so():
    import importlib.util
    import pytest
    from gpulstm.perfmodel import detected_device
    if importlib.util.find_spec("cupy") is not None:
        pytest.skip("CuPy present: the detected card is this machine's")
    key, found = detected_device()
    assert key is None and "no GPU through CuPy" in found
    m = gl.LSTM(8, 16, backend="numpy")
    with pytest.raises(ValueError, match="no performance-model figures"):
        predict(m, np.zeros((3, 2, 8), np.float32), "detected")
    with pytest.raises(ValueError, match="unknown device 'A100'"):
        predict(m, np.zeros((3, 2, 8), np.float32), "A100")
