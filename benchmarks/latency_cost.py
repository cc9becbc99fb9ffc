"""What does timing every op cost? The worst case: 4 KiB random reads served from the page cache
(the cheapest op there is), `latency=true` vs `latency=false`. The two run back to back in pairs,
alternating which goes first, so both see the same machine noise; the cost is the median of the
per-pair ratios (budget: <= 5%).

    python benchmarks/latency_cost.py [pairs] [seconds]
"""
import statistics
import sys
import tempfile

from workloads import Spec, run
from workloads._hotloop import clock_source


def iops(latency: bool, seconds: float, where: str) -> float:
    spec = Spec(pattern="rand_read", block_size=4096, writers=1, size_bytes=64 << 20, cache="warm",
                duration_s=seconds, latency=latency, target_dir=where)
    return run(spec).metrics()["iops"]


def main(pairs: int = 8, seconds: float = 2.0) -> None:
    on, off, ratios = [], [], []
    with tempfile.TemporaryDirectory(prefix="iosweep-bench-") as d:
        for i in range(pairs):
            order = (True, False) if i % 2 else (False, True)
            got = {latency: iops(latency, seconds, d) for latency in order}
            on.append(got[True])
            off.append(got[False])
            ratios.append(got[True] / got[False])
    ratio = statistics.median(ratios)
    print(f"4 KiB cached random reads, 1 worker, {pairs} pairs x {seconds:g} s, op clock: {clock_source()}")
    print(f"  latency=false  median {statistics.median(off):12,.0f} IOPS")
    print(f"  latency=true   median {statistics.median(on):12,.0f} IOPS")
    print(f"  per-pair ratios on/off {[round(r, 3) for r in ratios]}")
    print(f"  median ratio {ratio:.3f}   cost of timing every op {100 * (1 - ratio):.1f}%  (budget 5%)")


if __name__ == "__main__":
    main(*(int(sys.argv[1]),) if len(sys.argv) > 1 else (), *(float(sys.argv[2]),) if len(sys.argv) > 2 else ())
