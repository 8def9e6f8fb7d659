"""Philox4x32-10 in NumPy: the counter-based generator of the dropout masks.

The same stream as ``kernels/dropout.cu`` (``dropout_mask``), bit for bit, so that the numpy,
cpu, emulated and cupy executions draw identical masks for a given (seed, offset).

Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3",
SC 2011; Random123): a 128-bit counter (four 32-bit words) and a 64-bit key (two words) go
through 10 rounds of two 32x32 -> 64-bit multiplies; the key is bumped by the Weyl constants
between rounds. Here the multiplies run in uint64 over every block at once.

Stream layout of a mask of ``n`` elements (C order) with seed ``s`` and offset ``o``
(both 64-bit):

* key = (s mod 2^32, s >> 32);
* block ``i`` (0 <= i < ceil(n / 4)) has the 64-bit counter ``b = (o + i) mod 2^64`` in its
  two low words: counter = (b mod 2^32, b >> 32, 0, 0);
* element ``4 i + j`` takes output word ``j`` of block ``i``, ``u``; its uniform is
  ``(u >> 8) * 2^-24`` (24 bits, exact in float and double) and it is kept where
  uniform >= p, i.e. where ``(u >> 8) >= ceil(p * 2^24)`` (:func:`threshold`; the same test
  in integers);
* kept elements hold ``1 / (1 - p)`` rounded to the dtype, the others 0; p = 1 zeroes all
  (as torch).

A mask of ``n`` elements uses :func:`blocks` ``(n)`` counters; the next mask of the same seed
starts at offset ``o + blocks(n)``, so successive masks never share a block.
"""
from __future__ import annotations

import numpy as np

#: Philox4x32 multipliers and Weyl key increments (Random123's PHILOX_M4x32_0/1, PHILOX_W32_0/1)
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
_MASK32 = 0xFFFFFFFF
_U64_MASK = (1 << 64) - 1


def blocks(n):
    """Philox blocks (counters) a mask of ``n`` elements uses: ceil(n / 4)."""
    return (int(n) + 3) // 4


def philox4x32(counter, key, rounds=ROUNDS):
    """Philox4x32-``rounds`` of every counter: ``counter`` uint32 [..., 4] (array-like),
    ``key`` two 32-bit words. Returns uint32 [..., 4]."""
    c = np.asarray(counter, dtype=np.uint64)
    if c.shape[-1:] != (4,):
        raise ValueError(f"counter must have shape [..., 4]; got {c.shape}")
    c0, c1, c2, c3 = (c[..., i] & _MASK32 for i in range(4))
    return _rounds(c0, c1, c2, c3, int(key[0]) & _MASK32, int(key[1]) & _MASK32, rounds)


def _rounds(c0, c1, c2, c3, k0, k1, rounds):
    """The rounds on uint64 arrays holding 32-bit words; stacked uint32 [..., 4]."""
    m0, m1, lo = np.uint64(M0), np.uint64(M1), np.uint64(_MASK32)
    s32 = np.uint64(32)
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + W0) & _MASK32, (k1 + W1) & _MASK32
        p0 = c0 * m0  # < 2^64: exact in uint64
        p1 = c2 * m1
        c0, c1, c2, c3 = ((p1 >> s32) ^ c1 ^ np.uint64(k0), p1 & lo,
                          (p0 >> s32) ^ c3 ^ np.uint64(k1), p0 & lo)
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


#: Philox blocks per chunk of :func:`uint32_stream`: its uint64 temporaries stay in cache
CHUNK = 1 << 14


def _stream_rounds(b, k0, k1, out):
    """Philox4x32-10 of the counters (b mod 2^32, b >> 32, 0, 0) for the uint64 array ``b``
    into ``out`` uint32 [len(b), 4]: :func:`_rounds` with the first round's zero words folded
    and every later operation in place (3-4x faster on large masks)."""
    lo, s32 = np.uint64(_MASK32), np.uint64(32)
    c1 = b >> s32
    p0 = (b & lo) * np.uint64(M0)
    # round 1: c2 = c3 = 0, so the second product is 0
    c0 = c1 ^ np.uint64(k0)
    c1[:] = 0
    c2 = p0 >> s32
    c2 ^= np.uint64(k1)
    c3 = p0 & lo
    p1 = np.empty_like(b)
    t = np.empty_like(b)
    for _ in range(1, ROUNDS):
        k0, k1 = (k0 + W0) & _MASK32, (k1 + W1) & _MASK32
        np.multiply(c0, np.uint64(M0), out=p0)
        np.multiply(c2, np.uint64(M1), out=p1)
        np.right_shift(p1, s32, out=t)
        t ^= c1
        t ^= np.uint64(k0)
        c0, t = t, c0
        np.bitwise_and(p1, lo, out=c1)
        np.right_shift(p0, s32, out=t)
        t ^= c3
        t ^= np.uint64(k1)
        c2, t = t, c2
        np.bitwise_and(p0, lo, out=c3)
    out[:, 0] = c0
    out[:, 1] = c1
    out[:, 2] = c2
    out[:, 3] = c3


def uint32_stream(n, seed, offset):
    """The first ``n`` 32-bit outputs of the stream (seed, offset): uint32 [n]."""
    n, seed, offset = int(n), int(seed) & _U64_MASK, int(offset) & _U64_MASK
    nb = blocks(n)
    out = np.empty((nb, 4), np.uint32)
    steps = np.arange(min(nb, CHUNK), dtype=np.uint64)
    for s in range(0, nb, CHUNK):
        e = min(nb, s + CHUNK)
        b = steps[:e - s] + np.uint64((offset + s) & _U64_MASK)  # wraps mod 2^64, as the kernel
        _stream_rounds(b, seed & _MASK32, seed >> 32, out[s:e])
    return out.reshape(-1)[:n]


def threshold(p):
    """The integer threshold of keep probability 1 - p: element kept where
    ``(u >> 8) >= threshold(p)``, which is ``(u >> 8) * 2^-24 >= p`` exactly (p * 2^24 is exact
    in double). 0 for p = 0 (keep all), 2^24 for p = 1 (keep none)."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability must be in [0, 1]; got {p}")
    return int(np.ceil(p * 16777216.0))


def scale(p):
    """The value of a kept element: 1 / (1 - p), and 0 for p = 1 (torch zeroes all then)."""
    p = float(p)
    return 1.0 / (1.0 - p) if p < 1.0 else 0.0


def dropout_mask(shape, p, seed, offset, dtype):
    """The scaled keep mask of ``shape`` (C order) for dropout probability ``p`` from the
    stream (seed, offset), as ``kernels/dropout.cu`` writes it: a new C-contiguous array."""
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64))
    dtype = np.dtype(dtype)
    u = uint32_stream(n, seed, offset)
    out = ((u >> np.uint32(8)) >= np.uint32(threshold(p))).astype(dtype)
    out *= dtype.type(scale(p))  # 1 * scale is scale exactly; p = 1: 0 * 0
    return out.reshape(shape)
