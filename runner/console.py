"""What the user sees on the terminal: one live progress line, the result table, one-line errors."""
from __future__ import annotations

import sys

from workloads import Result, Spec

MIB = 1 << 20


def fail(message: str, code: int = 2):
    """A user error: one line on stderr, no traceback."""
    print(f"iosweep: error: {message}", file=sys.stderr)
    sys.exit(code)


class Progress:
    """Called about once a second by the workload; silent for the first couple of seconds.

    On a terminal it rewrites one line; otherwise it prints plain lines (logs stay readable).
    """

    def __init__(self, after_s: float = 2.0):
        self.after_s = after_s
        self.tty = sys.stdout.isatty()
        self.shown = False
        self.label = ""  # clients > 1: "rank 0 only" (the other ranks' bytes come at the end)

    def __call__(self, elapsed_s: float, bytes_done: int, mib_s: float, unit: str = "MiB") -> None:
        """unit="files": pattern=metadata reports files handled and files/s instead of bytes."""
        if elapsed_s < self.after_s:
            return
        done = bytes_done / MIB if unit == "MiB" else bytes_done
        line = f"  {elapsed_s:6.1f} s  {done:10.0f} {unit}  {mib_s:9.1f} {unit}/s{self.label}"
        if self.tty:
            sys.stdout.write("\r" + line)
            sys.stdout.flush()
        else:
            print(line, flush=True)
        self.shown = True

    def done(self) -> None:
        if self.tty and self.shown:
            sys.stdout.write("\n")
            sys.stdout.flush()


def describe(spec: Spec) -> str:
    if spec.clients > 1:  # an MPI job: every rank runs the point as described
        return f"{_describe(spec)}  x {spec.clients} clients (MPI ranks, each with the writers and size above)"
    return _describe(spec)


def _describe(spec: Spec) -> str:
    what = f"{spec.pattern}" + (f" read_pct={spec.read_pct}" if spec.pattern == "mixed" else "")
    how = f"duration {spec.duration_s:g} s" if spec.duration_s else \
        "all of target.path" if spec.size_bytes is None else f"{spec.size_bytes >> 20} MiB"
    if spec.target == "s3":  # objects: their size and count, the bucket and the server
        where = f"target s3://{spec.s3.bucket}/{spec.s3.prefix} at {spec.s3.host}"
        if spec.metadata:
            return (f"metadata (PUT/HEAD/LIST/GET/DELETE)  {spec.files_per_writer} objects x {spec.per_file / 1024:g} "
                    f"KiB per writer  writers {spec.writers}  {where}")
        ob = spec.object_bytes / MIB
        what = f"{spec.pattern}" + (f" read_pct={spec.read_pct}" if spec.pattern == "mixed" else "")
        req = f"ranged GETs of {spec.block_size >> 10} KiB" if spec.pattern == "rand_read" else \
            f"multipart, parts of {spec.block_size >> 10} KiB" if spec.writes and spec.object_bytes > spec.s3.multipart_bytes \
            else "one request per object"
        how = f"duration {spec.duration_s:g} s" if spec.duration_s else "one pass"
        return (f"{what}  objects of {ob:g} MiB ({req})  writers {spec.writers}  iodepth {spec.iodepth}  "
                f"{spec.objects_per_writer} objects per writer ({spec.file_size * spec.writers / MIB:g} MiB)  {how}  "
                f"{where}")
    if spec.pattern == "format_read":  # no blocks, no size_mb: a table of data.rows rows per worker, loaded whole
        return (f"format_read {spec.data.format} {spec.data.rows} rows  writers {spec.writers}  "
                f"{how if spec.duration_s else 'one load each'}  target {spec.target}:{spec.target_dir}")
    if spec.metadata or spec.files_per_writer > 1 or spec.file_bytes is not None:  # small files
        how = f"{spec.files_per_writer} files x {spec.per_file / 1024:g} KiB per writer" + \
            (f" ({spec.file_size * spec.writers / MIB:g} MiB)" if not spec.metadata else "")
    block = f"block {spec.block_size >> 10} KiB"
    if spec.pattern == "append":  # records, not blocks: how they reach the file and the durability policy
        from workloads.append import describe as describe_append

        what, block = describe_append(spec), "(block_kb does not apply)"
    if spec.pattern == "replay":  # the trace sets the ops' lengths and the bytes
        what, block, how = f"replay {spec.trace} (timing {spec.timing})", "ops of the trace's lengths", "once"
    if spec.pattern == "model_load":  # the model's tensors, in reads of at most block_kb
        what, block, how = f"model_load (order {spec.order})", f"reads of <= {spec.block_size >> 10} KiB", "once"
    if spec.merge_kb is not None:
        what += f"  merge_kb {spec.merge_kb} (batches of {spec.merge_batch})"
    return (f"{what}  {block}  writers {spec.writers}  {how}  "
            f"engine {spec.engine}  direct {str(spec.direct).lower()}  "
            f"target {spec.target}:{spec.target_path if spec.target in ('device', 'file') else spec.target_dir}")


def result_table(result: Result) -> str:
    """The result as lines. With repeats every figure says what it is: throughput is the mean of the
    repeats' rates; IOPS, read/write rates, latency and the device counters pool all repeats'
    ops over all their windows; sizes and times are totals, followed by the mean per repeat."""
    m = result.metrics()
    info = result.info
    n = int(m.get("repeats", 1))
    pooled = f" (pooled: {n} repeats)" if n > 1 else ""
    where = f"s3 {info['s3_endpoint']} ({info.get('s3_server') or 'server not named'}) bucket {info['s3_bucket']}" \
        if "s3_endpoint" in info else f"fs {info.get('fs_type', '?')} on {info.get('device') or '?'}"
    lines = [f"  io_mode {result.io_mode}   {where}"
             + (f"   {info['hint']}" if info.get("hint") else "")
             + (f"   {info['append']}" if info.get("append") else "")]  # pattern=append: how records went
    if n > 1:
        lines += [f"  {'throughput':>12} {m['throughput_mib_s']:10.1f} MiB/s (mean of {n} repeats)   "
                  f"iops {m['iops']:.0f} (pooled: all ops / all windows)",
                  f"  {'per repeat':>12} {m['bytes_total'] / MIB / n:.0f} MiB in {m['elapsed_s'] / n:.3f} s (mean)"
                  f"   total {m['bytes_total'] / MIB:.0f} MiB in {m['elapsed_s']:.3f} s"]
    else:
        lines.append(f"  {'throughput':>12} {m['throughput_mib_s']:10.1f} MiB/s   {'iops':>6} {m['iops']:10.0f}"
                     f"   {m['bytes_total'] / MIB:.0f} MiB in {m['elapsed_s']:.3f} s")
    if "clients" in info:  # clients > 1: the ranks' own rates over their own windows, and their spread
        lines.append(f"  {'clients':>12} {m['clients']:.0f} ranks, spread {m['client_spread_pct']:.0f}% "
                     f"(fastest to slowest" + (", the largest of the repeats)" if n > 1 else ")"))
        for row in info["clients"]:
            name = f"rank {row['rank']}" + (f" r{row['repeat'] + 1}" if "repeat" in row else "")
            lines.append(f"  {name:>12} {row['mib_s']:10.1f} MiB/s   p99 {row['p99_us']:.1f} us   "
                         f"{row['bytes'] / MIB:.0f} MiB in {row['elapsed_s']:.3f} s   {row['host']} pid {row['pid']}  "
                         f"{row['fs']} {row['dir']}")
    if "read_throughput_mib_s" in m:
        lines.append(f"  {'read':>12} {m['read_throughput_mib_s']:10.1f} MiB/s   "
                     f"{'write':>6} {m['write_throughput_mib_s']:10.1f} MiB/s{pooled}")
    if not result.metadata or result.latency.total:  # pattern=metadata: its own latency table below
        lines.append("  latency us   " + "  ".join(
            f"{k} {m[f'lat_{k}_us']:.1f}" for k in ("p50", "p90", "p99", "p999", "max")) + pooled)
    if "ttfb_p50_us" in m:  # target=s3: the server's answer before the body
        lines.append("  ttfb us      " + "  ".join(f"{k} {m[f'ttfb_{k}_us']:.1f}" for k in ("p50", "p90", "p99", "p999"))
                     + pooled)
    if "throughput_mib_s_std" in m:
        low = m["throughput_mib_s_ci95_low"]
        lines.append(f"  repeats {n}: throughput mean {m['throughput_mib_s']:.1f} MiB/s, std "
                     f"{m['throughput_mib_s_std']:.1f}, 95% CI [{low:.1f}, {m['throughput_mib_s_ci95_high']:.1f}]"
                     + (" (below 0: see the warning)" if low < 0 else ""))
    if "device_read_bytes" in m:
        lines.append(f"  device {info.get('device')}: read {m['device_read_bytes'] / MIB:.0f} MiB, "
                     f"wrote {m['device_write_bytes'] / MIB:.0f} MiB"
                     + (f", {m['cache_served_pct']:.0f}% of reads from page cache" if "cache_served_pct" in m else "")
                     + (f" (total over {n} repeats)" if n > 1 else ""))
        for kind in ("read", "write"):  # iostat's view: what read-ahead and merging made of the ops
            if m.get(f"device_{kind}_ios"):
                lines.append(f"  {'':>12} {kind}s: {m[f'device_{kind}_ios']:.0f} requests of "
                             f"{m[f'device_{kind}_req_kb']:.0f} KiB on average, {m[f'device_{kind}_merges']:.0f} "
                             f"merged, await {m[f'device_{kind}_await_ms']:.2f} ms")
    if "load_gb_s" in m:  # pattern=model_load: the load, and what it loaded
        lines.append(f"  {'model':>12} load {m['load_s']:.3f} s = {m['load_gb_s']:.3f} GB/s   {m['tensors']:.0f} "
                     f"tensors of {m['tensor_min_kib']:.1f} KiB to {m['tensor_max_mib']:.1f} MiB")
    if "rows_per_s" in m:  # pattern=format_read: decoded rows, the file's size, where the CPU went
        lines.append(f"  {'table':>12} {m['rows_per_s']:10.0f} rows/s   file {m['file_mib']:.1f} MiB   "
                     f"CPU decode (user) {m['decode_cpu_s']:.3f} s, read (system) {m['read_sys_cpu_s']:.3f} s")
    elif "records_per_s" in m:  # pattern=append: records, the durability policy's fsyncs, what the device wrote
        lines.append(f"  {'records':>12} {m['records_per_s']:10.0f} records/s   {m['records_total']:.0f} records in "
                     f"{m['append_write_calls']:.0f} write calls   fsyncs {m['fsyncs']:.0f}"
                     + (f" (us: p50 {m['fsync_p50_us']:.1f} p99 {m['fsync_p99_us']:.1f} mean {m['fsync_mean_us']:.1f} "
                        f"max {m['fsync_max_us']:.1f})" if m["fsyncs"] else "")
                     + (f"   write amplification {m['write_amplification']:.2f}" if "write_amplification" in m else "")
                     + (f"   file restarts {m['file_restarts']:.0f}" if m.get("file_restarts") else ""))
    elif result.counters:  # the engine's own counters over the window, e.g. engine=mmap's page faults
        lines.append("  engine       " + "   ".join(f"{k} {v:.0f}" for k, v in sorted(result.counters.items()))
                     + (f" (total over {n} repeats)" if n > 1 else ""))
    if result.metadata:  # pattern=metadata: mdtest's summary, a line per phase
        lines.append(f"  {'metadata':>12} {'ops/s':>12} {'p50 us':>9} {'p99 us':>9} {'files':>9}")
        for name in result.metadata:
            lines.append(f"  {name:>12} {m[f'{name}_per_s']:12.1f} {m[f'{name}_p50_us']:9.1f} "
                         f"{m[f'{name}_p99_us']:9.1f} {m[f'{name}_ops']:9.0f}" + (f" (pooled: {n} repeats)" if n > 1 else ""))
    if "data_compress_ratio_measured" in m:
        lines.append(f"  data measured: compress {m['data_compress_ratio_measured']:.2f}:1, dedup "
                     f"{m['data_dedup_ratio_measured_1mib']:.2f}:1 (1 MiB units), "
                     f"{m['data_dedup_ratio_measured']:.2f}:1 (4 KiB blocks)")
    for w in result.warnings:
        lines.append(f"  WARNING: {w}")
    if not result.valid:
        lines.append("  NOT STORAGE TRUTH: valid=false, these figures do not measure the storage (see warnings)")
    return "\n".join(lines)
