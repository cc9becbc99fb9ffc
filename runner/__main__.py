"""iosweep [overrides] | iosweep -m key=a,b key2=c,d  (or python -m runner ...)"""
import signal
import sys

import hydra
from omegaconf import DictConfig

from runner import app, console, preflight, schema, secrets, tracking
import workloads
from workloads import Interrupted

schema.register()
app.register_resolvers()


@hydra.main(config_path=str(schema.CONF), config_name="config", version_base="1.3")
def main(cfg: DictConfig):
    return app.run_point(cfg)


def cli() -> None:
    """`python -m runner` and the `iosweep` console script."""
    if app.other_rank():
        _quiet_rank()
    secrets.remember_overrides(sys.argv[1:])  # before anything (Hydra's errors included) can print them
    secrets.guard_terminal()
    sys.argv[1:] = app.quote_null_choices(sys.argv[1:])
    try:
        if not app.other_rank():  # a rank > 0 meets the same checks inside its point, and rank 0 names it
            preflight.check(sys.argv[1:])
    except preflight.UserError as e:
        console.fail(str(e), e.code)
    app.stop_on_signals()
    try:
        main()
    except SystemExit as e:
        if workloads.clients.broken():
            _exit_without_mpi_finalize(e.code)
        raise
    except Interrupted as e:
        tracking.INTERRUPTED.append(e.signum)  # a sweep's parent closes as KILLED (at exit)
        name = signal.Signals(e.signum).name
        status = getattr(e, "recorded_as", "KILLED")  # FAILED: under mpirun, another rank died first
        if not app.other_rank():  # rank 0 says it for the MPI job
            print(f"iosweep: stopped by {name}: what it wrote removed (scratch files, objects), the run recorded as "
                  f"{status}", file=sys.stderr)
        sys.exit(128 + e.signum)


def _exit_without_mpi_finalize(code) -> None:
    """A rank of this MPI job died or hangs: MPI_Finalize (which mpi4py calls at exit) would wait for it
    forever. Run the atexit handlers (the sweep's parent run closes), then leave without it: mpirun
    ends the other ranks."""
    import atexit
    import os

    for sig in app.STOP_SIGNALS:  # mpirun's SIGTERM (it ends the job when a rank leaves) must not cut this short
        signal.signal(sig, signal.SIG_IGN)
    tracking.close_sweep_parent("FAILED")  # first, in one call: mpirun's SIGKILL may follow within a second
    atexit._run_exitfuncs()  # then the sweep's summary, if there is time
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 2)


def _quiet_rank() -> None:
    """A rank > 0 of an MPI job (clients=N): rank 0 prints and records the point; this one keeps Hydra's
    run and sweep dirs in a temporary dir of its own (removed at exit) and prints nothing."""
    import atexit
    import os
    import shutil
    import tempfile

    _remove_stale_rank_dirs(tempfile.gettempdir())
    scratch = tempfile.mkdtemp(prefix=f"iosweep-rank-{os.getpid()}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    sys.argv[1:] += [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra.output_subdir=null",
                     "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    sys.stdout = open(os.devnull, "w")


def _remove_stale_rank_dirs(tmp: str) -> None:
    """The run dirs of ranks that were killed before their atexit: named by their pid, and holding only
    (empty) directories, since a rank > 0 writes nothing there."""
    import os
    import re
    import shutil
    from pathlib import Path

    import psutil

    for d in Path(tmp).glob("iosweep-rank-*-*"):
        m = re.fullmatch(r"iosweep-rank-(\d+)-\w+", d.name)
        if not m or not d.is_dir() or d.is_symlink() or psutil.pid_exists(int(m[1])):
            continue
        if all(not files for _, _, files in os.walk(d)):  # never a file: then it is not one of ours
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    cli()
