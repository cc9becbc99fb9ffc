"""Does the variable-length path cost the default (fixed-length) path anything? engine=null ops/s
(the harness ceiling: no I/O, so any extra work per op or per group shows) of this checkout against
another one (the commit before variable-length ops), in alternating pairs so both see the same
machine noise; prints each side's median and the ratio this/other (budget: >= 0.98).

    python benchmarks/varlen_overhead.py OTHER_CHECKOUT [pairs] [seconds]

OTHER_CHECKOUT must have its C extension built (python setup.py build_ext --inplace there).
"""
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PROBE = """
from workloads import Spec, run
if __name__ == "__main__":
    r = run(Spec(pattern="rand_read", engine="null", block_size=4096, size_bytes=64 << 20, duration_s={s}))
    print(r.ops_read / r.elapsed_s)
"""


def ops_per_s(checkout: Path, seconds: float) -> float:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    out = subprocess.run([sys.executable, "-c", PROBE.format(s=seconds)], env=env, cwd="/tmp", check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(other: str, pairs: int = 5, seconds: float = 1.5) -> None:
    mine, theirs = [], []
    for i in range(pairs):
        for side in ((HERE, Path(other)) if i % 2 else (Path(other), HERE)):
            (mine if side == HERE else theirs).append(ops_per_s(side, seconds))
    a, b = statistics.median(mine), statistics.median(theirs)
    print(f"engine=null ops/s, median of {pairs}: this {a:,.0f}  other {b:,.0f}  ratio this/other {a / b:.3f}")


if __name__ == "__main__":
    main(sys.argv[1], *(int(sys.argv[2]),) if len(sys.argv) > 2 else (),
         *(float(sys.argv[3]),) if len(sys.argv) > 3 else ())
