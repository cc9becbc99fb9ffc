"""What a finished sweep says: tables and findings computed from its points, never canned."""
from __future__ import annotations

import re

import numpy as np

from . import secrets

REFERENCE_ENGINE = "fio"


def overrides_dict(point: dict) -> dict[str, str]:
    return dict(o.lstrip("+").split("=", 1) for o in point["overrides"] if "=" in o)


def metric_key(text: str) -> str:
    """MLflow metric names allow letters, digits, _ - . space : / only."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", ":", text)


def varying_axes(points: list[dict]) -> list[str]:
    """Override keys whose value differs between points: what the sweep actually varied."""
    values: dict[str, set] = {}
    for p in points:
        for k, v in overrides_dict(p).items():
            values.setdefault(k, set()).add(v)
    return [k for k, vs in values.items() if len(vs) > 1 or any(k not in overrides_dict(p) for p in points)]


def engine_ratios(points: list[dict]) -> list[dict]:
    """For points that differ only in `engine` (and `trial`): each engine's throughput over fio's.

    With several trials (trial=1,2,3 swept so engines alternate), the ratio is the median of the
    per-trial ratios: engines measured back to back share the machine's state at that moment.
    """
    axes = [a for a in varying_axes(points) if a not in ("engine", "trial")]
    groups: dict[tuple, dict[str, dict[str, dict]]] = {}
    for p in points:
        if p["status"] != "FINISHED":
            continue
        ov = overrides_dict(p)
        if "engine" not in ov:
            continue
        key = tuple((a, ov.get(a, "")) for a in axes)
        groups.setdefault(key, {}).setdefault(ov.get("trial", "0"), {})[ov["engine"]] = p["metrics"]
    rows = []
    for key, trials in groups.items():
        engines = sorted({e for by_engine in trials.values() for e in by_engine} - {REFERENCE_ENGINE})
        for engine in engines:
            pairs = [(t[engine], t[REFERENCE_ENGINE]) for t in trials.values()
                     if engine in t and t.get(REFERENCE_ENGINE, {}).get("throughput_mib_s")]
            if not pairs:
                continue
            med = lambda xs: float(np.median(xs))  # noqa: E731
            ratios = [m["throughput_mib_s"] / ref["throughput_mib_s"] for m, ref in pairs]
            rows.append({"point": secrets.mask_text(" ".join(f"{k}={v}" for k, v in key)) or "(all)", "engine": engine,
                         "trials": len(pairs), "mib_s": med([m["throughput_mib_s"] for m, _ in pairs]),
                         "fio_mib_s": med([ref["throughput_mib_s"] for _, ref in pairs]), "ratio": med(ratios),
                         "ratio_min": min(ratios), "ratio_max": max(ratios),
                         "p99_us": med([m.get("lat_p99_us", np.nan) for m, _ in pairs]),
                         "fio_p99_us": med([ref.get("lat_p99_us", np.nan) for _, ref in pairs])})
    return rows


def ratio_table(rows: list[dict]) -> str:
    head = ("| point | engine | trials | MiB/s | fio MiB/s | ratio (median) | ratio range | p99 µs | fio p99 µs |\n"
            "|---|---|---:|---:|---:|---:|---|---:|---:|\n")
    return head + "".join(
        f"| {r['point']} | {r['engine']} | {r['trials']} | {r['mib_s']:.1f} | {r['fio_mib_s']:.1f} | "
        f"{r['ratio']:.3f} | {r['ratio_min']:.2f}–{r['ratio_max']:.2f} | {r['p99_us']:.1f} | {r['fio_p99_us']:.1f} |\n"
        for r in rows)


# ---- the sweep summary: one row per point, findings, plots ----------------------------------

KEY_METRICS = ("throughput_mib_s", "iops", "lat_p50_us", "lat_p99_us", "cpu_util_pct", "elapsed_s")
NUMERIC_AXES = ("block_kb", "writers", "size_mb", "duration_s", "pattern.read_pct", "data.compress_ratio",
                "data.dedup_ratio")
KNEE_GAIN = 0.10  # "beyond this block size, throughput gains < 10%"


def _num(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def rows(points: list[dict]) -> tuple[list[str], list[dict]]:
    """The swept axes and one row per point: its value on each axis, status, key metrics."""
    axes = varying_axes(points)
    out = []
    for p in points:
        ov = overrides_dict(p)
        # masked here, at the source of every table, finding and plot label (a PNG cannot be masked later)
        row = {a: secrets.mask_value(a, ov.get(a, "")) for a in axes}
        row["status"] = p["status"]
        row["valid"] = str(p.get("valid", "")).lower()
        row.update({m: p["metrics"].get(m, float("nan")) for m in KEY_METRICS})
        row["error"] = secrets.mask_text(p.get("error") or "")
        row["run_id"] = p.get("run_id") or ""
        out.append(row)
    return axes, out


def write_csv(path, axes: list[str], table: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=axes + ["status", "valid", *KEY_METRICS, "error", "run_id"])
        w.writeheader()
        w.writerows(table)


def markdown_table(axes: list[str], table: list[dict]) -> str:
    cols = axes + ["status", "MiB/s", "IOPS", "p50 µs", "p99 µs", "valid"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        vals = [str(r[a]) for a in axes] + [r["status"]]
        if r["status"] == "FINISHED":
            vals += [f"{r['throughput_mib_s']:.1f}", f"{r['iops']:.0f}", f"{r['lat_p50_us']:.1f}",
                     f"{r['lat_p99_us']:.1f}", r["valid"]]
        else:
            vals += ["", "", "", "", r["error"]]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _finished(table):
    return [r for r in table if r["status"] == "FINISHED" and r["throughput_mib_s"] == r["throughput_mib_s"]]


def _series(table: list[dict], axes: list[str], x: str) -> dict[tuple, list[tuple[float, dict]]]:
    """Group finished rows by every other swept axis; each group sorted along numeric axis x."""
    others = [a for a in axes if a != x]
    groups: dict[tuple, list] = {}
    for r in _finished(table):
        xv = _num(r[x])
        if isinstance(xv, float):
            groups.setdefault(tuple((a, r[a]) for a in others), []).append((xv, r))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in groups.items()}


def _natural(key: tuple) -> tuple:
    """Sort axis values as numbers where they are numbers (4 < 64 < 1024)."""
    return tuple((0, v, "") if isinstance(v, float) else (1, 0.0, str(v)) for v in (_num(b) for _, b in key))


def _label(key: tuple) -> str:
    return " ".join(f"{a}={v}" for a, v in key) or "all points"


def best_point(table: list[dict]) -> dict | None:
    done = _finished(table)
    return max(done, key=lambda r: r["throughput_mib_s"]) if done else None


def findings(axes: list[str], table: list[dict], ratios: list[dict]) -> list[str]:
    """What the sweep says, from its table and its engine_ratios()."""
    out = []
    best = best_point(table)
    if best:
        where = " ".join(f"{a}={best[a]}" for a in axes) or "the only point"
        out.append(f"Best throughput: {best['throughput_mib_s']:.1f} MiB/s at {where}"
                   + ("" if best["valid"] == "true" else " (not storage truth: see that run's iosweep.warnings)"))
    if "writers" in axes:
        for key, series in _series(table, axes, "writers").items():
            one = next((r for x, r in series if x == 1), None)
            if one and len(series) > 1 and one["throughput_mib_s"] > 0:
                n, top = series[-1]
                speedup = top["throughput_mib_s"] / one["throughput_mib_s"]
                out.append(f"Scaling 1 -> {n:g} writers ({_label(key)}): {speedup:.2f}x throughput, "
                           f"efficiency {100 * speedup / n:.0f}%")
    if "block_kb" in axes:
        for key, series in _series(table, axes, "block_kb").items():
            if len(series) < 2:
                continue
            knee = None
            for (x0, r0), (x1, r1) in zip(series, series[1:]):
                if r0["throughput_mib_s"] > 0 and r1["throughput_mib_s"] / r0["throughput_mib_s"] - 1 < KNEE_GAIN:
                    knee = x0
                    break
            if knee is None:
                out.append(f"Throughput still gains >= {100 * KNEE_GAIN:.0f}% at every block size step up to "
                           f"{series[-1][0]:g} KiB ({_label(key)})")
            else:
                out.append(f"Beyond {knee:g} KiB blocks throughput gains < {100 * KNEE_GAIN:.0f}% per step ({_label(key)})")
    if "pattern" in axes:
        others = [a for a in axes if a != "pattern"]
        by_key: dict[tuple, dict[str, float]] = {}  # the other axes' values -> pattern -> MiB/s
        for r in _finished(table):
            by_key.setdefault(tuple(r[a] for a in others), {})[r["pattern"]] = r["throughput_mib_s"]
        for seq, rnd in (("seq_read", "rand_read"), ("seq_write", "rand_write")):
            speedups = [v[seq] / v[rnd] for v in by_key.values() if seq in v and rnd in v and v[rnd] > 0]
            if speedups:
                out.append(f"{seq} is {np.median(speedups):.1f}x {rnd} (median over {len(speedups)} matched points)")
    invalid = [r for r in _finished(table) if r["valid"] == "false"]
    if invalid:
        out.append(f"{len(invalid)} of {len(_finished(table))} finished points are not storage truth "
                   "(page cache, O_DIRECT ignored, null engine…): see each run's iosweep.warnings")
    failed = [r for r in table if r["status"] != "FINISHED"]
    for r in failed:
        out.append(f"FAILED: {' '.join(f'{a}={r[a]}' for a in axes)}: {r['error']}")
    for r in ratios:
        out.append(f"{r['engine']} / fio at {r['point']}: {r['ratio']:.3f} (median of {r['trials']})")
    return out


def plots(axes: list[str], table: list[dict], out_dir) -> list:
    """PNGs chosen from the swept axes; returns their paths."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir, made = Path(out_dir), []

    def line_plot(x: str, metric: str, ylabel: str, name: str, logy=False, transform=None):
        series = _series(table, axes, x)
        if not series or all(len(s) < 2 for s in series.values()):
            return
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for key, pts in sorted(series.items(), key=lambda kv: _natural(kv[0])):
            xs = [p[0] for p in pts]
            ys = transform(pts) if transform else [p[1][metric] for p in pts]
            ax.plot(xs, ys, marker="o", label=_label(key))
        ax.set_xscale("log", base=2)
        if logy:
            ax.set_yscale("log")
        ax.set_xticks(sorted({p[0] for s in series.values() for p in s}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(x + (" (KiB)" if x == "block_kb" else ""))
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{ylabel} vs {x}")
        fig.tight_layout()
        path = out_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)

    if "block_kb" in axes:
        line_plot("block_kb", "throughput_mib_s", "throughput (MiB/s)", "throughput_vs_block_kb.png")
        line_plot("block_kb", "iops", "IOPS", "iops_vs_block_kb.png", logy=True)
        line_plot("block_kb", "lat_p99_us", "p99 latency (µs)", "p99_vs_block_kb.png", logy=True)
    if "writers" in axes:
        def efficiency(pts):
            base = next((r["throughput_mib_s"] for x, r in pts if x == 1), None)
            return [100 * r["throughput_mib_s"] / (x * base) if base else float("nan") for x, r in pts]
        line_plot("writers", "throughput_mib_s", "scaling efficiency (%)", "scaling_efficiency_vs_writers.png",
                  transform=efficiency)
    numeric = [a for a in axes if a in NUMERIC_AXES]
    if len(numeric) >= 2:
        made += _heatmap(numeric[0], numeric[1], axes, table, out_dir, plt)
    return made


def _heatmap(x: str, y: str, axes, table, out_dir, plt) -> list:
    others = [a for a in axes if a not in (x, y)]
    groups: dict[tuple, dict] = {}
    for r in _finished(table):
        groups.setdefault(tuple((a, r[a]) for a in others), {})[(_num(r[x]), _num(r[y]))] = r["throughput_mib_s"]
    made = []
    for i, (key, cells) in enumerate(sorted(groups.items(), key=lambda kv: _natural(kv[0]))):
        xs, ys = sorted({k[0] for k in cells}), sorted({k[1] for k in cells})
        grid = np.full((len(ys), len(xs)), np.nan)
        for (xv, yv), v in cells.items():
            grid[ys.index(yv), xs.index(xv)] = v
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        im = ax.imshow(grid, origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(xs)), [f"{v:g}" for v in xs])
        ax.set_yticks(range(len(ys)), [f"{v:g}" for v in ys])
        for (yi, xi), v in np.ndenumerate(grid):
            if v == v:
                ax.text(xi, yi, f"{v:.0f}", ha="center", va="center", color="white", fontsize=8)
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(f"throughput (MiB/s): {_label(key)}")
        fig.colorbar(im, ax=ax, label="MiB/s")
        fig.tight_layout()
        path = out_dir / (f"heatmap_{x}_{y}.png" if len(groups) == 1 else f"heatmap_{x}_{y}_{i}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(path)
    return made
