"""Moved to :mod:`gpulstm.lab.tasks` (the long-range memory lab); ``gpulstm.tasks`` stays
importable as the same module object."""
import sys

from .lab import tasks as _lab_module

sys.modules[__name__] = _lab_module
