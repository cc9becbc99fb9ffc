"""What a finished sweep says: tables and findings computed from its points, never canned."""
from __future__ import annotations

import re

import numpy as np

from . import secrets

REFERENCE_ENGINE = "fio"


def overrides_dict(point: dict) -> dict[str, str]:
    return {k: _as_typed(v) for k, v in (o.lstrip("+").split("=", 1) for o in point["overrides"] if "=" in o)}


def _as_typed(value: str) -> str:
    """A value as the user typed it: Hydra's sweeper hands `direct=false` over as False, and
    `engine=null` reaches Hydra quoted ('null') so that it picks conf/engine/null.yaml."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return {"True": "true", "False": "false"}.get(value, value)


def metric_key(text: str) -> str:
    """MLflow metric names allow letters, digits, _ - . space : / only."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", ":", text)


# Keys that label a run without changing what it measures: sweeping trial=1,2,3 measures the same
# points again (interleaved). They are columns of the table, never axes of a finding or a plot; a
# point's trials are aggregated (median, with their range). `seed` is a knob (offsets, data): an axis.
LABELS = ("trial", "study")


def varying_keys(points: list[dict]) -> list[str]:
    """Override keys whose value differs between points: what the sweep actually varied."""
    values: dict[str, set] = {}
    for p in points:
        for k, v in overrides_dict(p).items():
            values.setdefault(k, set()).add(v)
    return [k for k, vs in values.items() if len(vs) > 1 or any(k not in overrides_dict(p) for p in points)]


def by_study(points: list[dict]) -> list[tuple[str | None, list[dict]]]:
    """The points of each study of a hydra/sweeper=studies sweep (label `study=NAME`), in run order;
    [(None, points)] for a plain grid. Each study is a grid of its own: its table, findings and plots."""
    groups: dict[str | None, list[dict]] = {}
    for p in points:
        groups.setdefault(overrides_dict(p).get("study"), []).append(p)
    return list(groups.items()) if len(groups) > 1 or None not in groups else [(None, points)]


def varying_axes(points: list[dict]) -> list[str]:
    """The swept knobs: varying keys that are not labels."""
    return sweep_axes(varying_keys(points))


def sweep_axes(columns: list[str]) -> list[str]:
    return [c for c in columns if c not in LABELS]


def engine_ratios(points: list[dict]) -> list[dict]:
    """For points that differ only in `engine` (and `trial`): each engine's throughput over fio's.

    With several trials (trial=1,2,3 swept so engines alternate), the ratio is the median of the
    per-trial ratios: engines measured back to back share the machine's state at that moment.
    """
    axes = [a for a in varying_axes(points) if a not in ("engine", "trial")]
    groups: dict[tuple, dict[str, dict[str, dict]]] = {}
    for p in points:
        if p["status"] != "FINISHED":
            continue
        ov = overrides_dict(p)
        if "engine" not in ov:
            continue
        key = tuple((a, ov.get(a, "")) for a in axes)
        metrics = dict(p["metrics"], valid=str(p.get("valid", "")).lower() == "true")
        groups.setdefault(key, {}).setdefault(ov.get("trial", "0"), {})[ov["engine"]] = metrics
    rows = []
    for key, trials in groups.items():
        engines = sorted({e for by_engine in trials.values() for e in by_engine} - {REFERENCE_ENGINE})
        for engine in engines:
            pairs = [(t[engine], t[REFERENCE_ENGINE]) for t in trials.values()
                     if engine in t and t.get(REFERENCE_ENGINE, {}).get("throughput_mib_s")]
            if not pairs:
                continue
            med = lambda xs: float(np.median(xs))  # noqa: E731
            ratios = [m["throughput_mib_s"] / ref["throughput_mib_s"] for m, ref in pairs]
            rows.append({"point": secrets.mask_text(" ".join(f"{k}={v}" for k, v in key)) or "(all)", "engine": engine,
                         "trials": len(pairs), "mib_s": med([m["throughput_mib_s"] for m, _ in pairs]),
                         "fio_mib_s": med([ref["throughput_mib_s"] for _, ref in pairs]), "ratio": med(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios),
                         "p99_us": med([m.get("lat_p99_us", np.nan) for m, _ in pairs]),
                         "fio_p99_us": med([ref.get("lat_p99_us", np.nan) for _, ref in pairs]),
                         "valid": all(m["valid"] and ref["valid"] for m, ref in pairs)})
    return rows


def ratio_table(rows: list[dict]) -> str:
    head = ("| point | engine | trials | MiB/s | fio MiB/s | ratio (median) | ratio range | p99 µs | fio p99 µs |\n"
            "|---|---|---:|---:|---:|---:|---|---:|---:|\n")
    return head + "".join(
        f"| {r['point']} | {r['engine']} | {r['trials']} | {r['mib_s']:.1f} | {r['fio_mib_s']:.1f} | "
        f"{r['ratio']:.3f} | {r['ratio_min']:.2f}–{r['ratio_max']:.2f} | {r['p99_us']:.1f} | {r['fio_p99_us']:.1f} |\n"
        for r in rows)


# ---- the sweep summary: one row per point, findings, plots ----------------------------------

KEY_METRICS = ("throughput_mib_s", "iops", "lat_mean_us", "lat_p50_us", "lat_p99_us", "cpu_util_pct", "elapsed_s")
REPEAT_METRICS = ("repeats", "throughput_mib_s_std", "throughput_mib_s_ci95_low", "throughput_mib_s_ci95_high")
# what the device made of the reads (read-ahead, merging): summary.csv columns when the points have them
DEVICE_METRICS = ("device_read_req_kb", "device_read_merges", "device_read_await_ms", "prefetch_issued",
                  "prefetch_used")
NUMERIC_AXES = ("block_kb", "writers", "iodepth", "size_mb", "duration_s", "pattern.read_pct",
                "data.compress_ratio", "data.dedup_ratio", "files_per_writer", "file_kb", "object_mb")
TABLE_METRICS = ("rows_per_s", "file_mib")  # pattern=format_read: what format_ratios compares
APPEND_METRICS = ("records_per_s", "fsyncs", "fsync_p99_us", "write_amplification")  # pattern=append: append_findings
LOAD_METRICS = ("load_gb_s", "load_s", "tensors", "major_faults")  # pattern=model_load: what load_ratios compares
FORMATS = ("binary", "npy", "csv", "parquet")  # data.format, in the order findings name them; binary is the base
KNEE_GAIN = 0.10  # "beyond this block size, throughput gains < 10%"; the same for IOPS per iodepth step
LITTLE_TOLERANCE = 0.15  # Little's law: IOPS x mean latency within 15% of the ops kept in flight
# Settings a plot names when every point shares them (from the points' params), in this order.
SHOWN_SETTINGS = ("pattern", "pattern.read_pct", "engine", "target", "direct", "cache", "end_fsync", "block_kb",
                  "iodepth", "writers", "size_mb", "duration_s", "ramp_s", "repeats", "data", "data.compress_ratio",
                  "data.dedup_ratio", "seed", "point", "experiment", "files_per_writer", "file_kb", "object_mb")
INVALID_LABEL = "invalid (not storage truth)"


def _num(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def _has_repeats(table: list[dict]) -> bool:
    return any(r.get("repeats", 1) > 1 for r in table)


def rows(points: list[dict]) -> tuple[list[str], list[dict]]:
    """The table's columns (swept axes and labels such as trial) and one row per run: its value on
    each, status, validity, key metrics (and the repeat statistics when it had repeats)."""
    columns = varying_keys(points)
    axes = sweep_axes(columns)
    out = []
    for p in points:
        ov = overrides_dict(p)
        # masked here, at the source of every table, finding and plot label (a PNG cannot be masked later)
        row = {a: secrets.mask_value(a, ov.get(a, "")) for a in columns}
        row["status"] = p["status"]
        row["valid"] = str(p.get("valid", "")).lower()
        row.update({m: p["metrics"].get(m, float("nan")) for m in KEY_METRICS})
        row.update({m: p["metrics"][m] for m in REPEAT_METRICS if m in p["metrics"]})
        row.update({m: p["metrics"][m] for m in DEVICE_METRICS if m in p["metrics"]})
        row.update({m: p["metrics"].get(m, float("nan")) for m in TABLE_METRICS})  # nan: not a format_read run
        row.update({m: p["metrics"].get(m, float("nan")) for m in LOAD_METRICS})  # nan: not a model_load run
        row.update({m: p["metrics"].get(m, float("nan")) for m in APPEND_METRICS})  # nan: not an append run
        row["error"] = secrets.mask_text(p.get("error") or "")
        row["run_id"] = p.get("run_id") or ""
        # not columns: which point the run measured (trials of one point share it), and its config
        row["_point"] = tuple((a, row[a]) for a in axes)
        row["_params"] = secrets.mask_mapping(p.get("params") or {})
        row["_overrides"] = secrets.mask_mapping(ov)
        out.append(row)
    return columns, out


def _csv_fields(columns: list[str], table: list[dict]) -> list[str]:
    extra = list(REPEAT_METRICS) if _has_repeats(table) else []
    extra += [m for m in DEVICE_METRICS if any(m in r for r in table)]
    extra += [m for m in TABLE_METRICS if any(r.get(m) == r.get(m) for r in table)]  # nan != nan: no table run
    extra += [m for m in LOAD_METRICS if any(r.get(m) == r.get(m) for r in table)]
    return columns + ["status", "valid", *KEY_METRICS, *extra, "error", "run_id"]


def write_csv(path, columns: list[str], table: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_csv_fields(columns, table), extrasaction="ignore", restval="")
        w.writeheader()
        w.writerows(table)


def markdown_table(columns: list[str], table: list[dict]) -> str:
    """One line per run; with repeats also std and 95% CI; with trials also the median per point."""
    repeats = _has_repeats(table)
    cols = columns + ["status", "MiB/s", "IOPS", "p50 µs", "p99 µs", "valid"]
    if repeats:
        cols[-1:-1] = ["repeats", "std MiB/s", "95% CI MiB/s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        vals = [str(r[a]) for a in columns] + [r["status"]]
        if r["status"] == "FINISHED":
            vals += [f"{r['throughput_mib_s']:.1f}", f"{r['iops']:.0f}", f"{r['lat_p50_us']:.1f}",
                     f"{r['lat_p99_us']:.1f}"]
            if repeats:
                vals += [_repeat_cells(r)]
            vals += [r["valid"]]
        else:
            vals += ["", "", "", ""] + (["", "", ""] if repeats else []) + [r["error"]]
        lines.append("| " + " | ".join(vals) + " |")
    text = "\n".join(lines)
    axes = sweep_axes(columns)
    if len(axes) < len(columns):
        text += "\n\n" + _median_table(axes, [c for c in columns if c not in axes], table)
    return text


def _repeat_cells(r: dict) -> str:
    if "throughput_mib_s_std" not in r:
        return " | ".join([f"{r.get('repeats', 1):.0f}", "", ""])
    low, high = r["throughput_mib_s_ci95_low"], r["throughput_mib_s_ci95_high"]
    ci = f"{low:.1f} – {high:.1f}" + (" (below 0: too few repeats or too noisy)" if low < 0 else "")
    return " | ".join([f"{r['repeats']:.0f}", f"{r['throughput_mib_s_std']:.1f}", ci])


def _median_table(axes: list[str], labels: list[str], table: list[dict]) -> str:
    agg = aggregate(table)
    head = (f"Per point, median over its {'/'.join(labels)} runs (valid runs only; range = lowest – highest):\n\n"
            "| " + " | ".join(axes + ["runs", "MiB/s (median)", "range MiB/s", "IOPS (median)", "p99 µs (median)"])
            + " |\n|" + "---|" * (len(axes) + 5))
    body = [f"| {' | '.join(str(r[a]) for a in axes)} | {r['_n']} | {r['throughput_mib_s']:.1f} | "
            f"{r['_low']:.1f} – {r['_high']:.1f} | {r['iops']:.0f} | {r['lat_p99_us']:.1f} |" for r in agg]
    return head + "\n" + "\n".join(body) if body else head + "\n(no valid runs)"


def _finished(table):
    return [r for r in table if r["status"] == "FINISHED" and r["throughput_mib_s"] == r["throughput_mib_s"]]


def _valid(table):
    return [r for r in _finished(table) if r["valid"] == "true"]


def aggregate(table: list[dict], valid_only: bool = True, metric: str = "throughput_mib_s") -> list[dict]:
    """One row per point (runs that differ only in a label such as trial are one point).

    The row is the point's median run by `metric` (statistics.median_low: a value that was
    measured, the lower middle for an even count), with `_n` runs and their `metric` range
    `_low`..`_high`. valid_only=False also keeps invalid runs; the point is then valid only if all
    its runs are.
    """
    from statistics import median_low

    groups: dict[tuple, list[dict]] = {}
    for r in (_valid(table) if valid_only else _finished(table)):
        if r[metric] == r[metric]:  # a run without this metric (nan) has no say in its median
            groups.setdefault(r["_point"], []).append(r)
    out = []
    for runs in groups.values():
        values = [r[metric] for r in runs]
        middle = next(r for r in runs if r[metric] == median_low(values))
        valid = "true" if all(r["valid"] == "true" for r in runs) else "false"
        out.append(dict(middle, valid=valid, _n=len(runs), _low=min(values), _high=max(values)))
    return out


def best_point(table: list[dict], metric: str = "throughput_mib_s") -> dict | None:
    """The valid point with the highest (median) `metric`: its median run; None when no point is
    valid. An invalid point (page cache, O_DIRECT ignored, null engine) is never "best"."""
    agg = aggregate(table, metric=metric)
    return max(agg, key=lambda r: r[metric]) if agg else None


def _series(table: list[dict], axes: list[str], x: str,
            valid_only: bool = True) -> dict[tuple, list[tuple[float, dict]]]:
    """Group the points by every other swept axis; each group sorted along numeric axis x."""
    others = [a for a in axes if a != x]
    groups: dict[tuple, list] = {}
    for r in aggregate(table, valid_only=valid_only):
        xv = _num(r[x])
        if isinstance(xv, float):
            groups.setdefault(tuple((a, r[a]) for a in others), []).append((xv, r))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in groups.items()}


def _natural(key: tuple) -> tuple:
    """Sort axis values as numbers where they are numbers (4 < 64 < 1024)."""
    return tuple((0, v, "") if isinstance(v, float) else (1, 0.0, str(v)) for v in (_num(b) for _, b in key))


def _label(key: tuple) -> str:
    return " ".join(f"{a}={v}" for a, v in key) or "all points"


def _where(axes: list[str], r: dict) -> str:
    where = " ".join(f"{a}={r[a]}" for a in axes) or "the only point"
    if r.get("_n", 1) > 1:
        where += f" (median of {r['_n']} runs, range {r['_low']:.1f}–{r['_high']:.1f})"
    return where


def knee(series: list[tuple[float, dict]], what: str = "block size", unit: str = "KiB",
         noun: str = "blocks") -> tuple[float | None, str]:
    """The smallest block (or object: what, unit, noun) size after which NO later step gains >= KNEE_GAIN,
    and the finding.

    A plateau followed by a jump is not a knee: "gains resume at Y".
    """
    def gain(a: dict, b: dict) -> float:
        return b["throughput_mib_s"] / a["throughput_mib_s"] - 1 if a["throughput_mib_s"] > 0 else float("inf")

    steps = [(x0, x1, gain(r0, r1)) for (x0, r0), (x1, r1) in zip(series, series[1:])]
    big = [i for i, (_, _, g) in enumerate(steps) if g >= KNEE_GAIN]
    pct = f"{100 * KNEE_GAIN:.0f}%"
    if not big:
        return series[0][0], f"Throughput gains < {pct} at every {what} step from {series[0][0]:g} {unit}"
    last_big = big[-1]
    if last_big == len(steps) - 1:  # the last step still gains
        flat = [s for s in steps[:last_big] if s[2] < KNEE_GAIN]
        if not flat:
            return None, f"Throughput still gains >= {pct} at every {what} step up to {series[-1][0]:g} {unit}"
        x0, x1, g = steps[last_big]
        return None, (f"No knee: gains < {pct} from {flat[0][0]:g} to {flat[0][1]:g} {unit}, but gains resume at "
                      f"{x1:g} {unit} (+{100 * g:.0f}% over {x0:g} {unit})")
    k = steps[last_big][1]
    return k, f"Beyond {k:g} {unit} {noun} throughput gains < {pct} per step"


def depth_knee(series: list[tuple[float, dict]]) -> str:
    """Where more ops in flight stop paying: the smallest iodepth after which no step gains >=
    KNEE_GAIN in IOPS, with what the steps beyond it cost in p99 latency."""
    def gain(a: dict, b: dict) -> float:
        return b["iops"] / a["iops"] - 1 if a["iops"] > 0 else float("inf")

    steps = [(x0, x1, gain(r0, r1)) for (x0, r0), (x1, r1) in zip(series, series[1:])]
    big = [i for i, (_, _, g) in enumerate(steps) if g >= KNEE_GAIN]
    pct = f"{100 * KNEE_GAIN:.0f}%"
    if big and big[-1] == len(steps) - 1:
        return f"IOPS still gain >= {pct} at iodepth {steps[-1][1]:g}: the device takes more depth than this sweep gave"
    k = steps[big[-1]][1] if big else series[0][0]
    at_knee = next(r for x, r in series if x == k)
    last_x, last = series[-1]
    p99_up = last["lat_p99_us"] / at_knee["lat_p99_us"] if at_knee["lat_p99_us"] > 0 else float("nan")
    return (f"Beyond iodepth {k:g} IOPS gain < {pct} per step ({at_knee['iops']:.0f} at {k:g}, {last['iops']:.0f} at "
            f"{last_x:g}) while p99 latency grows {p99_up:.1f}x ({at_knee['lat_p99_us']:.0f} -> "
            f"{last['lat_p99_us']:.0f} µs)")


def littles_law(series: list[tuple[float, dict]]) -> list[str]:
    """Little's law, L = IOPS x mean latency, against the ops the engine kept in flight
    (writers x iodepth): a point far below it did not keep its queue full (the submitting loop,
    not the device, was the limit); far above, the latency misses time the op was in flight."""
    out = []
    for depth, r in series:
        writers = _num(str(r.get("writers") or (r.get("_params") or {}).get("writers") or 1))
        lat = r.get("lat_mean_us", float("nan"))
        if not lat == lat or r["iops"] <= 0 or not isinstance(writers, float):
            continue
        in_flight = r["iops"] * lat / 1e6
        expected = depth * writers
        if abs(in_flight / expected - 1) > LITTLE_TOLERANCE:
            out.append(f"Little's law at iodepth {depth:g}: IOPS x mean latency = {in_flight:.1f} ops in flight, "
                       f"not {expected:g} (the queue was not kept full: the submitting side, not the device, limited it)"
                       if in_flight < expected else
                       f"Little's law at iodepth {depth:g}: IOPS x mean latency = {in_flight:.1f} ops in flight, more "
                       f"than the {expected:g} issued: latency counts time outside the device queue")
    if series and not out:
        checked = ", ".join(f"{d:g}" for d, r in series)
        out.append(f"Little's law holds within {100 * LITTLE_TOLERANCE:.0f}% at iodepth {checked}: IOPS x mean latency "
                   "= the ops kept in flight")
    return out


def matched_points(rows: list[dict], axes: list[str], axis: str) -> list[tuple[tuple, dict[str, dict]]]:
    """Aggregated rows grouped by their values on every axis but `axis`, each group keyed by its value
    of `axis`, groups in natural order: the matched points an A/B finding compares."""
    groups: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        groups.setdefault(tuple((a, r[a]) for a in axes if a != axis), {})[r[axis]] = r
    return sorted(groups.items(), key=lambda kv: _natural(kv[0]))


def against_baseline(rows: list[dict], axes: list[str], axis: str, baseline: str, order: tuple, metric: str):
    """Per group of matched points (matched_points) holding values of `axis` besides `baseline`:
    (where, rows by value, the baseline's row or None when it has no run with metric > 0, the other
    values in `order`, values not in it last)."""
    for key, by_value in matched_points(rows, axes, axis):
        rest = sorted((v for v in by_value if v != baseline), key=lambda v: (order + (v,)).index(v))
        if rest:
            base = by_value.get(baseline)
            yield (f" ({_label(key)})" if key else ""), by_value, base if base and base[metric] > 0 else None, rest


def axis_ratios(table: list[dict], axes: list[str], axis: str) -> list[str]:
    """Each value of `axis` against its first value (engine=mmap against engine=sync, target=tmpfs
    against target=local): the median of the throughput ratios over points that match on every other
    axis, from valid runs."""
    matched = [{k: r["throughput_mib_s"] for k, r in by.items()} for _, by in matched_points(aggregate(table), axes, axis)]
    values = list(dict.fromkeys(r[axis] for r in _finished(table)))
    out = []
    for value in values[1:]:
        ratios = [v[value] / v[values[0]] for v in matched if value in v and v.get(values[0], 0) > 0]
        if ratios:
            out.append(f"{axis}={value} is {np.median(ratios):.2f}x {axis}={values[0]} throughput (median over "
                       f"{len(ratios)} matched points, range {min(ratios):.2f}-{max(ratios):.2f})")
    return out


def format_ratios(table: list[dict], axes: list[str]) -> list[str]:
    """pattern=format_read swept over data.format: each format's decoded rows/s against binary's
    (the raw array: the fastest a table can be read) at the same other axes, from valid runs."""
    out = []  # only format_read runs have rows_per_s
    rows = aggregate(table, metric="rows_per_s")
    for where, by_format, base, rest in against_baseline(rows, axes, "data.format", "binary", FORMATS, "rows_per_s"):
        if base is None:
            out.append(f"Formats{where}: no valid data.format=binary run to compare {', '.join(rest)} with")
            continue
        for f in rest:
            r = by_format[f]
            out.append(f"{f} {r['rows_per_s'] / base['rows_per_s']:.2f}x of binary rows/s "
                       f"({r['rows_per_s']:,.0f} vs {base['rows_per_s']:,.0f} rows/s; "
                       f"{r['throughput_mib_s']:.1f} vs {base['throughput_mib_s']:.1f} MiB/s of a file "
                       f"{r['file_mib'] / base['file_mib']:.2f}x the size){where}")
    return out


POLICIES = ("none", "every", "interval", "dsync")  # append.fsync, in the order the durability findings name them


def _policy(r: dict) -> str:
    """An append run's durability policy as it reads: fsync=every/100, fsync=dsync, ..."""
    params = r["_params"]
    p = params.get("append.fsync") or ("end" if str(params.get("end_fsync", "True")).lower() == "true" else "none")
    return f"fsync=every/{params.get('append.fsync_every')}" if p == "every" else \
        f"fsync=interval/{params.get('append.fsync_interval_ms')}ms" if p == "interval" else f"fsync={p}"


def append_findings(table: list[dict], axes: list[str]) -> list[str]:
    """pattern=append (seed 004's matrix): records/s of every valid cell, then each durability policy's
    records/s against fsync=end at the same other axes (what durability costs), from valid runs."""
    cells = sorted(aggregate(table, metric="records_per_s"), key=lambda r: _natural(r["_point"]))
    if not cells:
        return []
    out = []
    for r in cells:
        extra = (f", {r['fsyncs']:.0f} fsyncs, p99 {r['fsync_p99_us']:.0f} us" if r["fsyncs"] else "") + \
            (f", write amplification {r['write_amplification']:.2f}" if r["write_amplification"] == r["write_amplification"]
             else "")
        out.append(f"Append {_label(r['_point'])}: {r['records_per_s']:,.0f} records/s "
                   f"({r['throughput_mib_s']:.1f} MiB/s{extra})")
    if "append.fsync" not in axes:
        return out
    for where, by_policy, base, rest in against_baseline(cells, axes, "append.fsync", "end", POLICIES, "records_per_s"):
        if base is None:
            out.append(f"Durability{where}: no valid append.fsync=end run to compare {', '.join(rest)} with")
            continue
        out.append(f"Durability cost{where}: " + "; ".join(
            f"{_policy(by_policy[p])}: {by_policy[p]['records_per_s'] / base['records_per_s']:.2f}x of fsync=end "
            f"records/s ({by_policy[p]['records_per_s']:,.0f} vs {base['records_per_s']:,.0f})" for p in rest))
    return out


def _load_variant(axes: list[str], r: dict) -> str:
    """A model load's variant as the knobs that made it, e.g. `engine=mmap hint=willneed` (a swept
    named point is replaced by the engine, hint and prefetch it sets)."""
    params = r["_params"]
    parts = [f"engine={params.get('engine', '?')}", f"hint={params.get('hint', 'none')}"]
    if str(params.get("prefetch.blocks", 0)) not in ("0", ""):
        parts.append(f"prefetch.blocks={params['prefetch.blocks']}")
    return " ".join(parts + [f"{a}={r[a]}" for a in axes if a not in ("point", "engine", "hint", "prefetch.blocks")])


def load_ratios(table: list[dict], axes: list[str]) -> list[str]:
    """pattern=model_load: each variant's median load GB/s against the first variant's (the baseline:
    the sweep's first point), from valid runs only, with what the device and the page faults saw."""
    order = list(dict.fromkeys(r["_point"] for r in _finished(table) if r.get("load_gb_s") == r.get("load_gb_s")))
    if len(order) < 2:
        return []
    by_point = {r["_point"]: r for r in aggregate(table, metric="load_gb_s")}
    first = next(r for r in _finished(table) if r["_point"] == order[0])
    base = by_point.get(order[0])
    if base is None or base["load_gb_s"] <= 0:
        return [f"Model load: no valid run of the baseline ({_load_variant(axes, first)}) to compare the other "
                "variants with"]

    def seen(r):
        faults = r.get("major_faults", float("nan"))
        return (f"device req {r.get('device_read_req_kb', float('nan')):.0f} KiB"
                + (f", {faults:.0f} major faults" if faults == faults else ""))

    out = [f"Model load baseline {_load_variant(axes, base)}: {base['load_gb_s']:.3f} GB/s, {base['load_s']:.2f} s "
           f"(median of {base['_n']} valid runs; {seen(base)})"]
    for point in order[1:]:
        r = by_point.get(point)
        if r is None:
            name = _load_variant(axes, next(x for x in _finished(table) if x["_point"] == point))
            out.append(f"{name}: no valid run")
            continue
        out.append(f"{_load_variant(axes, r)}: {r['load_gb_s'] / base['load_gb_s']:.2f}x of baseline load GB/s "
                   f"({r['load_gb_s']:.3f} GB/s, {r['load_s']:.2f} s; {seen(r)})")
    return out


def refill_ratios(table: list[dict], axes: list[str]) -> list[str]:
    """data.refill swept (experiment=streaming_write, seeds 001/002): iosweep's throughput writing
    fresh dgen-py data (true) over writing one buffer again and again (false), per point: the median
    of the per-trial ratios, from valid runs, with the CPU each used. fio fills its own buffers
    (data.refill does not apply to it): its runs are the reference of engine_ratios instead."""
    if "data.refill" not in axes:
        return []
    others = [a for a in axes if a != "data.refill"]
    groups: dict[tuple, dict[str, dict[str, dict]]] = {}
    for r in _valid(table):
        if r.get("engine", r["_params"].get("engine")) == REFERENCE_ENGINE:
            continue
        key = tuple((a, r[a]) for a in others)
        groups.setdefault(key, {}).setdefault(r.get("trial", "0"), {})[r["data.refill"]] = r
    out = []
    for key, trials in sorted(groups.items(), key=lambda kv: _natural(kv[0])):
        pairs = [(t["true"], t["false"]) for t in trials.values() if "true" in t and "false" in t
                 and t["false"]["throughput_mib_s"] > 0]
        if not pairs:
            continue
        ratios = [f["throughput_mib_s"] / s["throughput_mib_s"] for f, s in pairs]
        med = lambda xs: float(np.median(xs))  # noqa: E731
        out.append(f"Fresh dgen-py data (data.refill=true) {med(ratios):.2f}x the throughput of one buffer rewritten "
                   f"(data.refill=false) at {_label(key)}: {med([f['throughput_mib_s'] for f, _ in pairs]):.1f} vs "
                   f"{med([s['throughput_mib_s'] for _, s in pairs]):.1f} MiB/s, CPU "
                   f"{med([f['cpu_util_pct'] for f, _ in pairs]):.0f}% vs {med([s['cpu_util_pct'] for _, s in pairs]):.0f}% "
                   f"(median of {len(pairs)} trials, ratio range {min(ratios):.2f}–{max(ratios):.2f})")
    return out


def findings(columns: list[str], table: list[dict], ratios: list[dict]) -> list[str]:
    """What the sweep says, from the valid points of its table and its engine_ratios()."""
    axes = sweep_axes(columns)
    out = []
    finished, valid = _finished(table), _valid(table)
    left_out = len(finished) - len(valid)
    if left_out:
        out.append(f"Findings use the {len(valid)} valid runs only: {left_out} of {len(finished)} finished runs are "
                   "not storage truth (page cache, O_DIRECT ignored, null engine…; see each run's "
                   "iosweep.warnings) and were left out")
    best = best_point(table)
    if best:
        out.append(f"Best throughput: {best['throughput_mib_s']:.1f} MiB/s at {_where(axes, best)}")
        top_iops = best_point(table, "iops")
        if top_iops and top_iops["iops"] > best["iops"]:
            out.append(f"Best IOPS: {top_iops['iops']:.0f} at {_where(axes, top_iops)}")
    elif finished:
        out.append(f"No best point: none of the {len(finished)} finished runs is storage truth")
    if "writers" in axes:
        for key, series in _series(table, axes, "writers").items():
            one = next((r for x, r in series if x == 1), None)
            if not one or len(series) < 2 or one["throughput_mib_s"] <= 0:
                continue
            n, top = max(series, key=lambda t: t[1]["throughput_mib_s"])
            last_n, last = series[-1]
            if n == 1:
                out.append(f"No scaling ({_label(key)}): the peak {top['throughput_mib_s']:.1f} MiB/s is at 1 writer; "
                           f"{last_n:g} writers gave {last['throughput_mib_s'] / top['throughput_mib_s']:.2f}x that")
                continue
            speedup = top["throughput_mib_s"] / one["throughput_mib_s"]
            line = (f"Scaling 1 -> {n:g} writers ({_label(key)}): {speedup:.2f}x throughput, "
                    f"efficiency {100 * speedup / n:.0f}% (peak {top['throughput_mib_s']:.1f} MiB/s at {n:g} writers)")
            if last_n != n:
                line += (f"; more writers did not help: {last_n:g} writers gave "
                         f"{last['throughput_mib_s'] / top['throughput_mib_s']:.2f}x the peak")
            out.append(line)
    if "block_kb" in axes:
        for key, series in _series(table, axes, "block_kb").items():
            if len(series) >= 2:
                out.append(f"{knee(series)[1]} ({_label(key)})")
    if "object_mb" in axes:  # target=s3: the object size plays the block size's part
        for key, series in _series(table, axes, "object_mb").items():
            if len(series) >= 2:
                out.append(f"{knee(series, 'object size', 'MiB', 'objects')[1]} ({_label(key)})")
    if "iodepth" in axes:
        for key, series in _series(table, axes, "iodepth").items():
            if len(series) >= 2:
                out.append(f"{depth_knee(series)} ({_label(key)})")
            out += [f"{line} ({_label(key)})" for line in littles_law(series)]
    if "files_per_writer" in axes:  # seed 000's small vs large files: each file count against one file
        for key, series in _series(table, axes, "files_per_writer").items():
            one = next((r for x, r in series if x == 1), None)
            if one and one["throughput_mib_s"] > 0 and len(series) > 1:
                out.append(f"Small files ({_label(key)}): one file per writer {one['throughput_mib_s']:.1f} MiB/s; "
                           + ", ".join(f"{x:g} files {r['throughput_mib_s']:.1f} MiB/s "
                                       f"({r['throughput_mib_s'] / one['throughput_mib_s']:.2f}x)"
                                       for x, r in series if x != 1))
    if "pattern" in axes:
        matched = [{k: r["throughput_mib_s"] for k, r in by.items()} for _, by in matched_points(aggregate(table), axes,
                                                                                              "pattern")]
        for seq, rnd in (("seq_read", "rand_read"), ("seq_write", "rand_write")):
            speedups = [v[seq] / v[rnd] for v in matched if seq in v and rnd in v and v[rnd] > 0]
            if speedups:
                out.append(f"{seq} is {np.median(speedups):.1f}x {rnd} (median over {len(speedups)} matched points)")
    for axis in ("engine", "target"):  # the notebook's mmap-vs-read and storage-type comparisons
        if axis in axes and not (axis == "engine" and any(r[axis] == "fio" for r in table)):  # fio: engine_ratios
            out += axis_ratios(table, axes, axis)
    if "data.format" in axes:
        out += format_ratios(table, axes)
    out += load_ratios(table, axes)
    out += append_findings(table, axes)
    out += refill_ratios(table, axes)
    for r in table:
        if r["status"] != "FINISHED":
            out.append(f"FAILED: {' '.join(f'{a}={r[a]}' for a in columns)}: {r['error']}")
    for r in ratios:
        out.append(f"{r['engine']} / fio at {r['point']}: {r['ratio']:.3f} (median of {r['trials']})"
                   + ("" if r.get("valid", True) else ": compares the engines, not the storage (not storage truth)"))
    return out


# ---- plots ----------------------------------------------------------------------------------

def fixed_settings(columns: list[str], table: list[dict], sweep_dir=None) -> str:
    """The settings every point shares and the sweep did not vary, e.g. `pattern=seq_write direct=false`.

    From the points' params (the resolved config), else from the result.json of each point in
    sweep_dir; without either, the overrides they all share.
    """
    import json
    from pathlib import Path

    swept = set(columns)
    params = [r["_params"] for r in table if r.get("_params")]
    if not params and sweep_dir is not None:
        for f in sorted(Path(sweep_dir).glob("*/result.json")):
            try:
                params.append(json.loads(f.read_text())["params"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a point without a readable record: its settings are not known
    if params:
        shared = {k: v for k, v in params[0].items() if all(p.get(k) == v for p in params[1:])}
        if shared.get("pattern") != "mixed":
            shared.pop("pattern.read_pct", None)  # only the mixed pattern reads it
        keys = [k for k in SHOWN_SETTINGS if k in shared]
    else:
        ovs = [r["_overrides"] for r in table]
        shared = {k: v for k, v in (ovs[0] if ovs else {}).items() if all(o.get(k) == v for o in ovs[1:])}
        keys = sorted(shared)
    shared = {k: {"True": "true", "False": "false"}.get(v, v) for k, v in shared.items()}  # as typed on the CLI
    return secrets.mask_text(" ".join(f"{k}={shared[k]}" for k in keys  # a PNG cannot be masked later
                                      if k not in swept and k.split(".")[0] not in swept
                                      and shared[k] not in ("null", "None", None)))


def _titles(fig, ax, title: str, fixed: str) -> None:
    import textwrap

    fig.suptitle(title, fontsize=11)
    if fixed:  # about 13 characters of 7.5 pt text per inch of figure
        width = int(fig.get_figwidth() * 13)
        ax.set_title("\n".join(textwrap.wrap("held fixed: " + fixed, width)), fontsize=7.5, color="0.3")


def _invalid_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], color="red", marker="x", linestyle="none", markersize=9, markeredgewidth=2,
                  label=INVALID_LABEL)


def plots(columns: list[str], table: list[dict], out_dir) -> list:
    """PNGs chosen from the swept axes; returns their paths. Invalid points are marked (red x),
    the settings held fixed are named under the title, and an axis whose values are not numbers
    (direct=false,true, engine=sync,fio, pattern=…) gets a bar chart."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = sweep_axes(columns)
    out_dir, made = Path(out_dir), []
    fixed = fixed_settings(columns, table, out_dir)

    def save(fig, name):
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    def line_plot(x: str, metric: str, ylabel: str, name: str, logy=False, transform=None):
        series = _series(table, axes, x, valid_only=False)
        if not series or all(len(s) < 2 for s in series.values()):
            return
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        any_invalid = False
        for key, pts in sorted(series.items(), key=lambda kv: _natural(kv[0])):
            xs = [p[0] for p in pts]
            ys = transform(pts) if transform else [p[1][metric] for p in pts]
            line, = ax.plot(xs, ys, marker="o", label=_label(key))
            bad = [(xv, yv) for (xv, r), yv in zip(pts, ys) if r["valid"] != "true"]
            if bad:
                any_invalid = True
                # hollow marker in the line's colour plus a red x: the value is shown, but not as truth
                ax.plot(*zip(*bad), linestyle="none", marker="o", markersize=9, markerfacecolor="white",
                        markeredgecolor=line.get_color())
                ax.plot(*zip(*bad), linestyle="none", marker="x", color="red", markersize=9, markeredgewidth=2)
        xs_all = sorted({p[0] for s in series.values() for p in s})
        if xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 8:
            ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xticks(xs_all)
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(x + {"block_kb": " (KiB)", "object_mb": " (MiB)"}.get(x, ""))
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        handles, _ = ax.get_legend_handles_labels()
        ax.legend(handles=handles + ([_invalid_handle()] if any_invalid else []), fontsize=8)
        _titles(fig, ax, f"{ylabel} vs {x}", fixed)
        save(fig, name)

    numeric = [a for a in axes if all(isinstance(_num(r[a]), float) for r in _finished(table))]
    if "block_kb" in numeric:
        line_plot("block_kb", "throughput_mib_s", "throughput (MiB/s)", "throughput_vs_block_kb.png")
        line_plot("block_kb", "iops", "IOPS", "iops_vs_block_kb.png", logy=True)
        line_plot("block_kb", "lat_p99_us", "p99 latency (µs)", "p99_vs_block_kb.png", logy=True)
    if "object_mb" in numeric:  # target=s3: object sizes as block sizes
        line_plot("object_mb", "throughput_mib_s", "throughput (MiB/s)", "throughput_vs_object_mb.png")
        line_plot("object_mb", "lat_p99_us", "p99 latency (µs)", "p99_vs_object_mb.png", logy=True)
    if "writers" in numeric:
        def efficiency(pts):
            base = next((r["throughput_mib_s"] for x, r in pts if x == 1), None)
            return [100 * r["throughput_mib_s"] / (x * base) if base else float("nan") for x, r in pts]
        line_plot("writers", "throughput_mib_s", "scaling efficiency (%)", "scaling_efficiency_vs_writers.png",
                  transform=efficiency)
    if "iodepth" in numeric:
        line_plot("iodepth", "iops", "IOPS", "iops_vs_iodepth.png")
        line_plot("iodepth", "lat_p99_us", "p99 latency (µs)", "p99_vs_iodepth.png", logy=True)
    for x in numeric:
        if x not in ("block_kb", "writers", "iodepth", "object_mb"):
            line_plot(x, "throughput_mib_s", "throughput (MiB/s)", f"throughput_vs_{x}.png")
    for x in axes:
        if x not in numeric:
            made.extend(_bars(x, axes, table, out_dir, plt, fixed))
    heat = [a for a in numeric if a in NUMERIC_AXES]
    if len(heat) >= 2:
        made += _heatmap(heat[0], heat[1], axes, table, out_dir, plt, fixed)
    return made


def _bars(x: str, axes: list[str], table: list[dict], out_dir, plt, fixed: str) -> list:
    """A/B (or A/B/C…) bars for a non-numeric axis: one bar per value of x, one colour per
    combination of the other axes; the whisker spans a point's runs (trials); invalid bars are
    hollow with a red x."""
    from pathlib import Path

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    others = [a for a in axes if a != x]
    points = aggregate(table, valid_only=False)
    if not points:
        return []
    xs = sorted({r[x] for r in points}, key=lambda v: _natural(((x, v),)))
    keys = sorted({tuple((a, r[a]) for a in others) for r in points}, key=_natural)
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + 0.9 * len(xs) * max(1, len(keys) / 2)), 4.6))
    any_invalid = False
    for j, key in enumerate(keys):
        color = f"C{j % 10}"
        for i, xv in enumerate(xs):
            r = next((p for p in points if p[x] == xv and tuple((a, p[a]) for a in others) == key), None)
            if r is None:
                continue
            pos = i - 0.4 + width * (j + 0.5)
            ok = r["valid"] == "true"
            ax.bar(pos, r["throughput_mib_s"], width * 0.9, color=color if ok else "white", edgecolor=color,
                   hatch=None if ok else "//", linewidth=1.5)
            if r["_n"] > 1:
                ax.errorbar(pos, r["throughput_mib_s"], yerr=[[r["throughput_mib_s"] - r["_low"]],
                                                              [r["_high"] - r["throughput_mib_s"]]],
                            color="black", capsize=3, linewidth=1)
            ax.annotate(f"{r['throughput_mib_s']:.0f}", (pos, r["throughput_mib_s"]), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
            any_invalid |= not ok
    long = sum(len(str(v)) for v in xs) > 8 * len(xs)  # e.g. pattern names: tilt them to stay apart
    ax.set_xticks(range(len(xs)), xs, rotation=20 if long else 0, ha="right" if long else "center")
    ax.set_xlabel(x)
    trials = any(p["_n"] > 1 for p in points)
    ax.set_ylabel("throughput (MiB/s)" + (", median of runs" if trials else ""))
    ax.grid(True, axis="y", alpha=0.3)
    handles = [Patch(facecolor=f"C{j % 10}", label=_label(key)) for j, key in enumerate(keys)] if others else []
    if trials:
        handles.append(Line2D([], [], color="black", marker="_", markersize=8, label="range of runs (trials)"))
    if any_invalid:
        handles += [Patch(facecolor="white", edgecolor="0.3", hatch="//", label=INVALID_LABEL)]
    if handles:
        ax.legend(handles=handles, fontsize=8)
    _titles(fig, ax, f"throughput by {x}", fixed)
    fig.tight_layout()
    path = Path(out_dir) / f"throughput_by_{x.replace('.', '_')}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _heatmap(x: str, y: str, axes, table, out_dir, plt, fixed: str) -> list:
    others = [a for a in axes if a not in (x, y)]
    groups: dict[tuple, dict] = {}
    for r in aggregate(table, valid_only=False):
        groups.setdefault(tuple((a, r[a]) for a in others), {})[(_num(r[x]), _num(r[y]))] = r
    made = []
    for i, (key, cells) in enumerate(sorted(groups.items(), key=lambda kv: _natural(kv[0]))):
        xs, ys = sorted({k[0] for k in cells}), sorted({k[1] for k in cells})
        grid = np.full((len(ys), len(xs)), np.nan)
        for (xv, yv), r in cells.items():
            grid[ys.index(yv), xs.index(xv)] = r["throughput_mib_s"]
        fig, ax = plt.subplots(figsize=(7, 5))
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        any_invalid = False
        for (xv, yv), r in cells.items():
            xi, yi = xs.index(xv), ys.index(yv)
            ok = r["valid"] == "true"
            ax.text(xi, yi, f"{r['throughput_mib_s']:.0f}" + ("" if ok else "\n✗ invalid"), ha="center",
                    va="center", color="white" if ok else "red", fontsize=8, fontweight="normal" if ok else "bold")
            any_invalid |= not ok
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        if any_invalid:
            ax.legend(handles=[_invalid_handle()], fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.12))
        title = "throughput (MiB/s)" + (f": {_label(key)}" if key else "")
        _titles(fig, ax, title, fixed)
        fig.colorbar(im, ax=ax, label="MiB/s")
        fig.tight_layout()
        path = out_dir / (f"heatmap_{x}_{y}.png" if len(groups) == 1 else f"heatmap_{x}_{y}_{i}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made
