"""python -m runner.compare RUN_A RUN_B: what differs between two runs, or two sweeps point by point.

Two point runs: the params that differ (key: A -> B) and a table of metric deltas, delta% = (B-A)/A*100.
Two sweep parents: their children matched by `iosweep.overrides`, throughput per point, unmatched points.
"""
from __future__ import annotations

import sys

from . import console, runs


def compare(c, a, b) -> None:
    ida, idb = a.info.run_id, b.info.run_id
    if runs.is_sweep(a) and runs.is_sweep(b):
        print(f"A {ida}  sweep {runs.overrides_of(a) or '(defaults)'}")
        print(f"B {idb}  sweep {runs.overrides_of(b) or '(defaults)'}")
        print(runs.sweep_table(c, a, b, "A", "B"))
        return
    if runs.is_sweep(a) or runs.is_sweep(b):
        sweep = ida if runs.is_sweep(a) else idb
        console.fail(f"run {sweep} is a sweep and the other a single point: compare two sweeps or two points")
    print(f"A {ida}  {a.info.run_name}")
    print(f"B {idb}  {b.info.run_name}")
    differ = runs.changes(a.data.params, b.data.params)
    print(f"params that differ (A -> B): {len(differ)}" if differ else "params: identical")
    for line in differ:
        print(f"  {line}")
    print(runs.metric_table(a.data.metrics, b.data.metrics, "A", "B"))


def main(argv: list[str] | None = None) -> int:
    parser = runs.Parser(prog="python -m runner.compare", description=__doc__.splitlines()[0])
    parser.add_argument("run_a", metavar="RUN_A", help="MLflow run id (a point or a sweep parent)")
    parser.add_argument("run_b", metavar="RUN_B", help="MLflow run id of the same kind")
    args = parser.parse_args(argv)
    c = runs.open_client()
    compare(c, runs.get_run(c, args.run_a), runs.get_run(c, args.run_b))
    return 0


if __name__ == "__main__":
    sys.exit(main())
