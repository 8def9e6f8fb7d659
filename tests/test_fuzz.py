"""hypothesis-driven shape fuzzing of the forward/backward contract, checked against torch."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_ref import assert_close, make_pair, ours_run, random_problem, torch_run


@st.composite
def configs(draw):
    cell = draw(st.sampled_from(["lstm", "gru", "rnn_tanh", "rnn_relu"]))
    H = draw(st.integers(1, 9))
    proj = draw(st.integers(0, H - 1)) if cell == "lstm" else 0
    T = draw(st.integers(1, 8))
    B = draw(st.integers(1, 4))
    use_lengths = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B)) if use_lengths else None
    return dict(cell=cell, I=draw(st.integers(1, 5)), H=H, T=T, B=B, proj=proj,
                L=draw(st.integers(1, 3)), bi=draw(st.booleans()), bf=draw(st.booleans()),
                bias=draw(st.booleans()), lengths=lengths, seed=draw(st.integers(0, 2**31)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_forward_backward_contract(c):
    m, ref = make_pair(c["cell"], c["I"], c["H"], num_layers=c["L"], bidirectional=c["bi"],
                       batch_first=c["bf"], proj_size=c["proj"], bias=c["bias"])
    rng = np.random.default_rng(c["seed"])
    p = random_problem(rng, m, c["T"], c["B"], lengths=c["lengths"])
    ours = ours_run(m, **p)
    D, Hs = m.num_directions, c["proj"] or c["H"]
    T, B = c["T"], c["B"]
    assert ours["y"].shape == ((B, T, D * Hs) if c["bf"] else (T, B, D * Hs))
    assert ours["dx"].shape == p["x"].shape
    assert ours["h_n"].shape == (c["L"] * D, B, Hs)
    assert all(np.isfinite(v).all() for k, v in ours.items() if k != "grads")
    assert_close(ours, torch_run(ref, **p), 1e-11)
