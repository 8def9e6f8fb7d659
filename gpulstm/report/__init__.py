"""asv results as tidy pandas DataFrames, comparison tables, plots and a Markdown report.

    from gpulstm.report import load_results, compare, criterion_tables, markdown_report
    df = load_results("results")
    compare(df, baseline={"backend": "torch-cpu"}, by=["machine", "benchmark", "cell", "T", "B", "H"])
    per_lr, best = criterion_tables(df)     # long-range memory: updates to criterion
    markdown_report(df, "out/report")
"""

from .literature import published_outcomes
from .markdown import build_report, markdown_report, print_report, to_markdown
from .memory import (criterion_tables, criterion_wide, memory_points, plot_gradient_flow,
                     plot_training_curves, plot_updates_to_criterion)
from .plots import plot_memory_vs_T, plot_ratio_vs_T, plot_time_vs_T
from .results import load_results, machine_columns, param_columns
from .speed import machine_ratios, speed_table
from .tables import compare, latest

__all__ = [
    "load_results", "param_columns", "machine_columns",
    "compare", "latest", "published_outcomes", "speed_table", "machine_ratios",
    "memory_points", "criterion_tables", "criterion_wide",
    "plot_time_vs_T", "plot_ratio_vs_T", "plot_memory_vs_T", "plot_gradient_flow", "plot_updates_to_criterion",
    "plot_training_curves",
    "markdown_report", "build_report", "print_report", "to_markdown",
]
