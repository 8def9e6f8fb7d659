"""Moved to :mod:`gpulstm.lab.train` (the long-range memory lab); ``gpulstm.train`` stays
importable as the same module object."""
import sys

from .lab import train as _lab_module

sys.modules[__name__] = _lab_module
