"""Memory-shaped track benchmarks with fixed values (the schema gpulstm.report.memory_table reads):
memory.TrackAdding.track_test_mse / track_success_rate over cell, T, seed, and a gradient flow."""


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


class TrackGradientFlow:
    params = (["lstm", "rnn"], [1, 10, 100])
    param_names = ["cell", "distance"]
    unit = "ratio"

    def track_grad_ratio(self, cell, distance):
        return (0.99 if cell == "lstm" else 0.8) ** distance
