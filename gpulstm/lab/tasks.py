"""Long-lag toy tasks: the adding problem (two variants), copy memory, delayed recall, temporal
order and the noise-free long-time-lag task 2a of Hochreiter & Schmidhuber (1997).

Every generator takes a NumPy ``Generator``, the lag ``T`` and a batch size, and returns
NumPy arrays ``(x [L,B,I], target)`` in the time-major layout of :class:`gpulstm.LSTM`;
the variable-length :func:`adding_1997` returns ``(x, target, lengths)`` (sequence b's
steps are ``x[:lengths[b], b]``, the rest is zero padding, read out at step
``lengths[b] - 1``).
Each call draws fresh sequences (nothing is cached), so a training loop that calls it once
per step never sees a sequence twice; a seeded ``Generator`` makes a run reproducible.

:class:`Task` bundles a generator with its sizes, loss, trivial baseline and pass criterion,
so the training loop in :mod:`gpulstm.train` is written once for all three.

===============  ======  ==========  ==========  ====================  =====================
task             L       inputs I    read-out    loss                  trivial baseline
===============  ======  ==========  ==========  ====================  =====================
adding           T       2           last step   MSE                   MSE 0.167 (predict 1)
adding_1997      T..1.1T 2           own last    MSE                   0.154 within 0.04
long_lag_2a      p       p+1 one-hot every step  cross-entropy, p+1    final accuracy 0.5
copy             T + 20  10 one-hot  every step  cross-entropy, 9 cl.  10 ln 8 / (T + 20)
recall           T + 2K  10 one-hot  last K      cross-entropy, 9 cl.  accuracy 1/8
recall_variable  T + 2K  10 one-hot  last K      cross-entropy, 9 cl.  accuracy 1/8
temporal_order   T       6 one-hot   last step   cross-entropy, 4 cl.  accuracy 0.25
===============  ======  ==========  ==========  ====================  =====================
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._checks import check_int

__all__ = ["adding_problem", "adding_1997", "long_lag_2a", "copy_memory", "temporal_order",
           "recall", "recall_variable", "Task", "make_task", "TASKS"]

# copy memory alphabet: 0 blank, 1..8 symbols, 9 delimiter
COPY_SYMBOLS = 8
COPY_LENGTH = 10
COPY_BLANK, COPY_DELIMITER = 0, 9
# temporal order alphabet: 0..3 distractors (a, b, c, d), 4 = X, 5 = Y
ORDER_DISTRACTORS = 4
ORDER_X, ORDER_Y = 4, 5
# adding_1997: a test sequence is right when |prediction - target| <= this (the paper's 0.04)
ADDING_1997_TOLERANCE = 0.04


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}")


def adding_problem(rng, T, batch, dtype=np.float32):
    """The adding problem (Hochreiter & Schmidhuber 1997, Exp. 4; the variant of Arjovsky,
    Shah & Bengio 2016).

    Channel 0 holds values drawn from U[0, 1]; channel 1 is 0 except for one marker (1) at a
    uniform position in the first half ``[0, T//2)`` and one in the second half
    ``[T//2, T)``. The target is the sum of the two marked values, read at the last step.
    Always predicting 1 gives MSE Var(u1 + u2) = 2/12 = 0.1667 (the quoted baseline 0.167).
    The minimal lag between the first marker and the read-out is ``T - T//2``.

    Returns x [T, B, 2] and target [B, 1].
    """
    _check_rng(rng)
    T = check_int("T", T, 2)
    B = check_int("batch", batch, 1)
    values = rng.random((T, B))
    half = T // 2
    first = rng.integers(0, half, size=B)
    second = rng.integers(half, T, size=B)
    markers = np.zeros((T, B))
    cols = np.arange(B)
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    x = np.stack([values, markers], axis=2).astype(dtype)
    target = (values[first, cols] + values[second, cols])[:, None].astype(dtype)
    return x, target


def adding_1997(rng, T, batch, dtype=np.float32):
    """The adding problem as published: Hochreiter & Schmidhuber (1997), Experiment 4.

    Each sequence has its own length, an integer drawn uniformly from [T, T + T//10]; the
    batch is padded with zeros to T + T//10 steps and ``lengths`` says where each sequence
    ends (its read-out step is ``lengths[b] - 1``). Channel 0 holds values drawn from
    U[-1, 1]; channel 1 is the marker: exactly two pairs are marked 1.0, the first at a
    position drawn uniformly from the first 10, the second uniformly from the first
    T//2 - 1 pairs still unmarked (positions [0, T//2) without the first); the first and
    the last pair of the sequence are marked -1 unless marked 1.0 (the last never is). When
    the first pair (position 0) is marked, its value is set to 0 (the paper: "X1 is set to
    zero in the rare case where the first pair of the sequence got marked"). The target is
    0.5 + (X1 + X2) / 4 (the sum scaled to [0, 1]), and a sequence counts as processed
    correctly when the absolute error at its last step is at most 0.04
    (:data:`ADDING_1997_TOLERANCE`). Always predicting 0.5 is right on
    P(|X1 + X2| <= 0.16) = 0.16 - 0.16^2 / 4 = 0.1536 of the sequences (the baseline).

    Returns x [T + T//10, B, 2], target [B, 1] and lengths int64 [B].
    """
    _check_rng(rng)
    T = check_int("T", T, 20)  # the first marker's 10 positions, T//2 - 1 >= 9 for the second
    B = check_int("batch", batch, 1)
    L = T + T // 10
    cols = np.arange(B)
    lengths = rng.integers(T, L + 1, size=B)
    steps = np.arange(L)[:, None]
    inside = steps < lengths[None, :]
    values = np.where(inside, rng.uniform(-1.0, 1.0, size=(L, B)), 0.0)
    first = rng.integers(0, 10, size=B)
    k = rng.integers(0, T // 2 - 1, size=B)  # the k-th of the first T//2 - 1 unmarked pairs
    second = k + (k >= first)
    markers = np.zeros((L, B))
    markers[0] = -1.0
    markers[lengths - 1, cols] = -1.0
    markers[first, cols] = 1.0
    markers[second, cols] = 1.0
    values[0, markers[0] == 1.0] = 0.0
    x = np.stack([values, markers], axis=2).astype(dtype)
    target = (0.5 + (values[first, cols] + values[second, cols]) / 4.0)[:, None].astype(dtype)
    return x, target, lengths.astype(np.int64)


def long_lag_2a(rng, p, batch, dtype=np.float32):
    """The noise-free long-time-lag task 2a of Hochreiter & Schmidhuber (1997), Table 2.

    Two sequences over p + 1 symbols, one-hot coded: (x, a_1, ..., a_{p-1}, x) and
    (y, a_1, ..., a_{p-1}, y), each drawn with probability 1/2; codes 0..p-2 are
    a_1..a_{p-1}, p-1 is x and p is y. The task is next-symbol prediction: the network reads
    the first p symbols (steps 0..p-1) and at each step predicts the next one, so the last
    prediction (at step p-1, the symbol at step p) needs the first symbol, p steps back;
    every other prediction follows from the fixed middle part. Success (the paper's): the
    last prediction right on every test sequence; predicting x or y at random there is
    right on half of them (the baseline).

    Returns x [p, B, p+1] (one-hot) and target int64 [p, B] (the next symbol at every step).
    """
    _check_rng(rng)
    p = check_int("p", p, 2)
    B = check_int("batch", batch, 1)
    first = (p - 1) + rng.integers(0, 2, size=B)  # x = p - 1 or y = p
    codes = np.empty((p + 1, B), np.int64)
    codes[0] = first
    codes[1:p] = np.arange(p - 1)[:, None]
    codes[p] = first
    x = np.eye(p + 1, dtype=dtype)[codes[:p]]
    return x, codes[1:].copy()


def copy_memory(rng, T, batch, dtype=np.float32, length=COPY_LENGTH):
    """The copy memory task (Hochreiter & Schmidhuber 1997; the variant of Arjovsky et al. 2016).

    With K = ``length`` symbols to remember (10 in Arjovsky et al.): input (length T + 2K,
    one-hot over 10 codes): K symbols drawn uniformly from 1..8, then T - 1 blanks (0), the
    delimiter (9), then K blanks. Target (classes 0..8): blank for the first T + K steps, then
    the K symbols in order; the lag between a symbol and its recall is T + K. Predicting blank
    for the first T + K steps and a uniform guess over the 8 symbols for the last K gives the
    baseline cross-entropy K ln 8 / (T + 2K) per step.

    Returns x [T+2K, B, 10] (one-hot) and target int64 [T+2K, B] (class indices).
    """
    x, symbols = _symbols_then_delimiter(rng, T, batch, dtype, length, variable=False)
    K = symbols.shape[0]
    target = np.full(x.shape[:2], COPY_BLANK, np.int64)
    target[x.shape[0] - K:] = symbols
    return x, target


def _symbols_then_delimiter(rng, T, batch, dtype, length, variable):
    """The inputs of copy / recall (length T + 2K, one-hot over 10 codes): K symbols of 1..8
    starting at step 0 (``variable``: at a step uniform in [0, T) per sequence), blanks, the
    delimiter at step T + K - 1, K blanks. Returns (x, symbols int64 [K, B])."""
    _check_rng(rng)
    T = check_int("T", T, 1)
    B = check_int("batch", batch, 1)
    K = check_int("length", length, 1)
    symbols = rng.integers(1, COPY_SYMBOLS + 1, size=(K, B))
    codes = np.full((T + 2 * K, B), COPY_BLANK, np.int64)
    if variable:
        start = rng.integers(0, T, size=B)
        for k in range(K):
            codes[start + k, np.arange(B)] = symbols[k]
    else:
        codes[:K] = symbols
    codes[T + K - 1] = COPY_DELIMITER
    return np.eye(COPY_SYMBOLS + 2, dtype=dtype)[codes], symbols


def recall(rng, T, batch, dtype=np.float32, length=1):
    """Delayed recall: the copy task's sequences (:func:`copy_memory` with K = ``length``
    symbols, default 1), but the network is read out and scored only at the K recall steps.

    The lag between a symbol and its recall is T + K while the amount to remember stays K
    symbols of 8, so the task measures how long memory holds, not how much it holds (the
    copy task with K = 10 asks a 32-unit network to hold 30 bits and to emit T + 10 blanks
    with near-certainty). Close to the noise-free long-time-lag task of Hochreiter &
    Schmidhuber (1997, Task 2a), with the delimiter as the cue to answer.

    Returns x [T+2K, B, 10] (one-hot) and target int64 [K, B] (the symbols, classes 1..8).
    """
    x, target = copy_memory(rng, T, batch, dtype, length)
    return x, target[-length:]


def recall_variable(rng, T, batch, dtype=np.float32, length=1):
    """Variable-lag delayed recall: :func:`recall`'s sequences and read-out (length T + 2K,
    the delimiter at step T + K - 1, the K symbols recalled at the last K steps), but the K
    symbols start at a position p drawn uniformly from [0, T) per sequence (:func:`recall`:
    always p = 0). The lag between a symbol and its recall is then uniform in [K + 1, T + K]
    instead of fixed at T + K, so short-lag examples are there to learn from, as in the
    adding problem, whose second marker sits at a random position.

    Returns x [T+2K, B, 10] (one-hot) and target int64 [K, B] (the symbols, classes 1..8).
    """
    return _symbols_then_delimiter(rng, T, batch, dtype, length, variable=True)


def temporal_order(rng, T, batch, dtype=np.float32):
    """The temporal order task (Hochreiter & Schmidhuber 1997, Exp. 6a, as used by Pascanu,
    Mikolov & Bengio 2013).

    A sequence of T distractors drawn uniformly from {a, b, c, d} (codes 0..3), except at two
    positions that hold X (4) or Y (5): the first uniform in ``[T//10, 2*T//10)``, the second
    in ``[5*T//10, 6*T//10)`` (the 1997 paper's positions 10-20 and 50-60 of a length-100
    sequence, scaled to T). The class, read at the last step, is the order of the two
    relevant symbols: XX = 0, XY = 1, YX = 2, YY = 3. Chance accuracy is 25 %.

    Returns x [T, B, 6] (one-hot) and target int64 [B] (class indices).
    """
    _check_rng(rng)
    T = check_int("T", T, 10)
    B = check_int("batch", batch, 1)
    codes = rng.integers(0, ORDER_DISTRACTORS, size=(T, B))
    cols = np.arange(B)
    p1 = rng.integers(T // 10, 2 * T // 10, size=B)
    p2 = rng.integers(5 * T // 10, 6 * T // 10, size=B)
    s1 = rng.integers(0, 2, size=B)  # 0 = X, 1 = Y
    s2 = rng.integers(0, 2, size=B)
    codes[p1, cols] = ORDER_X + s1
    codes[p2, cols] = ORDER_X + s2
    x = np.eye(ORDER_DISTRACTORS + 2, dtype=dtype)[codes]
    return x, (2 * s1 + s2).astype(np.int64)


@dataclass(frozen=True)
class Task:
    """A task at one lag: generator, sizes, loss and pass criterion.

    ``readout`` is ``"last"`` (one prediction per sequence from the hidden state at its last
    step: ``lengths[b] - 1`` for a variable-length task), ``"all"`` (one per time step) or
    ``"tail"`` (one per step of the last ``copy_length`` steps). ``loss`` is ``"mse"`` or
    ``"xent"`` (softmax cross-entropy). ``metric`` names the test figure (``mse``, ``xent``
    or ``accuracy``: arg-max right for ``xent`` tasks, within ``tolerance`` of the target for
    ``adding_1997``, and for ``long_lag_2a`` the last step's prediction only) and
    :meth:`passed` applies the criterion:

    - adding: test MSE < 0.01 (6 % of the 0.167 baseline);
    - adding_1997: at least 99 % of the test sequences within 0.04 of the target;
    - copy: test cross-entropy < 0.1 x the baseline 10 ln 8 / (T + 20), i.e. the 10 recalled
      symbols cost on average under 0.1 ln 8 = 0.21 nats each;
    - recall, temporal order: test accuracy >= 0.99 (Pascanu et al. 2013: under 1 %
      misclassified);
    - long_lag_2a: the last prediction right on every test sequence (accuracy 1).
    """
    name: str
    T: int
    input_size: int
    output_size: int
    loss: str
    readout: str
    metric: str
    baseline: float  # the trivial baseline of ``metric``
    copy_length: int = COPY_LENGTH  # copy, recall: K, the symbols to remember
    tolerance: float | None = None  # adding_1997: the largest |error| that counts as right

    def sample(self, rng, batch, dtype=np.float32):
        """Fresh sequences from the task's generator: (x [L,B,I], target), and for a
        :attr:`variable_length` task (x, target, lengths)."""
        if self.name in _COPY_LIKE:
            return _GENERATORS[self.name](rng, self.T, batch, dtype, self.copy_length)
        return _GENERATORS[self.name](rng, self.T, batch, dtype)

    @property
    def variable_length(self):
        """Whether :meth:`sample` returns per-sequence ``lengths`` (adding_1997)."""
        return self.name == "adding_1997"

    @property
    def length(self):
        """Sequence length L fed to the network (the padded length of a variable-length
        batch)."""
        if self.name in _COPY_LIKE:
            return self.T + 2 * self.copy_length
        if self.name == "adding_1997":
            return self.T + self.T // 10
        return self.T

    def passed(self, metric_value):
        """The pass criterion (class docstring) applied to a test metric value."""
        if self.name == "adding":
            return bool(metric_value < 0.01)
        if self.name == "copy":
            return bool(metric_value < 0.1 * self.baseline)
        if self.name == "long_lag_2a":
            return bool(metric_value >= 1.0)
        return bool(metric_value >= 0.99)

    @property
    def criterion(self):
        """The pass criterion in words."""
        return {"adding": "test MSE < 0.01",
                "adding_1997": "test |error| <= 0.04 on >= 99% of sequences",
                "copy": "test cross-entropy < 0.1 x baseline",
                "recall": "test accuracy >= 0.99",
                "recall_variable": "test accuracy >= 0.99",
                "temporal_order": "test accuracy >= 0.99",
                "long_lag_2a": "last prediction right on every test sequence"}[self.name]


_GENERATORS = {"adding": adding_problem, "adding_1997": adding_1997, "copy": copy_memory,
               "recall": recall, "recall_variable": recall_variable,
               "temporal_order": temporal_order, "long_lag_2a": long_lag_2a}
_COPY_LIKE = ("copy", "recall", "recall_variable")  # K symbols, length T + 2K
TASKS = tuple(_GENERATORS)


def make_task(name, T, copy_length=None):
    """The :class:`Task` named ``name`` (one of :data:`TASKS`) at lag ``T`` (for
    ``long_lag_2a`` T is p, the length of the middle part plus one); ``copy_length``
    is K, the symbols the copy task (default 10) or the recall task (default 1) asks to
    remember."""
    if copy_length is None:
        copy_length = 1 if name in ("recall", "recall_variable") else COPY_LENGTH
    T = check_int("T", T, 1)
    if name == "adding":
        return Task("adding", T, 2, 1, "mse", "last", "mse", 1.0 / 6.0)
    if name == "copy":
        K = check_int("copy_length", copy_length, 1)
        return Task("copy", T, COPY_SYMBOLS + 2, COPY_SYMBOLS + 1, "xent", "all", "xent",
                    K * math.log(COPY_SYMBOLS) / (T + 2 * K), K)
    if name in ("recall", "recall_variable"):
        K = check_int("copy_length", copy_length, 1)
        return Task(name, T, COPY_SYMBOLS + 2, COPY_SYMBOLS + 1, "xent", "tail", "accuracy",
                    1.0 / COPY_SYMBOLS, K)
    if name == "adding_1997":
        if T < 20:
            raise ValueError(f"adding_1997 needs T >= 20; got {T}")
        return Task("adding_1997", T, 2, 1, "mse", "last", "accuracy", 0.16 - 0.16 ** 2 / 4,
                    tolerance=ADDING_1997_TOLERANCE)
    if name == "long_lag_2a":
        if T < 2:
            raise ValueError(f"long_lag_2a needs p = T >= 2; got {T}")
        return Task("long_lag_2a", T, T + 1, T + 1, "xent", "all", "accuracy", 0.5)
    if name == "temporal_order":
        if T < 10:
            raise ValueError(f"temporal_order needs T >= 10; got {T}")
        return Task("temporal_order", T, ORDER_DISTRACTORS + 2, 4, "xent", "last", "accuracy",
                    0.25)
    raise ValueError(f"unknown task {name!r}; expected one of {TASKS}")
