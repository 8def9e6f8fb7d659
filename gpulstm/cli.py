"""The ``gpulstm`` command line.

    gpulstm info                                  backends usable here, GPU, CUDA/CuPy/NVRTC versions
    gpulstm bench [--quick|--full] [--backend B]  the asv suite in the current environment
    gpulstm report [RESULTS] [--out DIR]          comparison tables, plots and a markdown report
    gpulstm memory --task adding --cell lstm,rnn_tanh --T 50,100,200
                                                  a long-range memory experiment, run directly
    gpulstm main [--full]                         bench (best backend) + report: the README's main job
"""
from __future__ import annotations

import argparse
import importlib
import platform
import sys


def _version(module):
    try:
        return importlib.import_module(module).__version__
    except Exception as e:  # not installed, or broken: say which
        return f"not available ({type(e).__name__})"


def _nvrtc_version():
    try:
        from cuda.bindings import nvrtc
        err, major, minor = nvrtc.nvrtcVersion()
        return f"{major}.{minor} (cuda-bindings)"
    except Exception as e:
        return f"not available ({type(e).__name__}: {e})"


def _gpu_lines():
    try:
        import cupy
    except Exception as e:
        return [f"CuPy: not importable ({type(e).__name__}: {e})"]
    lines = [f"CuPy: {cupy.__version__}"]
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        rt = cupy.cuda.runtime.runtimeGetVersion()
        drv = cupy.cuda.runtime.driverGetVersion()
        lines.append(f"CUDA runtime {rt // 1000}.{rt % 1000 // 10}, driver API {drv // 1000}.{drv % 1000 // 10}")
        for i in range(n):
            p = cupy.cuda.runtime.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
            lines.append(f"GPU {i}: {name}, sm_{p['major']}{p['minor']}, "
                         f"{p['totalGlobalMem'] / 2**30:.1f} GiB, {p['multiProcessorCount']} SMs")
    except Exception as e:
        lines.append(f"no usable CUDA device ({type(e).__name__}: {e})")
    return lines


def cmd_info(args):
    import gpulstm as gl
    print(f"gpulstm {gl.__version__} on Python {platform.python_version()} ({platform.machine()})")
    print(f"numpy {_version('numpy')}, torch {_version('torch')}, asv {_version('asv')}, "
          f"pandas {_version('pandas')}")
    print(f"NVRTC: {_nvrtc_version()}")
    for line in _gpu_lines():
        print(line)
    print("backends:")
    for name, why in gl.available_backends().items():
        print(f"  {name:9s} {'usable' if why is None else 'unavailable: ' + why}")
    from .backends import explain_auto
    name, why = explain_auto()
    print(f"  auto   -> {name} (the main job's backend): {why}")
    return 0


def cmd_bench(args):
    from . import benchrun
    argv = ["--full" if args.full else "--quick"]
    if args.backend:
        argv += ["--backend", args.backend]
    if args.bench:
        argv += ["--bench", args.bench]
    return benchrun.main(argv)


def cmd_report(args):
    from . import report
    df = report.load_results(args.results)
    md = report.markdown_report(df, args.out)
    print(md)
    print(f"\nreport and plots written to {args.out}/")
    return 0


def cmd_memory(args):
    """A long-range memory sweep (gpulstm.sweep): updates to criterion per task, cell and T."""
    from .sweep import run_from_args
    return run_from_args(args)


def cmd_main(args):
    rc = cmd_bench(args)
    if rc:
        return rc
    return cmd_report(args)


def build_parser():
    ap = argparse.ArgumentParser(prog="gpulstm", description="GPU LSTM library and benchmark harness")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="backends, GPU and versions").set_defaults(func=cmd_info)

    def bench_args(p):
        g = p.add_mutually_exclusive_group()
        g.add_argument("--quick", action="store_true", help="the reduced grid (default)")
        g.add_argument("--full", action="store_true", help="the full grid (GPU machines)")
        p.add_argument("--backend", help="benchmark this backend only (numpy, cupy, ...)")
        p.add_argument("--bench", help="regular expression selecting benchmarks")

    p = sub.add_parser("bench", help="run the asv suite in the current environment")
    bench_args(p)
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("report", help="tables, plots and a markdown report from asv results")
    p.add_argument("results", nargs="?", default="results")
    p.add_argument("--out", default="report")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("memory", help="a long-range memory sweep (updates to criterion)")
    from .sweep import add_arguments
    add_arguments(p)
    p.set_defaults(func=cmd_memory)
    p = sub.add_parser("main", help="bench + report (the README's main job)")
    bench_args(p)
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="report")
    p.set_defaults(func=cmd_main)
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
