"""PNG plots (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from workloads.metrics import LatencyHistogram, bucket_bounds  # noqa: E402


def latency_png(read: LatencyHistogram, write: LatencyHistogram, path: Path) -> None:
    """Latency percentile curve: x = latency (log), y = share of ops slower (log), per direction."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, hist, color in (("read", read, "tab:blue"), ("write", write, "tab:orange")):
        if not hist.total:
            continue
        nz = np.flatnonzero(hist.counts)
        _, high = bucket_bounds(nz)
        slower = 1.0 - np.cumsum(hist.counts[nz]) / hist.total
        ax.step(high / 1e3, np.maximum(slower, 0.5 / hist.total), where="post", color=color,
                label=f"{name}: {hist.total:,} ops")
        for q, style in ((50, ":"), (99, "--"), (99.9, "-.")):
            ax.axvline(hist.percentile(q) / 1e3, color=color, linestyle=style, linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency (µs)   dotted p50, dashed p99, dash-dot p99.9")
    ax.set_ylabel("share of ops slower than x")
    ax.set_title("Latency distribution")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
