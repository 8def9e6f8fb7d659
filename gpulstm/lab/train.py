"""Training a recurrent layer on the long-lag tasks of :mod:`gpulstm.lab.tasks`, on any backend.

Everything beyond the recurrent layer (linear read-out, losses, gradient clipping, Adam and
RMSProp) is written once against the array module ``xp`` of the model's backend, so the same
run on ``numpy``, ``emulated`` and ``cupy`` gives the same numbers up to rounding. Data are
drawn on the host from seeded NumPy Generators and moved to the backend.

Cell variants (:func:`make_cell`, all through the public :mod:`gpulstm` API)::

    lstm_fb0    LSTM, forget-gate bias initialised to 0
    lstm_fb1    LSTM, forget-gate bias 1 (Jozefowicz et al. 2015); alias "lstm"
    lstm_nofg   LSTM without forget gate (f = 1, the 1997 cell), input-gate biases negative
                (see below)
    lstm_peep   LSTM with diagonal peepholes, forget bias 1
    lstm_fb3    LSTM, forget-gate bias 3 (memory time constant ~21 steps at initialisation)
    lstm_chrono LSTM, chrono initialisation with T_max = the task's lag T (Tallec & Ollivier
                2018): b_f ~ log U[1, T - 1], b_i = -b_f
    gru         GRU (PyTorch's formulation)
    gru_ub3     GRU, update-gate bias 3 (z = sigmoid(3): the unit keeps ~95 % of h per step)
    rnn_tanh    Elman RNN, tanh
    irnn        Elman RNN, relu, W_hh = I and zero biases, input weights N(0, 0.001^2)
                (Le et al. 2015)
    cifg        coupled input-forget gate LSTM (i = 1 - f; Greff et al. 2017), forget-gate
                bias 1 as lstm_fb1
    indrnn      IndRNN, relu (Li et al. 2018), recurrent weights u ~ U(0, 1) (our choice:
                every unit starts as a leaky integrator; |u| is not constrained during
                training), input weights and biases PyTorch's default

Weights use PyTorch's default initialisation U(-1/sqrt(H), 1/sqrt(H)) except where stated;
the bias initialisations of ``lstm_fb3``, ``lstm_chrono`` and ``gru_ub3`` are
:func:`gpulstm.init.initialize` applied to the layer's ``state_dict``.

Without a forget gate the cell state only accumulates, and with PyTorch's initialisation it
drifts into tanh's saturation within a few dozen steps (at T=100 most units have
|tanh c_T| > 0.99). Hochreiter & Schmidhuber (1997) meet this "internal state drift" by
biasing the input gates negative at the start of learning; ``lstm_nofg`` does the same with
:data:`NOFG_INPUT_BIAS` (the input-gate block of ``bias_ih``; ``bias_hh``'s block 0), one
value per quarter of the units, so that different units open their gates at different
strengths (the paper used one bias per memory-cell block, e.g. -3 and -6 for two blocks).
See docs/memory.md for what of each paper's recipe was checked against its text.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .._checks import check_int
from ..init import initialize
from ..modules import CIFG, GRU, LSTM, RNN, IndRNN
from .tasks import Task, make_task

__all__ = ["CELLS", "make_cell", "Readout", "mse_loss", "softmax_xent", "accuracy", "task_metric",
           "clip_grad_norm", "Adam", "RMSProp", "TrainResult", "train", "evaluate"]

_CELL_ARGS = {
    "lstm_fb0": (LSTM, {"forget_bias": 0.0}),
    "lstm_fb1": (LSTM, {"forget_bias": 1.0}),
    "lstm_nofg": (LSTM, {"forget_gate": False}),
    "lstm_peep": (LSTM, {"forget_bias": 1.0, "peephole": True}),
    "lstm_fb3": (LSTM, {}),
    "lstm_chrono": (LSTM, {}),
    "gru": (GRU, {}),
    "gru_ub3": (GRU, {}),
    "rnn_tanh": (RNN, {"nonlinearity": "tanh"}),
    "irnn": (RNN, {"nonlinearity": "relu", "init": "identity"}),
    "cifg": (CIFG, {}),
    "indrnn": (IndRNN, {"nonlinearity": "relu"}),
}
CELLS = tuple(_CELL_ARGS)
_ALIASES = {"lstm": "lstm_fb1"}
NOFG_INPUT_BIAS = (-1.0, -2.0, -3.0, -4.0)  # lstm_nofg input-gate bias, by quarter of the units
IRNN_INPUT_STD = 1e-3  # irnn input weights ~ N(0, IRNN_INPUT_STD^2) (Le et al. 2015)
# cells whose biases gpulstm.init.initialize sets: (mode, its keyword arguments)
_INIT = {"lstm_fb3": ("LSTM", {"forget_bias": 3.0}), "lstm_chrono": ("LSTM", {"t_max": None}),
         "gru_ub3": ("GRU", {"update_bias": 3.0})}


def make_cell(name, input_size, hidden_size, backend="numpy", dtype="float32", seed=0,
              t_max=None):
    """One recurrent layer of the variant ``name`` (one of :data:`CELLS`, or ``"lstm"``).
    ``t_max`` (the task's lag) is what ``lstm_chrono`` needs; the other cells ignore it."""
    name = _ALIASES.get(name, name)
    cls, kwargs = _CELL_ARGS.get(name, (None, None))
    if cls is None:
        raise ValueError(f"unknown cell {name!r}; expected one of {CELLS + tuple(_ALIASES)}")
    model = cls(input_size, hidden_size, backend=backend, dtype=dtype, seed=seed, **kwargs)
    params, H = model.parameters(), hidden_size
    if name in _INIT:
        mode, init_args = _INIT[name]
        if "t_max" in init_args:
            if t_max is None:
                raise ValueError(f"cell {name!r} needs t_max (the task's lag)")
            init_args = dict(init_args, t_max=t_max)
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x696e6974]))
        model.load_state_dict(initialize(model.state_dict(), mode, hidden_size, rng=rng,
                                         **init_args))
    elif name == "lstm_nofg":
        quarters = np.array_split(np.arange(H), len(NOFG_INPUT_BIAS))
        b = np.concatenate([np.full(len(q), v) for q, v in zip(quarters, NOFG_INPUT_BIAS)])
        params["bias_ih_l0"][:H] = model.ex.asarray(b, model.dtype)
        params["bias_hh_l0"][:H] = 0
    elif name == "cifg":  # gate order (f, g, o): the forget block is the first
        params["bias_ih_l0"][:H] = 1
        params["bias_hh_l0"][:H] = 0
    elif name == "indrnn":
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x696e6472]))
        u = rng.uniform(0.0, 1.0, size=params["weight_hh_l0"].shape)
        params["weight_hh_l0"][...] = model.ex.asarray(u, model.dtype)
    elif name == "irnn":
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x69726e6e]))
        w = rng.normal(0.0, IRNN_INPUT_STD, size=params["weight_ih_l0"].shape)
        params["weight_ih_l0"][...] = model.ex.asarray(w, model.dtype)
    return model


class Readout:
    """Linear read-out z = h W^T + b. h [N, F] -> z [N, K]; W [K, F] ~ U(-1/sqrt(F), 1/sqrt(F)),
    b = 0. ``backward(dz)`` returns dL/dh and fills ``grads`` (keys of ``params``)."""

    def __init__(self, in_features, out_features, ex, dtype, seed=0):
        k = 1.0 / math.sqrt(in_features)
        w = np.random.default_rng(seed).uniform(-k, k, (out_features, in_features))
        self.ex = ex
        self.params = {"weight": ex.asarray(w, dtype),
                       "bias": ex.asarray(np.zeros(out_features), dtype)}
        self.grads = None
        self._h = None

    def forward(self, h):
        self._h = h
        return h @ self.params["weight"].T + self.params["bias"]

    def backward(self, dz):
        self.grads = {"weight": dz.T @ self._h, "bias": dz.sum(axis=0)}
        return dz @ self.params["weight"]


def mse_loss(xp, pred, target):
    """Mean squared error over all elements and its gradient: (loss (0-d array), dL/dpred)."""
    diff = pred - target
    return (diff * diff).mean(), diff * (2.0 / diff.size)


def softmax_xent(xp, logits, labels):
    """Mean softmax cross-entropy (nats) of logits [N, K] against int labels [N], and its
    gradient (softmax - onehot) / N: (loss (0-d array), dL/dlogits)."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    logsum = xp.log(xp.exp(z).sum(axis=1, keepdims=True))
    logp = z - logsum
    rows = xp.arange(n)
    loss = -logp[rows, labels].mean()
    grad = xp.exp(logp)
    grad[rows, labels] -= 1.0
    return loss, grad / n


def accuracy(xp, logits, labels):
    """Fraction of rows whose arg-max equals the label (0-d array)."""
    return (logits.argmax(axis=1) == labels).mean()


def clip_grad_norm(xp, grads, max_norm):
    """Scale the gradient arrays (in place) so that their joint L2 norm is at most ``max_norm``
    (Pascanu et al. 2013): g <- g * min(1, max_norm / ||g||). Returns the norm before clipping
    as a float64 0-d array (no host synchronisation). ``max_norm=None`` only measures.

    The squares are summed in float64, so float32 gradients whose norm exceeds float32's
    range (~3.4e38, reached from elements of ~1.8e19) are still clipped correctly. A
    non-finite norm (a NaN or inf element) leaves the gradients untouched and is returned
    as is: the caller decides (:func:`train` stops and reports the run as diverged)."""
    total = xp.sqrt(sum((g.astype(xp.float64, copy=False) ** 2).sum() for g in grads))
    if max_norm is not None:
        ok = xp.isfinite(total)
        scale = xp.where(ok, xp.minimum(1.0, max_norm / xp.maximum(total, 1e-300)), 1.0)
        for g in grads:
            g *= scale.astype(g.dtype)
    return total


class Adam:
    """Adam (Kingma & Ba 2015) on a dict of live parameter arrays, updated in place::

        m <- b1 m + (1 - b1) g        v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    def __init__(self, params, xp, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.xp, self.lr, self.betas, self.eps = params, xp, lr, betas, eps
        self.m = {k: xp.zeros_like(p) for k, p in params.items()}
        self.v = {k: xp.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def step(self, grads):
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        for k, p in self.params.items():
            g = grads[k]
            m, v = self.m[k], self.v[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            p -= self.lr * (m / c1) / (self.xp.sqrt(v / c2) + self.eps)


class RMSProp:
    """RMSProp (Tieleman & Hinton 2012; PyTorch's form) on a dict of live parameter arrays::

        v <- a v + (1 - a) g^2        p <- p - lr * g / (sqrt(v) + eps)
    """

    def __init__(self, params, xp, lr=1e-3, alpha=0.99, eps=1e-8):
        self.params, self.xp, self.lr, self.alpha, self.eps = params, xp, lr, alpha, eps
        self.v = {k: xp.zeros_like(p) for k, p in params.items()}

    def step(self, grads):
        a = self.alpha
        for k, p in self.params.items():
            g = grads[k]
            v = self.v[k]
            v *= a
            v += (1.0 - a) * (g * g)
            p -= self.lr * g / (self.xp.sqrt(v) + self.eps)


_OPTIMIZERS = {"adam": Adam, "rmsprop": RMSProp}


def _forward_loss(model, readout, task, x, target, backward, lengths=None):
    """Loss (0-d array), logits/predictions and, with ``backward``, all gradients filled.
    ``lengths`` (host int array [B], variable-length tasks): the layer runs each sequence to
    its own length and the ``"last"`` read-out takes step ``lengths[b] - 1``."""
    ex = model.ex
    xp = ex.xp
    y, _ = model(x, lengths=lengths)
    L, B, H = y.shape
    K = task.copy_length
    last = -1  # the last step of every sequence (a view: the fixed-length path as before)
    if task.readout == "last":
        if lengths is not None:  # each sequence's own last step
            last = (ex.asarray(np.asarray(lengths) - 1, np.int64), xp.arange(B))
        h = y[last]
    elif task.readout == "tail":
        h = y[L - K:].reshape(K * B, H)
    else:
        h = y.reshape(L * B, H)
    z = readout.forward(h)
    if task.loss == "mse":
        loss, dz = mse_loss(xp, z, target)
    else:
        loss, dz = softmax_xent(xp, z, target.reshape(-1))
    if backward:
        dh = readout.backward(dz)
        if task.readout == "last":
            dy = xp.zeros_like(y)
            dy[last] = dh
        elif task.readout == "tail":
            dy = xp.zeros_like(y)
            dy[L - K:] = dh.reshape(K, B, H)
        else:
            dy = dh.reshape(L, B, H)
        model.backward(dy)
    return loss, z


def task_metric(xp, task, z, target, loss):
    """The task's test figure of one batch (0-d array): ``loss`` for an MSE / cross-entropy
    metric; for ``accuracy`` the fraction of sequences right: within ``task.tolerance`` of
    the target (adding_1997), the arg-max of the last step only (long_lag_2a), else the
    arg-max of every read-out row."""
    if task.metric != "accuracy":
        return loss
    if task.tolerance is not None:
        return (xp.abs(z - target) <= task.tolerance).all(axis=1).mean()
    labels = target.reshape(-1)
    if task.name == "long_lag_2a":
        B = target.shape[-1]
        return accuracy(xp, z[-B:], labels[-B:])
    return accuracy(xp, z, labels)


def _to_backend(ex, model, task, x, target, lengths=None):
    """The batch on the model's backend; ``lengths`` stays a host array (the layer's)."""
    x = ex.asarray(x, model.dtype)
    target = ex.asarray(target, model.dtype if task.loss == "mse" else np.int64)
    return x, target, lengths


def evaluate(model, readout, task, rng, n, chunk=500):
    """Task metric and loss on ``n`` fresh sequences from ``rng`` (in chunks of ``chunk``).
    Returns (metric, loss) as floats: metric is MSE (adding), cross-entropy (copy) or accuracy
    (:func:`task_metric`)."""
    ex, xp = model.ex, model.ex.xp
    total_loss = total_metric = 0.0
    done = 0
    was_training = model.training
    model.eval()  # the inference path: the forward saves nothing for a backward
    try:
        while done < n:
            b = min(chunk, n - done)
            x, target, lengths = _to_backend(ex, model, task, *task.sample(rng, b))
            loss, z = _forward_loss(model, readout, task, x, target, backward=False,
                                    lengths=lengths)
            metric = task_metric(xp, task, z, target, loss)
            total_loss += float(loss) * b
            total_metric += float(metric) * b
            done += b
    finally:
        model.train(was_training)
    return total_metric / n, total_loss / n


@dataclass
class TrainResult:
    """What :func:`train` measured.

    ``steps`` is the budget (updates allowed); ``updates`` the updates actually made (fewer
    when training stopped at the criterion or diverged). ``curve_loss[k]`` is the training
    loss of update k+1 (``curve_sequences[k] = (k+1) * batch`` sequences seen). ``evals``
    lists (update, sequences seen, validation metric) every ``eval_every`` updates on fresh
    validation sequences. ``updates_to_criterion`` / ``sequences_to_pass``: the first check
    at which the validation metric met the task's criterion (None: not within the budget, a
    lower bound of "more than ``steps``"). ``test_metric`` / ``test_loss``: on ``test_size``
    fresh test sequences after the last update; ``passed``: the criterion on ``test_metric``.
    ``diverged``: the gradient norm became non-finite and training stopped there."""
    task: str
    cell: str
    T: int
    seed: int
    backend: str
    steps: int
    batch: int
    hidden: int
    lr: float
    optimizer: str
    clip: float | None
    baseline: float
    criterion: str
    curve_loss: np.ndarray
    curve_grad_norm: np.ndarray
    evals: list
    test_metric: float
    test_loss: float
    passed: bool
    sequences_to_pass: int | None
    wall_s: float
    updates: int = 0
    updates_to_criterion: int | None = None
    diverged: bool = False
    model: object = field(repr=False, default=None)
    readout: object = field(repr=False, default=None)

    @property
    def budget_sequences(self):
        return self.steps * self.batch

    @property
    def curve_sequences(self):
        return np.arange(1, len(self.curve_loss) + 1) * self.batch


def train(task, cell, T, steps, batch=32, hidden=32, lr=1e-2, seed=0, backend="numpy",
          clip=1.0, optimizer="adam", dtype="float32", test_size=1000, eval_every=50,
          eval_size=256, stop_at_criterion=False, progress=False):
    """Train ``cell`` (see :func:`make_cell`) plus a linear read-out on ``task`` at lag ``T``.

    ``steps`` updates of ``batch`` fresh sequences each (budget: steps * batch sequences);
    optimizer ``"adam"`` or ``"rmsprop"`` with learning rate ``lr``; gradients of the recurrent
    layer and the read-out clipped to joint norm ``clip`` (None: no clipping). Every
    ``eval_every`` updates the task metric is measured on ``eval_size`` fresh validation
    sequences; with ``stop_at_criterion`` training ends at the first check that meets the
    task's criterion (early stopping: the headline "updates to criterion"). A non-finite
    gradient norm ends training too (``diverged``). The recurrent layer is initialised exactly
    as ``make_cell(cell, ..., seed=seed)`` (so the gradient-flow probe at initialisation sees
    the same weights). Training, validation and test sequences come from independent streams
    spawned from ``seed``. ``progress=True`` shows a tqdm bar. Returns a :class:`TrainResult`.
    """
    task = make_task(task, T) if not isinstance(task, Task) else task
    steps = check_int("steps", steps, 1)
    batch = check_int("batch", batch, 1)
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {tuple(_OPTIMIZERS)}; got {optimizer!r}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None; got {clip!r}")
    if stop_at_criterion and not eval_every:
        raise ValueError("stop_at_criterion needs eval_every > 0 (the criterion is checked on "
                         "validation sequences every eval_every updates)")
    model = make_cell(cell, task.input_size, hidden, backend=backend, dtype=dtype, seed=seed,
                      t_max=T)
    ex, xp = model.ex, model.ex.xp
    ss_readout, ss_train, ss_eval, ss_test = np.random.SeedSequence([seed, 0x6c73746d]).spawn(4)
    readout = Readout(hidden, task.output_size, ex, model.dtype, seed=ss_readout)
    rng_train, rng_eval, rng_test = (np.random.default_rng(s) for s in (ss_train, ss_eval, ss_test))

    params = {("rnn", k): p for k, p in model.parameters().items()}
    params.update({("readout", k): p for k, p in readout.params.items()})
    opt = _OPTIMIZERS[optimizer](params, xp, lr=lr)

    losses, norms, evals = [], [], []
    to_pass = None
    diverged = False
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc=f"{task.name} {cell} T={T}", unit="step")
    t0 = time.perf_counter()
    step = 0
    for step in range(1, steps + 1):
        x, target, lengths = _to_backend(ex, model, task, *task.sample(rng_train, batch))
        loss, _ = _forward_loss(model, readout, task, x, target, backward=True, lengths=lengths)
        grads = {("rnn", k): g for k, g in model.grads.items()}
        grads.update({("readout", k): g for k, g in readout.grads.items()})
        norm = clip_grad_norm(xp, list(grads.values()), clip)
        norms.append(norm)
        losses.append(loss)
        if not bool(xp.isfinite(norm)):  # a NaN/inf gradient: stop, never skip silently
            diverged = True
            break
        opt.step(grads)
        if bar is not None:
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss):.4g}")
        if eval_every and (step % eval_every == 0 or step == steps):
            metric, _ = evaluate(model, readout, task, rng_eval, eval_size)
            evals.append((step, step * batch, metric))
            if to_pass is None and task.passed(metric):
                to_pass = step
                if stop_at_criterion:
                    break
    if bar is not None:
        bar.close()
    test_metric, test_loss = evaluate(model, readout, task, rng_test, test_size)
    wall = time.perf_counter() - t0
    return TrainResult(
        task=task.name, cell=cell, T=task.T, seed=seed, backend=model.backend, steps=steps,
        batch=batch, hidden=hidden, lr=lr, optimizer=optimizer, clip=clip,
        baseline=task.baseline, criterion=task.criterion,
        curve_loss=ex.to_numpy(xp.stack(losses)).astype(np.float64),
        curve_grad_norm=ex.to_numpy(xp.stack(norms)).astype(np.float64),
        evals=evals, test_metric=test_metric, test_loss=test_loss,
        passed=task.passed(test_metric) and not diverged,
        sequences_to_pass=None if to_pass is None else to_pass * batch, wall_s=wall,
        updates=step, updates_to_criterion=to_pass, diverged=diverged,
        model=model, readout=readout)
