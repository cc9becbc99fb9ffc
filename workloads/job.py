"""Run a Spec: check it against its engine, prepare the target, run the engine (the worker
processes for an in-process engine, or an external one such as fio), repeat, judge.

The rooms it uses: targets/ (what is accessed, who owns it), patterns.py (which ops in which
order), engines/ (how each op is issued), prepare.py (layout and cache state before the window),
processes.py (worker processes, bounded waits), worker.py (one worker's loop), sampler.py (time
series), metrics.py (histograms, Result), judge.py (is it storage truth).
"""
from __future__ import annotations

from . import engines, hints, targets
from .data import calibrate, measure_ratios
from .errors import ConfigError, Interrupted, WorkloadError
from .judge import judge
from .metrics import Result, combine
from .processes import run_workers
from .spec import Spec


def checked(spec: Spec) -> Spec:
    """The spec as it will run, checked against its target and engine; ConfigError before any I/O.
    A caller may check first to say nothing about a point that cannot run."""
    spec.check()
    if spec.pattern == "replay":  # the trace sets the block: its largest op (read buffer, write blocks)
        from .replay import resolve as replay_resolve

        spec = replay_resolve(spec).check()
    resolve = getattr(targets.get(spec.target), "resolve", None)
    if resolve is not None:  # the target fixes what the spec leaves to it (target=file: the files' size)
        spec = resolve(spec).check()
    engines.get(spec.engine).check(spec)
    if spec.clients > 1 and engines.get(spec.engine).external:
        raise ConfigError("clients", spec.clients, f"engine={spec.engine} runs its own processes: clients>1 "
                                                   "runs iosweep's workers on every rank, choose another engine")
    return spec


def run(spec: Spec, progress=None, clients=None) -> Result:
    """Run one measured point (`repeats` times). `progress(elapsed_s, bytes_done, mib_s)` is called
    about once a second. Raises ConfigError for bad input (before any I/O), WorkloadError for I/O.
    `clients` (clients.world()): this is one rank of an MPI job; rank 0's result holds every rank's."""
    spec = checked(spec)
    engine = engines.get(spec.engine)
    results: list[Result] = []
    # the generator alone (seed 002's /dev/null test), outside the window: what judge's bottleneck compares
    gen_mib_s = calibrate(spec) if streams(spec, engine) else None
    try:
        for _ in range(spec.repeats):
            results.append(_run_once(spec, engine, progress, clients))
    except Interrupted as stopped:  # keep what the finished repeats and the stopped one measured
        done = results + ([stopped.partial] if stopped.partial else [])
        stopped.partial = _verdict(spec, done[0] if len(done) == 1 else combine(done)) if done else None
        raise
    except WorkloadError as failed:  # a stuck worker: what the others measured, marked invalid
        if getattr(failed, "partial", None) is not None:
            failed.partial = _verdict(spec, failed.partial)
        raise
    result = results[0] if len(results) == 1 else combine(results)
    result.datagen_mib_s = gen_mib_s
    result.data_measured = {} if spec.read_only_target else measure_ratios(spec)  # target=file: not our data
    return _verdict(spec, result)


def streams(spec: Spec, engine) -> bool:
    """The point writes fresh dgen-py data through producer threads in iosweep's own workers."""
    return spec.writes and spec.data.kind == "dgen" and spec.data.refill and engine.does_io \
        and not engine.external and not spec.metadata


def _verdict(spec: Spec, result: Result) -> Result:
    valid, verdicts = judge(spec, result)
    result.valid = valid and not result.info.get("stopped")
    result.warnings = verdicts + [w for w in result.warnings if w not in verdicts]
    if result.info.get("stopped"):
        result.warnings.insert(0, "the run was interrupted: these are the figures up to the stop")
    return result


def _run_once(spec: Spec, engine, progress, clients=None) -> Result:
    target = targets.get(spec.target)(spec, engine.does_io)
    placement = target.prepare()
    if engine.io_mode and placement.io_mode == "buffered":
        placement.io_mode = engine.io_mode  # page-cache I/O, through the engine's own path (a mapping)
    result = failure = None
    try:
        if engine.does_io:
            target.create_files(placement)
        if engine.external:
            result = engine.run_job(spec, target, placement, progress)
        else:
            result = run_workers(spec, placement, progress, clients)
    except (Interrupted, WorkloadError) as stopped:
        result, failure = getattr(stopped, "partial", None), stopped
        raise
    finally:
        if result is not None:  # also what an interrupted run measured: say where it ran
            result.warnings[:0] = placement.warnings
            result.info.update(placement.info())
            if spec.pattern == "model_load":  # what was loaded: tensors, largest and smallest
                from .model import info as model_info

                result.info.update(model_info(spec))
            if spec.pattern == "append":  # how records reached the file: the io_mode line says it
                from .append import describe as describe_append

                result.info["append"] = describe_append(spec)
            if hints.describe(spec):
                result.info["hint"] = hints.describe(spec)
            if spec.keep_files:
                result.info["files"] = [str(p) for p in placement.files]
        if not spec.keep_files:
            said = len(placement.warnings)
            target.cleanup(placement)
            late = placement.warnings[said:]  # what cleanup could not remove (target=s3: the server is gone)
            if late and result is not None:
                result.warnings += late
            if late and isinstance(failure, WorkloadError):
                failure.args = ("; ".join([str(failure), *late]),)
    return result
