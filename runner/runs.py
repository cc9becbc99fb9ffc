"""Shared by runner.compare and runner.reproduce: finding runs in the store, and tables of differences."""
from __future__ import annotations

import argparse
from pathlib import Path

from . import console, tracking

# First in every metric table, in this order; any other metric both runs have follows, sorted.
MAIN_METRICS = ("throughput_mib_s", "iops", "lat_p50_us", "lat_p99_us", "lat_max_us", "elapsed_s", "cpu_util_pct")
# Per-interval series are step metrics: a run's value of one is only its last sample, not worth a delta.
TIME_SERIES_PREFIXES = ("interval_", "system/")
MAX_CHILDREN = 50_000  # MLflow's upper limit for one search_runs page


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `iosweep: error:` line like every other user error."""

    def error(self, message: str):
        console.fail(f"{message} (see {self.prog} --help)")


def store_exists() -> bool:
    uri = tracking.tracking_uri()
    return not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).exists()


def open_client():
    """The MLflow client; a missing sqlite store is a user error, not an empty store to create."""
    if not store_exists():
        console.fail(f"no MLflow store at {tracking.tracking_uri()}: run from the directory that holds "
                     f"outputs/, or set MLFLOW_TRACKING_URI")
    return tracking.client()


def get_run(c, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_run(run_id)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            console.fail(f"no run {run_id!r} in {tracking.tracking_uri()}")
        console.fail(f"cannot read run {run_id!r}: {e.message.splitlines()[0]}")


def is_sweep(run) -> bool:
    return run.data.tags.get("iosweep.sweep") == "true"


def overrides_of(run) -> str:
    """A point's identity within its sweep: its command-line overrides, as the runner tagged them."""
    return run.data.tags.get("iosweep.overrides", "")


def children(c, parent) -> list:
    return c.search_runs([parent.info.experiment_id], max_results=MAX_CHILDREN,
                         filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


def changes(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """`key: old -> new` for every key whose value differs, including keys only one side has."""
    absent = "(absent)"
    return [f"{k}: {old.get(k, absent)} -> {new.get(k, absent)}"
            for k in sorted(old.keys() | new.keys()) if old.get(k, absent) != new.get(k, absent)]


def delta_pct(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "-"
    if a == 0:
        return "n/a" if b != 0 else "+0.0%"
    return f"{(b - a) / a * 100:+.1f}%"


def number(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 1e6 else f"{v:.6g}"  # byte counts in full, not as 8.38861e+06


def table(header: list[str], rows: list[list[str]]) -> str:
    """Plain aligned columns: the first left-aligned, the rest right-aligned (numbers)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
                     for row in [header, *rows])


def metric_table(a: dict[str, float], b: dict[str, float], a_label: str, b_label: str) -> str:
    common = {k for k in a.keys() & b.keys() if not k.startswith(TIME_SERIES_PREFIXES)}
    names = [m for m in MAIN_METRICS if m in common] + sorted(common - set(MAIN_METRICS))
    if not names:
        return "no metrics in common"
    return table(["metric", a_label, b_label, "delta%"],
                 [[n, number(a[n]), number(b[n]), delta_pct(a[n], b[n])] for n in names])


def sweep_table(c, a, b, a_label: str, b_label: str) -> str:
    """One line per point both sweeps ran (matched by overrides): throughput and its change; then the rest."""
    points_a = {overrides_of(r): r for r in children(c, a)}
    points_b = {overrides_of(r): r for r in children(c, b)}
    matched = sorted(points_a.keys() & points_b.keys())
    only_a, only_b = sorted(points_a.keys() - points_b.keys()), sorted(points_b.keys() - points_a.keys())

    def mib_s(run) -> float | None:
        return run.data.metrics.get("throughput_mib_s")  # None for a FAILED point

    rows = [[k or "(defaults)", number(mib_s(points_a[k])), number(mib_s(points_b[k])),
             delta_pct(mib_s(points_a[k]), mib_s(points_b[k]))] for k in matched]
    lines = [table(["point", f"{a_label} MiB/s", f"{b_label} MiB/s", "delta%"], rows)] if rows else []
    lines += [f"only in {a_label}: {k or '(defaults)'}" for k in only_a]
    lines += [f"only in {b_label}: {k or '(defaults)'}" for k in only_b]
    lines.append(f"points matched: {len(matched)}, unmatched: {len(only_a) + len(only_b)} "
                 f"({len(only_a)} only in {a_label}, {len(only_b)} only in {b_label})")
    return "\n".join(lines)
