"""gpulstm's asv benchmark suite (``asv.conf.json``: ``"benchmark_dir": "bench"``).

One module per concern: :mod:`bench.speed` (time, peak memory, throughput and speed ratios
against PyTorch across sequence length, batch, hidden size, cell and backend) and
:mod:`bench.memory` (long-range memory); :mod:`bench.common` holds the backends and the grid
profiles. Run with ``python -m gpulstm.benchrun [--quick|--full]``.
"""
