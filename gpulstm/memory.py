"""Moved to :mod:`gpulstm.lab.memory` (the long-range memory lab); ``gpulstm.memory`` stays
importable as the same module object."""
import sys

from .lab import memory as _lab_module

sys.modules[__name__] = _lab_module
