"""CUDA graphs of the fused time loop: the buffer arenas and their pool (execution option
``graphs``, module option ``cuda_graphs``; ``docs/gpu.md``, "CUDA graphs").

A captured graph bakes in the pointers of every launch, so the loop of a graph must always
read and write the same buffers. An :class:`Arena` is such a fixed set of buffers for one
direction's loop shape (cell kind, dtype, T, B, H, direction, flags, inference or not): the
input projection ``gx``, ``w_hh_T``, ``L``, ``peep`` / ``b_hn``, the scratch ``gh``, the saved
``S``, ``C``, ``gates``, ``Y`` and, from the first backward on, the gradient buffers; and the
arena's forward and backward graphs (each captured the first time the arena runs that phase,
replayed afterwards).

An arena's saved buffers are handed to the engine's saved dict (no copy out), so the arena is
*in use* as long as anything still points into them: the views handed out keep a :class:`Lease`
alive (NumPy: through the view's base object; CuPy: as the owner of the view's memory), and
the arena is free again once its lease is gone (a weak reference tells). A second forward
before the first one's backward, stacked layers and both directions with the same shape thus
take separate arenas, and an arena is never replayed while a live context points into it.

:class:`GraphPool` keeps the arenas of one execution (one module: ``with_graphs`` makes a new
pool): at most ``per_shape`` per shape (further calls of that shape run the ordinary fused
loop, the same kernels and numbers), and at most ``max_free`` free arenas over all shapes
(the least recently used free ones are dropped, with their graphs). It counts captures and
replays.
"""
from __future__ import annotations

import itertools
import weakref

import numpy as np

#: arenas per shape (in use at once: one per stacked layer of that shape and live context)
PER_SHAPE = 8
#: free arenas kept over all shapes; the least recently used beyond it are dropped
MAX_FREE = 8


class Lease:
    """Held (strongly) by every view of an arena handed out; the arena is free once the lease
    is gone."""

    __slots__ = ("arena", "__weakref__")

    def __init__(self, arena):
        self.arena = arena


class Arena:
    """The fixed buffers of one loop shape (``arrays``, named as the engine's saved dict
    ``s`` / gradient dict ``g`` name them) and the graphs captured on them (``graphs``:
    "forward", "backward")."""

    def __init__(self, key, arrays):
        self.key, self.arrays, self.graphs = key, arrays, {}
        self.lease = None  # weak reference to the current Lease
        self.grad_lease = None  # weak reference to the lease of the handed-out gradients
        self.used = 0

    @staticmethod
    def _alive(ref):
        return ref is not None and ref() is not None

    def free(self):
        return not self._alive(self.lease)

    def grads_free(self):
        return not self._alive(self.grad_lease)

    def nbytes(self):
        """Device bytes of the buffers (each allocation once)."""
        own = {id(a): a for k, a in self.arrays.items()
               if a is not None and not (k == "gates" and "gates_slot" in self.arrays)}
        return sum(int(a.nbytes) for a in own.values())


class GraphPool:
    """The arenas of one execution by shape key, bounded (module docstring); counts
    ``captures`` and ``replays`` (per phase in ``stats()``) and ``exhausted`` (calls that ran
    the ordinary fused loop because every arena of their shape was in use)."""

    def __init__(self, per_shape=PER_SHAPE, max_free=MAX_FREE):
        for name, v in (("per_shape", per_shape), ("max_free", max_free)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1; got {v!r}")
        self.per_shape, self.max_free = per_shape, max_free
        self._arenas = {}  # key -> [Arena]
        self._clock = itertools.count(1)
        self.captures = {"forward": 0, "backward": 0}
        self.replays = {"forward": 0, "backward": 0}
        self.exhausted = 0

    def acquire(self, key, make):
        """A :class:`Lease` on a free arena of ``key`` (``make()`` builds a new one), or None
        when ``per_shape`` arenas of that key are all in use."""
        arenas = self._arenas.get(key, [])
        arena = next((a for a in arenas if a.free()), None)
        if arena is None:
            if len(arenas) >= self.per_shape:
                self.exhausted += 1
                return None
            self._evict(self.max_free - 1)
            arena = make()
            self._arenas.setdefault(key, []).append(arena)
        lease = Lease(arena)
        arena.lease, arena.grad_lease = weakref.ref(lease), None
        arena.used = next(self._clock)
        return lease

    def _evict(self, keep):
        """Drop the least recently used free arenas until at most ``keep`` are free."""
        free = sorted((a.used, k, i) for k, arenas in self._arenas.items()
                      for i, a in enumerate(arenas) if a.free())
        drop = free[:max(0, len(free) - keep)]
        for _, k, i in sorted(drop, key=lambda d: -d[2]):  # highest index first per key
            del self._arenas[k][i]
        for k in [k for k, v in self._arenas.items() if not v]:
            del self._arenas[k]

    def clear(self):
        """Drop every free arena and its graphs (arenas in use stay in the pool)."""
        self._evict(0)

    def arenas(self):
        """Every arena held, [(key, Arena)]."""
        return [(k, a) for k, arenas in self._arenas.items() for a in arenas]

    def stats(self):
        held = [a for _, a in self.arenas()]
        return dict(captures=dict(self.captures), replays=dict(self.replays),
                    arenas=len(held), in_use=sum(not a.free() for a in held),
                    bytes=sum(a.nbytes() for a in held), exhausted=self.exhausted)


class _Handle:
    """The base object of a leased NumPy view: the arena array's memory (``__array_interface__``)
    plus strong references to that array and to the lease."""

    __slots__ = ("__array_interface__", "array", "lease")


def leased_numpy(a, lease):
    """A NumPy view of arena array ``a`` (same memory, shape and strides) whose every derived
    view keeps ``lease`` alive: NumPy stops collapsing a view's base at a non-array object,
    so slices of it keep this view, hence the handle, hence the lease."""
    h = _Handle()
    h.__array_interface__, h.array, h.lease = a.__array_interface__, a, lease
    v = np.asarray(h)
    return v if type(a) is np.ndarray else v.view(type(a))
