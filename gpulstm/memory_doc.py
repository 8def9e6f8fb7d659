"""Moved to :mod:`gpulstm.lab.memory_doc` (the long-range memory lab); ``gpulstm.memory_doc``
stays importable as the same module object, ``python -m gpulstm.memory_doc`` runs it."""
import sys

from .lab import memory_doc as _lab_module

if __name__ == "__main__":
    sys.exit(_lab_module.main())
sys.modules[__name__] = _lab_module
