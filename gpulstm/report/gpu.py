"""The GPU time loop in the report: measured µs per step of each algorithm next to the
performance model's prediction (:mod:`gpulstm.perfmodel`, a MODEL, not a measurement).

Measurements come from ``make gpu-check``'s speed section (:mod:`gpulstm.gpucheck`), which
writes ``algos.json`` into its output folder (``make gpu-import`` puts it under results/gpu/):
one row per (T, B, H, implementation) with the measured forward and forward+backward times, µs
per step, the model's µs per step computed at the same commit, and the largest difference of
the output from cuDNN's. Until such a file exists, :func:`gpu_loop_table` gives the model
alone, on the grid of the GPU check.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

#: the (B, H) grid of the model's table, at T=100, fwd+bwd
MODEL_GRID = [(B, H) for B in (1, 8, 64) for H in (128, 512, 1024)]
MODEL_T = 100

_COLUMNS = ["run", "backend", "T", "B", "H", "impl", "forward_ms", "forward_backward_ms",
            "us_per_step", "model_us_per_step", "max_abs_diff_vs_cudnn"]


def load_algo_runs(*roots) -> pd.DataFrame:
    """Every ``algos.json`` under the folders ``roots`` (missing folders are skipped) as one
    frame with the columns of :data:`_COLUMNS`; ``run`` is the folder holding the file,
    relative to its root. A file that is not such a JSON raises ValueError naming it."""
    frames = []
    for root in roots:
        if not root or not os.path.isdir(root):
            continue
        for path in sorted(Path(root).rglob("algos.json")):
            try:
                doc = json.loads(path.read_text())
                rows = pd.DataFrame(doc["rows"])
                backend = str(doc.get("backend", ""))
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}: not a gpu-check algos.json ({e})") from None
            missing = {"T", "B", "H", "impl", "us_per_step"} - set(rows.columns)
            if missing:
                raise ValueError(f"{path}: rows lack {sorted(missing)}")
            rows.insert(0, "run", str(path.parent.relative_to(root)) or ".")
            rows.insert(1, "backend", backend)
            frames.append(rows.reindex(columns=_COLUMNS))
    if not frames:
        return pd.DataFrame(columns=_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def gpu_loop_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(table, note) for the report. With measurements: per run and shape, each
    implementation's measured µs per step (fwd+bwd), the model's, measured / model, and the
    time over cuDNN's (TF32 off) in the same run. Without: the model's µs per step for each
    algorithm on :data:`MODEL_GRID`, labelled as a model."""
    if len(runs):
        df = runs.copy()
        cudnn = df[df["impl"] == "cudnn"].set_index(["run", "T", "B", "H"])["us_per_step"]
        key = pd.MultiIndex.from_frame(df[["run", "T", "B", "H"]])
        df["x cudnn"] = df["us_per_step"].to_numpy() / cudnn.reindex(key).to_numpy()
        df["measured / model"] = df["us_per_step"] / df["model_us_per_step"]
        table = df[["run", "T", "B", "H", "impl", "us_per_step", "model_us_per_step",
                    "measured / model", "x cudnn", "max_abs_diff_vs_cudnn"]].rename(columns={
                        "us_per_step": "measured µs/step", "model_us_per_step": "model µs/step",
                        "max_abs_diff_vs_cudnn": "max |y - cudnn|"})
        note = ("LSTM fp32, forward+backward, one layer (make gpu-check, gpulstm.gpucheck): "
                "measured µs per time step of each time-loop algorithm and of cuDNN (TF32 off "
                "and on), beside the performance model's prediction for the same shape "
                "(gpulstm.perfmodel: a model, not a measurement). `x cudnn`: time over cuDNN "
                "with TF32 off in the same run.")
        return table.reset_index(drop=True), note
    return model_table(), (
        "No GPU run of the time-loop algorithms yet (`make gpu-check` on a machine with an "
        "NVIDIA GPU writes one). Below is a MODEL, not a measurement: gpulstm.perfmodel's "
        f"predicted µs per time step on an H200, LSTM fp32 forward+backward at T={MODEL_T}, "
        "one layer and direction (I = H); `auto` names the algorithm the module's rule picks.")


def model_table(device="H200") -> pd.DataFrame:
    """The model's µs per step (fwd+bwd) per algorithm on :data:`MODEL_GRID` (a MODEL)."""
    import gpulstm as gl
    from gpulstm.perfmodel import predict

    rows = []
    for B, H in MODEL_GRID:
        m = gl.LSTM(H, H, backend="numpy")
        pred = predict(m, np.zeros((MODEL_T, B, H), np.float32), device)
        row = {"B": B, "H": H}
        for algo, p in pred.items():
            if isinstance(p, dict):  # an algorithm's prediction ("auto" names one)
                row[f"{algo} µs/step (model)"] = p["us_per_step"]
        row["auto picks"] = pred.get("auto", "")
        rows.append(row)
    return pd.DataFrame(rows)
