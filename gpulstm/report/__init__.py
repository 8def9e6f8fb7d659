"""asv results as tidy pandas DataFrames, comparison tables, plots and a Markdown report.

    from gpulstm.report import load_results, compare, memory_table, markdown_report
    df = load_results("results")
    compare(df, baseline={"backend": "torch-cpu"}, by=["machine", "benchmark", "cell", "T", "B", "H"])
    markdown_report(df, "out/report")
"""

from .literature import published_outcomes
from .markdown import build_report, markdown_report, print_report, to_markdown
from .plots import plot_gradient_flow, plot_ratio_vs_T, plot_task_metric, plot_time_vs_T
from .results import load_results, machine_columns, param_columns
from .speed import machine_ratios, speed_table
from .tables import compare, latest, memory_table, task_baseline

__all__ = [
    "load_results", "param_columns", "machine_columns",
    "compare", "latest", "memory_table", "task_baseline", "published_outcomes",
    "speed_table", "machine_ratios",
    "plot_time_vs_T", "plot_ratio_vs_T", "plot_gradient_flow", "plot_task_metric",
    "markdown_report", "build_report", "print_report", "to_markdown",
]
