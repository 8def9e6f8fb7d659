"""Published long-range memory outcomes, each labelled with how far it was verified.

Each row says how far it was checked (docs/memory.md, "The literature"): "verified" only
where the paper's own text was read. Outcomes not checked (e.g. which model passes at which T
in Le et al. 2015 or Arjovsky et al. 2016, Bengio et al. 1994's latch curve) are not given as
pass/fail here.

Columns: ``source``, ``task``, ``cell``, ``T`` (Int64, NA where the paper gives a range or no
length), ``passed`` (boolean, NA where the outcome is not a pass/fail), ``outcome``,
``verified``. Task names match :mod:`gpulstm.lab.tasks` (``adding``, ``copy``, ``recall``,
``temporal_order``) and cell names those of :func:`gpulstm.lab.train.make_cell` (the 1997 LSTM has
no forget gate: ``lstm_nofg``); the other tasks are listed for completeness.
"""

from __future__ import annotations

import pandas as pd

__all__ = ["published_outcomes"]

_PAPER = "verified (transcription of the published paper)"
_ABSTRACT = "abstract only"
_PARTLY = "partly verified (third-party file quoting the PDF)"
_NOT = "as reported, not verified (secondary source)"

_HS97 = "Hochreiter & Schmidhuber 1997"
_ROWS = [
    # source, task, cell, T, passed, outcome, verified
    (f"{_HS97}, Exp. 4 (Table 7)", "adding", "lstm_nofg", 100, True,
     "74,000 training sequences to stop; 1 of 2560 test sequences wrong (|error| > 0.04); "
     "mean of 10 trials; 1997 LSTM (no forget gate), 2 memory-cell blocks of size 2", _PAPER),
    (f"{_HS97}, Exp. 4 (Table 7)", "adding", "lstm_nofg", 500, True,
     "209,000 training sequences to stop; 0 of 2560 test sequences wrong", _PAPER),
    (f"{_HS97}, Exp. 4 (Table 7)", "adding", "lstm_nofg", 1000, True,
     "853,000 training sequences to stop (range 370k-2.02M); 1 of 2560 test sequences wrong",
     _PAPER),
    (f"{_HS97}, task 2a (Table 2)", "long_lag_2a", "lstm_nofg", 100, True,
     "noise-free long time lag p = 100: 100% of 18 trials after 5,040 sequences", _PAPER),
    (f"{_HS97}, task 2a (Table 2)", "long_lag_2a", "rnn-bptt", 100, False,
     "0% after more than 5,000,000 sequences", _PAPER),
    (f"{_HS97}, task 2a (Table 2)", "long_lag_2a", "rnn-rtrl", 100, False,
     "0% after more than 5,000,000 sequences (RTRL only succeeds at p = 4)", _PAPER),
    (f"{_HS97}, task 2a (Table 2)", "long_lag_2a", "chunker", 100, False,
     "neural sequence chunker: 33% (32,400 sequences)", _PAPER),
    ("Pascanu, Mikolov & Bengio 2013", "temporal_order", "rnn_tanh", None, True,
     "50 tanh units, clipping plus their regulariser, trained on lengths 50-200: 100% over "
     "5 seeds; per-length rates only in a figure (not checked)", _PAPER),
    ("Jozefowicz, Zaremba & Sutskever 2015", "general", "lstm_fb1", None, None,
     "a forget-gate bias of 1 closes the gap between the LSTM and the GRU", _ABSTRACT),
    ("Jozefowicz, Zaremba & Sutskever 2015", "general", "lstm_nofg", None, None,
     "removing the forget gate makes the LSTM much worse on arithmetic and XML tasks", _NOT),
    ("Le, Jaitly & Hinton 2015", "adding", "irnn", None, None,
     "identity-initialised ReLU RNN comparable to a standard LSTM (adding T = 150..400); "
     "per-T outcomes not checked", _ABSTRACT),
    ("Arjovsky, Shah & Bengio 2016", "adding", "urnn", None, None,
     "unitary RNNs reach state-of-the-art on very long dependencies (abstract); quoted "
     "settings: T in {100, 200, 400, 750}, 20,000 iterations, baseline MSE 0.167 "
     "(as reported, not verified)", _ABSTRACT),
    ("Arjovsky, Shah & Bengio 2016", "copy", "urnn", None, None,
     "quoted settings: T in {100, 200, 300, 500}, 20,000 iterations", _NOT),
    ("Gers, Schmidhuber & Cummins 2000", "reber_continual", "lstm_nofg", None, None,
     "continual embedded Reber grammar: 0% of 100 networks perfect", _PARTLY),
    ("Gers, Schmidhuber & Cummins 2000", "reber_continual", "lstm_nofg+reset", None,
     None, "74% perfect (with an external reset)", _PARTLY),
    ("Gers, Schmidhuber & Cummins 2000", "reber_continual", "lstm_forget_gate", None, None,
     "18% perfect (with forget gates)", _PARTLY),
    ("Gers, Schmidhuber & Cummins 2000", "reber_continual", "lstm_forget_gate+lr_decay", None, None,
     "62% perfect (forget gates plus learning-rate decay)", _PARTLY),
]


def published_outcomes() -> pd.DataFrame:
    """The published outcomes table (a fresh copy each call)."""
    df = pd.DataFrame(_ROWS, columns=["source", "task", "cell", "T", "passed", "outcome",
                                      "verified"])
    df["T"] = df["T"].astype("Int64")
    df["passed"] = df["passed"].astype("boolean")
    return df
