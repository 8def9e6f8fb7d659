"""Memory-shaped track benchmarks with fixed values (the schema gpulstm.report.memory_table reads):
memory.TrackAdding.track_test_mse / track_success_rate over cell, T, seed, and TrackGradFlow.track_log10_ratio_end over cell, T, seed."""


class TrackAdding:
    params = (["lstm", "rnn"], [10, 100], [0, 1])
    param_names = ["cell", "T", "seed"]

    def track_test_mse(self, cell, T, seed):
        if cell == "lstm":
            return 0.001 * T / 10 + 0.001 * seed
        return 0.01 if T == 10 else 0.17

    track_test_mse.unit = "mse"

    def track_success_rate(self, cell, T, seed):
        return 1.0 if cell == "lstm" or T == 10 else 0.0

    track_success_rate.unit = "fraction"


class TrackGradFlow:
    """As bench/memory.py: log10 of ||dL/dh_t|| / ||dL/dh_T|| at distance T (initial state)."""
    params = (["lstm", "rnn"], [10, 100], [0])
    param_names = ["cell", "T", "seed"]

    def track_log10_ratio_end(self, cell, T, seed):
        return (-0.05 if cell == "lstm" else -0.25) * T

    track_log10_ratio_end.unit = "log10"
