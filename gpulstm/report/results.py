"""Read an asv 0.6 results directory into one tidy DataFrame (one row per measured point).

Layout read (what ``asv run`` writes, api_version 2 result files)::

    results/benchmarks.json                      name -> {param_names, params, type, unit, ...}
    results/<machine>/machine.json               machine, os, arch, cpu, ... (+ gpu, driver, cuda, cupy)
    results/<machine>/<commit[:8]>-<env>.json    {commit_hash, env_name, date, params,
                                                  result_columns, results: {name: [row]}}

Each ``results[name]`` row holds one value per name in ``result_columns`` (asv drops trailing
``None`` entries). ``result`` and the ``stats_*`` / ``samples`` columns are lists over the points
of ``itertools.product(*params)``; parameter values are stored as ``repr`` strings. A result of
``null`` is a failure, ``NaN`` a skip (``NotImplementedError`` in ``setup``).

This module is the one results parser of the project: everything else reads the DataFrame.
"""

from __future__ import annotations

import ast
import itertools
import json
import math
import os
import stat
import warnings
from typing import Any

import pandas as pd

__all__ = ["load_results", "param_columns", "machine_columns", "FIXED_COLUMNS",
           "ResultsFileWarning"]

RESULTS_API_VERSION = 2  # asv.results.Results.api_version in asv 0.6

# Bounds on what one file can make the loader allocate. A result row's parameter points are
# checked against these (and against the row's own result list) before any product is built.
MAX_FILE_BYTES = 64 * 2**20      # one JSON file (asv's own are a few hundred KB)
MAX_POINTS = 100_000             # parameter points of one benchmark
MAX_PARAM_TEXT = 1_000           # characters of one stored parameter repr decoded


class ResultsFileWarning(UserWarning):
    """An asv results file was skipped (``load_results(..., errors="warn")``); the message
    names the file and the problem."""


class _FileError(ValueError):
    """A problem with one file; the message names it."""

# Benchmark kinds by method-name prefix (asv's own prefixes), and by benchmarks.json "type".
_KIND_BY_PREFIX = (("time_", "time"), ("peakmem_", "peakmem"), ("track_", "track"), ("mem_", "mem"))
_KIND_BY_TYPE = {"time": "time", "peakmem": "peakmem", "track": "track", "memory": "mem"}
_UNIT_BY_KIND = {"time": "seconds", "peakmem": "bytes", "mem": "bytes", "track": "unit"}

# Columns every frame has, in order; parameters and machine fields are inserted around them.
_HEAD = ["machine"]
_MIDDLE = ["commit", "date", "env", "python", "benchmark", "kind", "unit"]
_TAIL = ["value", "status"]
# Per-benchmark columns from result_columns other than result/params/stats_*/samples/profile.
_PER_BENCHMARK = {"started_at", "duration", "version"}
FIXED_COLUMNS = frozenset(_HEAD + _MIDDLE + _TAIL) | _PER_BENCHMARK


def load_results(path: str | os.PathLike = "results", *, errors: str = "warn") -> pd.DataFrame:
    """Load every asv result file under ``path`` into a tidy DataFrame.

    One row per measured point (benchmark x parameter combination x result file). Columns:

    - ``machine`` and every key of that machine's ``machine.json`` (``os``, ``cpu``, ``gpu``,
      ``driver``, ``cuda``, ``cupy``, ...; a key clashing with another column gets a
      ``machine_`` prefix)
    - ``commit`` (full hash), ``date`` (commit date, UTC datetime), ``env``, ``python``
    - ``benchmark`` (full name), ``kind`` (``time``/``peakmem``/``track``/``mem``), ``unit``
    - one typed column per parameter (names from ``benchmarks.json``; values decoded from
      asv's repr strings with ``ast.literal_eval``: whole-int columns are ``Int64``; a
      parameter clashing with another column gets a ``param_`` prefix)
    - ``value``, ``status`` (``ok``; ``skipped`` where asv stored NaN; ``failed`` where null)
    - the statistics present in the files: ``ci_99_a``, ``ci_99_b``, ``q_25``, ``q_75``,
      ``number``, ``repeat``; ``samples`` (how many samples were recorded, when recorded);
      ``started_at`` (UTC datetime), ``duration`` (s, whole benchmark), ``version``

    Statistics are kept as asv wrote them: a quick run (one repeat) has infinite
    ``ci_99_a``/``ci_99_b``. ``df.attrs["param_columns"]`` and ``df.attrs["machine_columns"]``
    name the parameter and machine columns.

    A file that cannot be used (invalid JSON, an unsupported format version, a malformed
    shape, a result row whose length does not match the product of its parameter lists, more
    than ``MAX_POINTS`` points or ``MAX_FILE_BYTES`` bytes, a missing or unreadable
    ``machine.json`` for the files of its directory) is an error that names the file:

    - ``errors="warn"`` (default): the file is skipped with a :class:`ResultsFileWarning`;
      ``df.attrs["skipped_files"]`` lists ``(path, reason)`` of every file skipped. An
      unreadable ``benchmarks.json`` is warned about and asv's default parameter names
      (``param1``, ...) are used.
    - ``errors="raise"``: the first such problem raises ``ValueError``.

    Raises ``FileNotFoundError`` when ``path`` is not a directory, ``ValueError`` when it
    holds no result file, or when every result file was skipped (naming the first reasons).
    """
    if errors not in ("raise", "warn"):
        raise ValueError(f"load_results: errors must be 'raise' or 'warn', got {errors!r}")
    root = os.fspath(path)
    if os.path.exists(root) and not os.path.isdir(root):
        raise NotADirectoryError(f"{root!r} is a file, not an asv results folder (expected "
                                 f"{root}/<machine>/<commit>-<env>.json)")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"asv results directory {root!r} does not exist")

    # Only real folders and regular files inside ``root`` are read: a link could lead out of
    # it, a FIFO or device would block or never end. Those are skipped and named.
    machine_dirs, not_regular = [], []
    for entry in sorted(_listdir(root)):
        mdir = os.path.join(root, entry)
        if _is_link_or_special(mdir):
            if os.path.isdir(mdir) or entry.endswith(".json"):
                not_regular.append(mdir)
            continue
        if not os.path.isdir(mdir):
            continue
        files = []
        for f in sorted(_listdir(mdir)):
            if f.endswith(".json") and f != "machine.json":
                fpath = os.path.join(mdir, f)
                (not_regular if _is_link_or_special(fpath) else files).append(
                    fpath if _is_link_or_special(fpath) else f)
        if files:
            machine_dirs.append((mdir, files))
    if not machine_dirs and not not_regular:
        raise ValueError(
            f"no asv result files under {root!r}: expected {root}/<machine>/<commit>-<env>.json "
            "(run `gpulstm bench` or `asv run` first, or pass the results directory)"
        )

    skipped: list[tuple[str, str]] = []

    def problem(fpath: str, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, _FileError) else (
            f"asv file {fpath!r} could not be read: {type(exc).__name__}: {exc}")
        if errors == "raise":
            raise ValueError(msg) from (None if isinstance(exc, _FileError) else exc)
        skipped.append((fpath, msg))
        warnings.warn(f"skipped: {msg}", ResultsFileWarning, stacklevel=3)

    for fpath in not_regular:
        problem(fpath, _FileError(f"{fpath!r} is a symbolic link or special file: results are "
                                  "read only from regular files inside the results folder"))

    bpath = os.path.join(root, "benchmarks.json")
    try:
        benchmarks = _load_benchmarks(bpath)
    except Exception as exc:  # noqa: BLE001 - named and re-raised or warned about
        if errors == "raise":
            problem(bpath, exc)
        warnings.warn(f"{exc}; using asv's default parameter names", ResultsFileWarning,
                      stacklevel=2)
        benchmarks = {}

    records: list[dict[str, Any]] = []
    machine_keys: list[str] = []
    param_names_seen: list[str] = []
    n_files = len(not_regular)
    for mdir, files in machine_dirs:
        n_files += len(files)
        mpath = os.path.join(mdir, "machine.json")
        try:
            machine = _load_machine(mpath)
        except Exception as exc:  # noqa: BLE001
            for fname in files:
                problem(os.path.join(mdir, fname), _FileError(
                    f"asv result file {os.path.join(mdir, fname)!r} skipped: {exc}"))
            continue
        for fname in files:
            fpath = os.path.join(mdir, fname)
            try:
                got = list(_read_result_file(fpath, machine, benchmarks))
            except (Exception, RecursionError) as exc:  # noqa: BLE001
                problem(fpath, exc)
                continue
            machine_keys += [k for k in machine if k not in machine_keys]
            for rec, pnames in got:
                records.append(rec)
                param_names_seen += [p for p in pnames if p not in param_names_seen]

    if skipped and len(skipped) == n_files:
        raise ValueError(f"none of the {n_files} asv result files under {root!r} could be "
                         f"read; first: {skipped[0][1]}")
    df = _to_frame(records, machine_keys, param_names_seen)
    df.attrs["skipped_files"] = skipped
    return df


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError as exc:  # PermissionError, a folder removed meanwhile: one clear line
        raise PermissionError(f"cannot list the results folder {path!r}: "
                              f"{exc.strerror or exc}") from None


def _is_link_or_special(path: str) -> bool:
    """A symbolic link, FIFO, socket or device (what the results reader never opens)."""
    mode = os.lstat(path).st_mode
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def param_columns(df: pd.DataFrame) -> list[str]:
    """The benchmark-parameter columns of a frame from :func:`load_results`."""
    cols = df.attrs.get("param_columns")
    if cols is None:  # attrs lost (e.g. a hand-built frame): everything not fixed or machine
        machine = set(machine_columns(df))
        cols = [c for c in df.columns if c not in FIXED_COLUMNS and c not in machine
                and c not in _STAT_NAMES]
    return [c for c in cols if c in df.columns]


def machine_columns(df: pd.DataFrame) -> list[str]:
    """The ``machine.json`` columns of a frame from :func:`load_results` (without ``machine``)."""
    cols = df.attrs.get("machine_columns")
    if cols is None:
        cols = [c for c in _KNOWN_MACHINE_KEYS if c != "machine"]
    return [c for c in cols if c in df.columns]


_RESERVED = frozenset(_HEAD + _MIDDLE + _TAIL)
_STAT_NAMES = {"ci_99_a", "ci_99_b", "q_25", "q_75", "number", "repeat", "samples"}
_KNOWN_MACHINE_KEYS = ["machine", "os", "arch", "cpu", "num_cpu", "ram",
                       "gpu", "driver", "cuda", "cupy"]


def read_regular(path: str, what: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, which must be a regular file (not a link, FIFO or device: those
    could point out of the results folder, block or never end) of at most ``limit`` bytes,
    the size taken from the open file. Problems are a ``_FileError`` naming the file."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise _FileError(f"{what} {path!r} is missing") from None
    except OSError as exc:
        if os.path.islink(path):
            raise _FileError(f"{what} {path!r} is a symbolic link: results are read only from "
                             "regular files inside the results folder") from None
        raise _FileError(f"{what} {path!r} could not be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _FileError(f"{what} {path!r} is not a regular file (a FIFO, device or "
                             "directory): not read")
        if st.st_size > limit:
            raise _FileError(f"{what} {path!r} has {st.st_size} bytes, more than the "
                             f"{limit} a results file may have")
        data = f.read(st.st_size + 1)  # bounded by the size seen, even if the file grows
    if len(data) > st.st_size:
        raise _FileError(f"{what} {path!r} grew while being read (is something writing it?)")
    return data


def _load_json(path: str, what: str) -> Any:
    data = read_regular(path, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _FileError(f"{what} {path!r} is not valid JSON: {type(exc).__name__}: "
                         f"{exc}") from None


def _load_benchmarks(path: str) -> dict[str, dict]:
    data = _load_json(path, "asv benchmarks file")
    if not isinstance(data, dict):
        raise _FileError(f"asv benchmarks file {path!r}: expected a JSON object, got "
                         f"{type(data).__name__}")
    out = {}
    for name, info in data.items():
        if not isinstance(info, dict):
            continue
        names = info.get("param_names")
        out[name] = {
            "param_names": names if isinstance(names, list)
            and all(isinstance(n, str) for n in names) else [],
            "type": info.get("type") if isinstance(info.get("type"), str) else None,
            "unit": info.get("unit") if isinstance(info.get("unit"), str) else None}
    return out


def _load_machine(path: str) -> dict[str, Any]:
    data = _load_json(path, "asv machine file")
    if not isinstance(data, dict) or not isinstance(data.get("machine"), str):
        raise _FileError(f"asv machine file {path!r}: expected an object with a 'machine' name")
    # "version" is the file-format version, not a property of the machine.
    return {k: _cell(v) for k, v in data.items() if k != "version"}


def _decode_param(text: Any) -> Any:
    """asv stores parameter values as repr strings: "64" -> 64, "'lstm'" -> 'lstm'."""
    if not isinstance(text, str):
        return _cell(text)
    if len(text) > MAX_PARAM_TEXT:  # literal_eval of a huge or deeply nested repr: keep text
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text  # a repr that is not a literal (e.g. "<function f>") stays as written
    return value if _hashable(value) else text  # "[1, 2]": a list cannot be grouped on


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _cell(value: Any) -> Any:
    """A value from a JSON file as a frame cell: lists and objects (which pandas cannot group
    or compare) become their JSON text."""
    return value if _hashable(value) else json.dumps(value, sort_keys=True)[:MAX_PARAM_TEXT]


def _kind(name: str, info: dict | None) -> str:
    method = name.rsplit(".", 1)[-1]
    for prefix, kind in _KIND_BY_PREFIX:
        if method.startswith(prefix):
            return kind
    if info and info.get("type") in _KIND_BY_TYPE:
        return _KIND_BY_TYPE[info["type"]]
    return str(info.get("type")) if info and info.get("type") else "unknown"


def _js_time(ms: Any) -> pd.Timestamp | None:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return None
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        raise TypeError(f"expected a time in ms since 1970, got {type(ms).__name__}")
    return pd.Timestamp(int(ms), unit="ms", tz="UTC")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _read_result_file(path: str, machine: dict, benchmarks: dict):
    """Yield (record, param_names) for every point in one asv result file. Every problem is a
    ``_FileError`` naming the file (the caller wraps anything unforeseen the same way)."""
    d = _load_json(path, "asv result file")
    if not isinstance(d, dict):
        raise _FileError(f"asv result file {path!r}: expected a JSON object")
    if d.get("version") != RESULTS_API_VERSION:
        raise _FileError(
            f"asv result file {path!r} has format version {d.get('version')!r}, expected "
            f"{RESULTS_API_VERSION} (asv 0.6; older files are upgraded by `asv update`)")
    missing = [k for k in ("commit_hash", "env_name", "date", "result_columns", "results")
               if k not in d]
    if missing:
        raise _FileError(f"asv result file {path!r} lacks the keys {missing}")
    columns = d["result_columns"]
    if not isinstance(columns, list) or "result" not in columns or "params" not in columns:
        raise _FileError(f"asv result file {path!r}: result_columns {columns!r:.200} lacks "
                         "'result' or 'params'")
    env_params = d.get("params") or {}
    if not isinstance(env_params, dict) or not isinstance(d["results"], dict):
        raise _FileError(f"asv result file {path!r}: 'params' and 'results' must be objects")
    if not all(isinstance(c, str) for c in columns):
        raise _FileError(f"asv result file {path!r}: result_columns must be names")
    if not isinstance(d["commit_hash"], str) or not isinstance(d["env_name"], str):
        raise _FileError(f"asv result file {path!r}: commit_hash and env_name must be strings")
    if env_params.get("machine", machine["machine"]) != machine["machine"]:
        raise _FileError(f"asv result file {path!r} is for machine {env_params['machine']!r}, "
                         f"but its directory's machine.json names {machine['machine']!r}")
    common = {
        "commit": d["commit_hash"],
        "date": _js_time(d["date"]),
        "env": d["env_name"],
        "python": _cell(d.get("python")),
    }

    for name, row in d["results"].items():
        if not isinstance(row, list) or len(row) > len(columns):
            raise _FileError(f"asv result file {path!r}: benchmark {name!r} has a row of "
                             f"{len(row) if isinstance(row, list) else type(row).__name__} "
                             f"entries for {len(columns)} result_columns")
        entry = dict(zip(columns, row))  # asv drops trailing None entries
        params = entry.get("params") or []
        if not isinstance(params, list) or not all(isinstance(p, list) for p in params):
            raise _FileError(f"asv result file {path!r}: benchmark {name!r} has params "
                             f"{params!r:.200}, expected a list of lists")
        # Size first: the product of the parameter lists is built only once it is known to
        # match the row's own result list (so its size is bounded by the file's).
        n_points = math.prod(len(p) for p in params) if len(params) < 64 else MAX_POINTS + 1
        results = entry.get("result")
        if results is None and n_points <= MAX_POINTS:
            results = [None] * n_points  # whole benchmark failed (or build failure)
        if not isinstance(results, list) or len(results) != n_points:
            raise _FileError(
                f"asv result file {path!r}: benchmark {name!r} has "
                f"{len(results) if isinstance(results, list) else 'no list of'} results for "
                f"{n_points} parameter combinations {[len(p) for p in params][:8]}")
        bad = next((v for v in results if v is not None and not _is_number(v)), None)
        if bad is not None:
            raise _FileError(f"asv result file {path!r}: benchmark {name!r} has a result "
                             f"{bad!r:.60}, expected numbers or null")
        results = [None if v is None else float(v) for v in results]  # OverflowError: named
        points = itertools.product(*params)

        info = benchmarks.get(name)
        names = list(info.get("param_names") or []) if info else []
        if len(names) != len(params):  # stale benchmarks.json: asv's default names
            names = [f"param{i + 1}" for i in range(len(params))]
        kind = _kind(name, info)
        unit = (info or {}).get("unit") or _UNIT_BY_KIND.get(kind)

        per_point: dict[str, list] = {}
        per_bench: dict[str, Any] = {}
        for key, value in entry.items():
            if key in ("result", "params", "profile"):
                continue
            out = key[len("stats_"):] if key.startswith("stats_") else key
            if out in _RESERVED or out.startswith("_"):
                continue  # a column name of the frame itself: not a statistic
            if key.startswith("stats_") or key == "samples":
                if value is None:
                    continue
                if not isinstance(value, list) or len(value) != n_points:
                    raise _FileError(f"asv result file {path!r}: benchmark {name!r} column "
                                     f"{key!r} does not have one entry per parameter point")
                if key == "samples":
                    value = [len(s) if isinstance(s, list) else None for s in value]
                elif not all(v is None or _is_number(v) for v in value):
                    raise _FileError(f"asv result file {path!r}: benchmark {name!r} column "
                                     f"{key!r} holds something other than numbers")
                per_point[out] = value
            elif key == "started_at":
                per_bench[out] = _js_time(value)
            else:
                per_bench[out] = _cell(value)

        for j, (point, value) in enumerate(zip(points, results)):
            if value is None:
                status = "failed"
            elif isinstance(value, float) and math.isnan(value):
                status = "skipped"
            else:
                status = "ok"
            rec = {"machine": machine["machine"], "_machine": machine, **common,
                   "benchmark": name, "kind": kind, "unit": unit,
                   "_params": dict(zip(names, (_decode_param(p) for p in point))),
                   "value": float("nan") if value is None else value, "status": status}
            for key, values in per_point.items():
                rec[key] = values[j]
            rec.update(per_bench)
            yield rec, names


def _to_frame(records: list[dict], machine_keys: list[str], param_names: list[str]) -> pd.DataFrame:
    stat_keys: list[str] = []
    for rec in records:
        stat_keys += [k for k in rec if k not in stat_keys and not k.startswith("_")
                      and k not in _HEAD + _MIDDLE + _TAIL]
    base = set(_HEAD + _MIDDLE + _TAIL) | _PER_BENCHMARK | set(stat_keys)

    mcols = {k: (f"machine_{k}" if k in base else k) for k in machine_keys if k != "machine"}
    taken = base | set(mcols.values())
    pcols = {p: (f"param_{p}" if p in taken else p) for p in param_names}

    rows = []
    for rec in records:
        row = {k: v for k, v in rec.items() if not k.startswith("_")}
        for k, col in mcols.items():
            row[col] = rec["_machine"].get(k)
        for p, col in pcols.items():
            row[col] = rec["_params"].get(p)
        rows.append(row)

    order = (_HEAD + list(mcols.values()) + _MIDDLE + list(pcols.values()) + _TAIL
             + [k for k in stat_keys if k not in _PER_BENCHMARK]
             + [k for k in ("started_at", "duration", "version") if k in stat_keys])
    typed = set(pcols.values()) | {"number", "repeat", "samples"}
    data = {}
    for col in order:
        values = [row.get(col) for row in rows]
        data[col] = _typed(values) if col in typed else pd.Series(values, dtype=object)
    df = pd.DataFrame(data, columns=order)
    for col in ("date", "started_at"):
        if col in df:
            df[col] = pd.to_datetime(df[col], utc=True)
    df["value"] = df["value"].astype(float)
    for col in order:  # remaining object columns: let pandas infer (str, float)
        if df[col].dtype == object and col not in typed:
            df[col] = df[col].infer_objects()
    df.attrs["param_columns"] = list(pcols.values())
    df.attrs["machine_columns"] = list(mcols.values())
    return df


def _typed(values: list) -> pd.Series:
    """One dtype per column where the values allow it: Int64 for ints, float, boolean, str."""
    col = pd.Series(values, dtype=object)
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if vals and all(isinstance(v, bool) for v in vals):
        return col.astype("boolean")
    if vals and all(isinstance(v, int) and not isinstance(v, bool) and -2**63 <= v < 2**63
                    for v in vals):
        return col.astype("Int64")
    if vals and all(isinstance(v, float) or (isinstance(v, int) and not isinstance(v, bool)
                                             and abs(v) < 2**1000) for v in vals):
        return col.astype(float)
    if vals and all(isinstance(v, str) for v in vals):
        return col.astype("str")
    return col.astype(object)
