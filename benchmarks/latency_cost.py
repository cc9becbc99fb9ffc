"""What does timing every op cost? The worst case: 4 KiB random reads served from the page cache
(the cheapest op there is), `latency=true` vs `latency=false`, alternated so both see the same
machine noise. Prints both IOPS medians and the cost in percent (budget: <= 5%).

    python benchmarks/latency_cost.py [pairs] [seconds]
"""
import statistics
import sys
import tempfile

from workloads import Spec, run


def main(pairs: int = 5, seconds: float = 2.0) -> None:
    iops = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="iosweep-bench-") as d:
        for _ in range(pairs):
            for latency in (False, True):
                spec = Spec(pattern="rand_read", block_size=4096, writers=1, size_bytes=64 << 20, cache="warm",
                            duration_s=seconds, latency=latency, target_dir=d)
                iops[latency].append(run(spec).metrics()["iops"])
    on, off = statistics.median(iops[True]), statistics.median(iops[False])
    print(f"4 KiB cached random reads, 1 worker, {pairs} pairs x {seconds:g} s")
    print(f"  latency=false  median {off:12,.0f} IOPS  {[round(x) for x in iops[False]]}")
    print(f"  latency=true   median {on:12,.0f} IOPS  {[round(x) for x in iops[True]]}")
    print(f"  ratio on/off {on / off:.3f}   cost of timing every op {100 * (1 - on / off):.1f}%  (budget 5%)")


if __name__ == "__main__":
    main(*(int(sys.argv[1]),) if len(sys.argv) > 1 else (), *(float(sys.argv[2]),) if len(sys.argv) > 2 else ())
