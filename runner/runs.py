"""python -m runner.runs: the recent runs and sweeps with their ids, newest first.

  python -m runner.runs                  runs and sweep parents (with their point count)
  python -m runner.runs --limit 50       more of them
  python -m runner.runs --sweep ID       one sweep's points

Also shared by runner.compare and runner.reproduce: finding runs in the store, and tables of differences.
"""
from __future__ import annotations

import argparse
import sys
import time
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


# ---- python -m runner.runs ----------------------------------------------------------------------

PAGE = 1000  # runs read per search_runs call while looking for the newest top-level runs


def _started(run) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.info.start_time / 1000))


def _mib_s(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _what(run) -> str:
    tags = run.data.tags
    overrides = tags.get("iosweep.overrides", "")
    if is_sweep(run):
        return f"sweep {overrides or '(defaults)'}"
    return f"{run.info.run_name or ''}  [{overrides or 'defaults'}]"


def _columns(rows: list[list[str]]) -> str:
    """Left-aligned columns; the throughput column (index 4) right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) if i == 4 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                     for r in rows)


HEADER = ["run id", "started", "status", "valid", "MiB/s", "what"]


def _search(c, experiment: str, filter_string: str = "", limit: int | None = None):
    """Runs newest first, page by page (MLflow caps one page)."""
    token = None
    while True:
        page = c.search_runs([experiment], filter_string=filter_string, order_by=["attributes.start_time DESC"],
                             max_results=PAGE if limit is None else min(PAGE, limit), page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def list_runs(c, experiment: str, limit: int) -> list[list[str]]:
    """The newest `limit` runs that are not sweep points, sweeps with their point count and how many
    of those are valid. Points start after their sweep: newest first, a sweep's points come before it."""
    points: dict[str, list[str]] = {}  # sweep id -> its points' iosweep.valid
    rows = []
    for run in _search(c, experiment):
        parent = run.data.tags.get("mlflow.parentRunId")
        if parent:
            points.setdefault(parent, []).append(run.data.tags.get("iosweep.valid", ""))
            continue
        if is_sweep(run):
            valid = points.get(run.info.run_id, [])
            rows.append([run.info.run_id, _started(run), run.info.status, f"{valid.count('true')}/{len(valid)}",
                         _mib_s(run.data.metrics.get("best_throughput_mib_s")),
                         f"{_what(run)}  ({len(valid)} points; MiB/s = best valid)"])
        else:
            rows.append([run.info.run_id, _started(run), run.info.status, run.data.tags.get("iosweep.valid", "-"),
                         _mib_s(run.data.metrics.get("throughput_mib_s")), _what(run)])
        if len(rows) == limit:
            break
    return rows


def list_points(c, sweep, limit: int | None) -> list[list[str]]:
    found = _search(c, sweep.info.experiment_id, f"tags.mlflow.parentRunId = '{sweep.info.run_id}'", limit)
    return [[r.info.run_id, _started(r), r.info.status, r.data.tags.get("iosweep.valid", "-"),
             _mib_s(r.data.metrics.get("throughput_mib_s")), _what(r)] for r in list(found)[:limit]]


def main(argv: list[str] | None = None) -> int:
    from . import secrets

    parser = Parser(prog="python -m runner.runs", description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, metavar="N",
                        help="show the N newest (default 20 runs; every point of a sweep)")
    parser.add_argument("--sweep", metavar="ID", help="list the points of this sweep (its parent run id)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        console.fail(f"--limit={args.limit}: must be a whole number >= 1")
    c = open_client()
    try:
        if args.sweep:
            sweep = get_run(c, args.sweep)
            if not is_sweep(sweep):
                console.fail(f"--sweep {args.sweep}: run is a single point, not a sweep; list runs without --sweep")
            title = f"sweep {sweep.info.run_id}  {_what(sweep)}  dir {sweep.data.tags.get('iosweep.sweep_dir', '?')}"
            rows = list_points(c, sweep, args.limit)
        else:
            import os

            exp = c.get_experiment_by_name(os.environ.get("MLFLOW_EXPERIMENT_NAME", tracking.EXPERIMENT))
            if exp is None:
                print(f"no runs yet in {tracking.tracking_uri()}")
                return 0
            title = f"newest first, {tracking.tracking_uri()}"
            rows = list_runs(c, exp.experiment_id, args.limit or 20)
    except SystemExit:
        raise
    except Exception as e:  # the store itself failed: one line, exit 3 like every store failure
        console.fail(f"tracking store {tracking.tracking_uri()} unavailable ({tracking.store_reason(e)})", code=3)
    print(secrets.mask_text(title))
    print(secrets.mask_text(_columns([HEADER, *rows])) if rows else "(no runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
