"""Moved to :mod:`gpulstm.lab.sweep` (the long-range memory lab); ``gpulstm.sweep`` stays
importable as the same module object."""
import sys

from .lab import sweep as _lab_module

sys.modules[__name__] = _lab_module
