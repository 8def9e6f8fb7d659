"""Speed-shaped benchmarks: a parametrised time benchmark (one backend skips), a whole-benchmark
skip (NotImplementedError in setup, as for a missing backend) and a failure."""


class TimeLSTM:
    params = (["numpy", "torch-cpu", "cupy"], [4, 16], ["lstm"])
    param_names = ["backend", "T", "cell"]

    def setup(self, backend, T, cell):
        if backend == "cupy":
            raise NotImplementedError("cupy: no GPU in the fixture")
        self.n = 50 * T * (2 if backend == "numpy" else 1)

    def time_forward(self, backend, T, cell):
        sum(range(self.n))


class TimeMissingBackend:
    def setup(self):
        raise NotImplementedError("backend not installed")

    def time_forward(self):
        pass


class TimeBroken:
    def time_forward(self):
        raise RuntimeError("deliberate failure for the report tests")
