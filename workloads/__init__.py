"""iosweep's workload engine: a plain library (no Hydra, no MLflow).

    from workloads import Spec, run
    result = run(Spec(pattern="rand_read", block_size=4096, writers=2, size_bytes=256 << 20))
    print(result.metrics())
"""
from . import clients
from .errors import ConfigError, Interrupted, WorkloadError
from .job import checked, run
from .worker import worker_loop
from .metrics import LatencyHistogram, Result
from .spec import PATTERNS, DataSpec, Spec

__all__ = ["clients", "ConfigError", "Interrupted", "DataSpec", "LatencyHistogram", "PATTERNS", "Result", "Spec",
           "WorkloadError", "checked", "run", "worker_loop"]
