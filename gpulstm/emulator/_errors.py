"""Errors of the emulated execution."""


class EmulatorError(RuntimeError):
    """Compiling or running a kernel on the CPU failed: the message carries the compiler log
    or the runtime diagnosis (barrier in sequential mode, deadlock, bad warp mask, ...)."""


class UnknownKernelError(EmulatorError, KeyError):
    """``get_function`` was asked for a name the module does not contain."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])
