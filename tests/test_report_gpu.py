"""The report's GPU time-loop section: gpu-check's algos.json beside the performance model."""
import json

import numpy as np
import pandas as pd
import pytest

from gpulstm.report.gpu import MODEL_GRID, gpu_loop_table, load_algo_runs, model_table


def _write_run(folder, rows, backend="cupy"):
    folder.mkdir(parents=True)
    (folder / "algos.json").write_text(json.dumps(
        {"backend": backend, "model": "a model", "rows": rows, "skipped": []}))


def _row(T, B, H, impl, us, model):
    return dict(T=T, B=B, H=H, impl=impl, forward_ms=us * T / 3e3,
                forward_backward_ms=us * T / 1e3, us_per_step=us, model_us_per_step=model,
                max_abs_diff_vs_cudnn=1e-6)


def test_measurements_beside_the_model_and_cudnn(tmp_path):
    rng = np.random.default_rng()
    us = rng.uniform(1, 50, 4)
    _write_run(tmp_path / "gpu-check" / "20261128T000000Z", [
        _row(100, 8, 512, "fused", us[0], 17.0), _row(100, 8, 512, "persistent", us[1], 5.9),
        _row(100, 8, 512, "cudnn", us[2], np.nan), _row(100, 64, 512, "cudnn", us[3], np.nan)])
    runs = load_algo_runs(tmp_path, tmp_path / "missing")
    assert len(runs) == 4 and set(runs["run"]) == {"gpu-check/20261128T000000Z"}
    assert (runs["backend"] == "cupy").all()
    table, note = gpu_loop_table(runs)
    assert "model, not a measurement" in note
    fused = table[table["impl"] == "fused"].iloc[0]
    assert fused["measured µs/step"] == pytest.approx(us[0])
    assert fused["measured / model"] == pytest.approx(us[0] / 17.0)
    assert fused["x cudnn"] == pytest.approx(us[0] / us[2])
    other = table[(table["B"] == 64)].iloc[0]
    assert other["x cudnn"] == pytest.approx(1.0)


def test_without_measurements_the_model_alone_labelled(tmp_path):
    runs = load_algo_runs(tmp_path)
    assert runs.empty
    table, note = gpu_loop_table(runs)
    assert "MODEL, not a measurement" in note and "No GPU run" in note
    assert list(zip(table["B"], table["H"])) == MODEL_GRID
    assert {"stepwise µs/step (model)", "fused µs/step (model)", "auto picks"} <= set(table.columns)
    assert (table["stepwise µs/step (model)"] > 0).all()
    assert set(table["auto picks"]) <= {"stepwise", "fused", "persistent"}


def test_a_broken_algos_json_names_the_file(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "algos.json").write_text("{not json")
    with pytest.raises(ValueError, match="algos.json"):
        load_algo_runs(tmp_path)
    (tmp_path / "run" / "algos.json").write_text(json.dumps({"rows": [{"T": 1}]}))
    with pytest.raises(ValueError, match="rows lack"):
        load_algo_runs(tmp_path)


def test_model_table_is_the_perfmodel():
    from gpulstm import LSTM
    from gpulstm.perfmodel import predict

    t = model_table()
    B, H = MODEL_GRID[4]
    want = predict(LSTM(H, H, backend="numpy"), np.zeros((100, B, H), np.float32), "H200")
    row = t[(t["B"] == B) & (t["H"] == H)].iloc[0]
    assert row["fused µs/step (model)"] == pytest.approx(want["fused"]["us_per_step"])
    assert isinstance(t, pd.DataFrame)
