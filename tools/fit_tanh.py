"""Fit the rational approximation of tanh used by the cpu execution's float32 loops
(kernels/cpu/sequence.cpp, ``vtanh<float>``):

    tanh(x) ~ x P(x^2) / Q(x^2),  P of degree 4, Q of degree 4 with Q(0) = 1,  |x| <= 9

(beyond 9, tanh rounds to +-1 in float32). Least squares on the linearised relative error
x P - t Q = 0 (t = tanh x), weighted by 1 / (t Q) with Q from the previous iteration, the
weights multiplied by sqrt(error / mean error) each round (Lawson's reweighting towards the
minimax fit). Prints the largest relative error in float64 and the coefficients (lowest
degree first). Run: python tools/fit_tanh.py
"""
import numpy as np


def fit(num_deg=4, den_deg=4, c=9.0, iters=200):
    x = np.concatenate([np.linspace(1e-4, c, 20000), np.geomspace(1e-6, 1, 2000)])
    z, t = x * x, np.tanh(x)
    P = np.vander(z, num_deg + 1, increasing=True) * x[:, None]
    Q = np.vander(z, den_deg + 1, increasing=True)[:, 1:]
    w, den, best = np.ones_like(x), np.ones_like(x), None
    for _ in range(iters):
        W = w / (t * den)
        sol, *_ = np.linalg.lstsq(np.hstack([P, -t[:, None] * Q]) * W[:, None], t * W, rcond=None)
        p, q = sol[:num_deg + 1], sol[num_deg + 1:]
        den = 1 + Q @ q
        err = np.abs((P @ p) / den - t) / t
        if best is None or err.max() < best[0]:
            best = (err.max(), p.copy(), q.copy())
        w = w * np.sqrt(err / err.mean())
        w /= w.mean()
    return best


if __name__ == "__main__":
    m, p, q = fit()
    print(f"largest relative error on (0, 9]: {m:.3g}")
    print("P:", ", ".join(repr(float(v)) for v in p))
    print("Q: 1.0,", ", ".join(repr(float(v)) for v in q))
