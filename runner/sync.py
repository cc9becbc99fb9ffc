"""python -m runner.sync [PATH ...]: log to MLflow the run dirs whose result.json never got there.

A run writes <run_dir>/result.json before it talks to MLflow, so a run made while the store was
down is complete on disk. This publishes every run dir below PATH (default outputs/) with the same
code a run uses (tracking.publish), which skips a result_id already in the store: running it twice
imports once, also while a run is publishing the same dir. Runs this host's iosweep processes left
RUNNING when they died are closed as KILLED first. Only files inside each run dir are read, and a
result.json whose fields have the wrong type is skipped with the reason. Nothing on disk is changed
or deleted. Exit 3 when the store is still unavailable.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from . import console, runs, tracking

# MLflow's own copies of result.json (artifacts of runs already logged) live under these:
# they are not run dirs, and walking them would re-import masked copies into an emptied store.
NOT_RUN_DIRS = {"mlartifacts", "mlruns"}


def run_dirs(paths: list[Path]) -> list[Path]:
    """Every directory at or below paths that holds a result.json, once each, in path order."""
    found: dict[Path, Path] = {}
    for path in paths:
        if not path.exists():
            console.fail(f"no such file or directory {path}")
        if path.is_file():  # `sync outputs/runs/.../result.json` means its run dir
            path = path.parent
        for top, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in NOT_RUN_DIRS)
            if "result.json" in files:
                found.setdefault(Path(top).resolve(), Path(top))
    return list(found.values())


def problem(run_dir: Path) -> str | None:
    """Why result.json is not a record publish() can log (None: it is one)."""
    try:
        tracking.read_record(run_dir)
    except (OSError, tracking.BadRecord) as e:
        return str(e)
    return None


def main(argv: list[str]) -> int:
    parser = runs.Parser(prog="python -m runner.sync", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[tracking.OUTPUTS],
                        help="run dirs, or directories to search for them (default: outputs/)")
    args = parser.parse_args(argv)
    todo = run_dirs(args.paths)
    uri = tracking.tracking_uri()
    imported = present = skipped = 0
    if todo and runs.store_exists():  # runs left RUNNING by dead processes: KILLED, before importing
        with contextlib.suppress(Exception):  # a store that fails says so below, at its first import
            tracking.close_dead_runs(tracking.client())
    for run_dir in todo:
        why = problem(run_dir)
        if why is not None:  # e.g. cut short by a full disk, or crafted: say so, import the others
            print(f"skipped {run_dir}: result.json is not a complete iosweep record ({why})", flush=True)
            skipped += 1
            continue
        try:
            run_id, logged = tracking.publish(run_dir)
        except tracking.BadRecord as e:  # changed since problem() read it
            print(f"skipped {run_dir}: result.json is not a complete iosweep record ({e})", flush=True)
            skipped += 1
            continue
        except Exception as e:  # any failure of the store: the run dirs stay as they are
            console.fail(f"tracking store {uri} unavailable ({tracking.store_reason(e)}); {imported} of {len(todo)} run dir(s) "
                         f"imported before it failed, nothing deleted: run python -m runner.sync again later",
                         code=3)
        if logged:
            print(f"imported {run_dir} -> {run_id}", flush=True)
            imported += 1
        else:
            print(f"already in the store {run_dir} ({run_id})", flush=True)
            present += 1
    where = " ".join(str(p) for p in args.paths)
    print(f"iosweep: {imported} imported, {present} already in the store, {skipped} skipped "
          f"({len(todo)} run dir{'' if len(todo) == 1 else 's'} under {where}; store {uri})", flush=True)
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
