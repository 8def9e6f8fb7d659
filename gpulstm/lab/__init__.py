"""The long-range memory lab: tasks, training loop, Dask sweep, gradient-flow probe and the
memory document, built on the library (gpulstm's layers) and never imported by it.

- :mod:`gpulstm.lab.tasks`: the task generators (adding, temporal order, recall, copy).
- :mod:`gpulstm.lab.train`: read-out, losses, optimizers, the cell registry and the loop.
- :mod:`gpulstm.lab.sweep`: the updates-to-criterion protocol over a grid, on Dask.
- :mod:`gpulstm.lab.memory`: ||dL/dh_t|| at initialisation (gradient flow).
- :mod:`gpulstm.lab.memory_doc`: ``python -m gpulstm.lab.memory_doc`` writes MEMORY.md.

The old flat names (``gpulstm.tasks``, ``gpulstm.train``, ``gpulstm.sweep``, ``gpulstm.memory``,
``gpulstm.memory_doc``) stay importable: each is this package's module under a second name.
"""
