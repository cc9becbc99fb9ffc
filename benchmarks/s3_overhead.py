"""What does the engine cost on S3? iosweep target=s3 against a minimal boto3 loop doing the same
requests, in the same number of processes, on the same server, in one run (budget: iosweep's
MiB/s >= 0.95 x the loop's). Two cases:

  put  PUT of 1 MiB objects (pattern=seq_write object_mb=1), a fixed count of objects per run
  get  ranged GETs of 64 KiB at random offsets of 16 MiB objects (pattern=rand_read block_kb=64),
       for `seconds`, over objects laid out before the window

The reference runs in `writers` spawned processes released together (as iosweep's workers are),
each with its own client from workloads.targets.s3.client (the same botocore Config: timeouts, no
retries, checksums only when required, pool), and iodepth threads per process (1: a plain loop).
Its PUT body is os.urandom bytes generated once per process before the window and sent again and
again (iosweep generates a fresh dgen-py object per PUT, in a thread, as its users' runs do), as a
bytearray, which botocore sends as is, as iosweep's (--ref-body bytes: botocore wraps bytes in a
BytesIO that http.client sends in 8 KiB blocks, slower: the loop a user may write); its GETs read
the body into a preallocated buffer with readinto(), as iosweep does. MiB/s on both sides is
bytes / (last end - first start). iosweep and the loop run back to back in pairs, alternating
which goes first, so both see the same machine noise; the verdict is the median per-pair ratio.

With no --endpoint-url the script starts its own SeaweedFS server (tests/conftest.py's S3Server,
`weed` on PATH) and stops it at the end; with --endpoint-url it uses that server and boto3's
credentials chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...). Either way it deletes every
object it wrote (all under one prefix `s3-overhead-<pid>/`).

    python benchmarks/s3_overhead.py [pairs] [seconds]
           [--writers 1,2] [--iodepth 1] [--cases put,get] [--put-objects 256] [--read-object-mb 16]
           [--read-objects 4] [--ref-body bytearray|bytes] [--endpoint-url URL --bucket NAME]
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from workloads import DataSpec, Spec, run  # noqa: E402
from workloads.spec import S3Spec  # noqa: E402
from workloads.targets.s3 import client  # noqa: E402

MiB = 1 << 20
BUDGET = 0.95


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# --- the reference: a minimal boto3 loop, one spawned process per writer ----------------------------------------------

def reference_worker(s3: S3Spec, case: dict, worker: int, prefix: str, ready, go, out) -> None:
    """Lay out (get), say ready, wait for go, run the requests, put (worker, t_start, t_end, bytes, cpu s)."""
    try:
        depth, n, size = case["iodepth"], case["objects"], case["object_bytes"]
        c = client(s3, depth)
        bucket = s3.bucket
        keys = [f"{prefix}w{worker}/o{i}" for i in range(n)]
        body = os.urandom(size)  # generated once, before the window, PUT again and again
        if case["body"] == "bytearray":  # sent as is; botocore wraps bytes in a BytesIO (read in 8 KiB blocks)
            body = bytearray(body)
        if case["name"] == "get":
            for key in keys:
                c.put_object(Bucket=bucket, Key=key, Body=body)
        block, seconds = case["block"], case["seconds"]
        per = size // block
        clock = time.perf_counter_ns
        ready.put(worker)
        go.wait()
        t0, cpu0 = clock(), _cpu_s()
        deadline = t0 + int(seconds * 1e9) if case["name"] == "get" else None

        if case["name"] == "put":
            def loop(mine: list, todo) -> None:
                for i in todo:
                    c.put_object(Bucket=bucket, Key=keys[i], Body=body)
                    mine[0] += size
        else:
            def loop(mine: list, rng) -> None:
                buf = memoryview(bytearray(block))
                while clock() < deadline:
                    off = rng.randrange(per) * block
                    r = c.get_object(Bucket=bucket, Key=keys[rng.randrange(n)], Range=f"bytes={off}-{off + block - 1}")
                    b, got = r["Body"], 0
                    while got < block:
                        k = b.readinto(buf[got:])
                        if not k:
                            break
                        got += k
                    b.close()
                    if got != block:
                        raise RuntimeError(f"{got} of {block} bytes came back")
                    mine[0] += got

        counts = [[0] for _ in range(depth)]
        if depth == 1:
            loop(counts[0], range(n) if case["name"] == "put" else random.Random(worker))
        else:
            work = [range(t, n, depth) if case["name"] == "put" else random.Random(worker * 1000 + t)
                    for t in range(depth)]
            threads = [threading.Thread(target=loop, args=(counts[t], work[t])) for t in range(depth)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        t1 = clock()
        out.put((worker, t0, t1, sum(x[0] for x in counts), _cpu_s() - cpu0))
    except BaseException as e:  # noqa: BLE001 -- said to the parent, which fails the run
        try:
            ready.put(worker)
        finally:
            out.put((worker, e))


def reference(s3: S3Spec, case: dict, writers: int, prefix: str) -> tuple[float, float]:
    """(MiB/s, CPU % of one core summed over the processes) of the loop in `writers` spawned processes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=reference_worker, args=(s3, case, w, prefix, ready, go, out), daemon=True)
             for w in range(writers)]
    for p in procs:
        p.start()
    def collect(q, what: str) -> list:
        """One item from every worker; a worker that died without one (e.g. spawn could not import this
        module) fails the run instead of a wait without end."""
        import queue

        got, until = [], time.monotonic() + 600
        while len(got) < len(procs):
            try:
                got.append(q.get(timeout=0.5))
            except queue.Empty:
                dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if dead or time.monotonic() > until:
                    raise RuntimeError(f"reference worker {'exited with ' + str(dead[0]) if dead else 'timed out'} "
                                       f"before it was {what}") from None
        return got

    try:
        collect(ready, "ready")
        go.set()
        results = collect(out, "done")
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    failed = [r[1] for r in results if len(r) == 2]
    if failed:
        raise RuntimeError(f"reference worker failed: {failed[0]!r}")
    t0, t1 = min(r[1] for r in results), max(r[2] for r in results)
    el = (t1 - t0) / 1e9
    return sum(r[3] for r in results) / MiB / el, 100 * sum(r[4] for r in results) / el


# --- iosweep ----------------------------------------------------------------------------------------------------------

def iosweep(s3: S3Spec, case: dict, writers: int) -> tuple[float, float]:
    common = dict(target="s3", s3=s3, writers=writers, iodepth=case["iodepth"], object_bytes=case["object_bytes"],
                  size_bytes=case["objects"] * case["object_bytes"] * writers)
    if case["name"] == "put":
        spec = Spec(pattern="seq_write", block_size=case["object_bytes"], data=DataSpec(refill=case["refill"]),
                    **common)
    else:
        spec = Spec(pattern="rand_read", block_size=case["block"], duration_s=case["seconds"], **common)
    m = run(spec).metrics()
    return m["throughput_mib_s"], m.get("cpu_util_pct", float("nan"))


# --- the pairs --------------------------------------------------------------------------------------------------------

def delete_prefix(c, bucket: str, prefix: str) -> int:
    n = 0
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            c.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            n += len(keys)
    return n


def measure(s3: S3Spec, case: dict, writers: int, pairs: int, root: str) -> dict:
    c = client(s3)
    sides = {"iosweep": [], "reference": []}
    cpu = {"iosweep": [], "reference": []}
    ratios = []
    for i in range(pairs):
        order = ("reference", "iosweep") if i % 2 else ("iosweep", "reference")
        got = {}
        for side in order:
            if side == "iosweep":
                got[side] = iosweep(replace(s3, prefix=f"{root}iosweep/"), case, writers)
            else:
                prefix = f"{root}ref/{case['name']}-{writers}-{i}/"
                try:
                    got[side] = reference(s3, case, writers, prefix)
                finally:
                    delete_prefix(c, s3.bucket, prefix)
        for side in sides:
            sides[side].append(got[side][0])
            cpu[side].append(got[side][1])
        ratios.append(got["iosweep"][0] / got["reference"][0])
        print(f"    pair {i + 1}/{pairs} ({order[0]} first): iosweep {got['iosweep'][0]:8.1f}  "
              f"reference {got['reference'][0]:8.1f} MiB/s  ratio {ratios[-1]:.3f}", flush=True)
    return {"sides": sides, "cpu": cpu, "ratios": ratios, "ratio": statistics.median(ratios)}


def describe(case: dict) -> str:
    if case["name"] == "put":
        return f"PUT {case['object_bytes'] // MiB} MiB objects, {case['objects']} per writer"
    return (f"GET {case['block'] >> 10} KiB ranges of {case['object_bytes'] // MiB} MiB objects "
            f"({case['objects']} per writer), {case['seconds']:g} s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pairs", nargs="?", type=int, default=5)
    ap.add_argument("seconds", nargs="?", type=float, default=3.0, help="the GET case's window")
    ap.add_argument("--writers", default="1", help="process counts to run, comma-separated (e.g. 1,2)")
    ap.add_argument("--iodepth", type=int, default=1)
    ap.add_argument("--cases", default="put,get")
    ap.add_argument("--put-objects", type=int, default=256, help="1 MiB objects PUT per run (split over writers)")
    ap.add_argument("--read-object-mb", type=int, default=16)
    ap.add_argument("--read-objects", type=int, default=4, help="objects laid out per writer for the GET case")
    ap.add_argument("--refill", choices=("true", "false"), default="true",
                    help="iosweep's PUT data: a fresh dgen-py object per PUT (true, its default) or one object "
                         "PUT again and again (false: data.refill=false, as the reference)")
    ap.add_argument("--ref-body", choices=("bytearray", "bytes"), default="bytearray",
                    help="the loop's PUT body type: bytearray (iosweep's: sent as is) or bytes (botocore wraps it "
                         "in a BytesIO that http.client sends in 8 KiB blocks)")
    ap.add_argument("--endpoint-url", default=None, help="use this server (credentials: AWS_* variables)")
    ap.add_argument("--bucket", default="iosweep-s3-overhead")
    a = ap.parse_args(argv)
    writer_counts = [int(w) for w in a.writers.split(",")]
    t_begin = time.monotonic()

    server, tmp = None, None
    if a.endpoint_url is None:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from conftest import S3Server

        tmp = tempfile.TemporaryDirectory(prefix="iosweep-s3-overhead-")
        server = S3Server(Path(tmp.name)).start()
        s3 = S3Spec(endpoint_url=server.endpoint_url, bucket=a.bucket, region=server.region,
                    access_key_id=server.access_key, secret_access_key=server.secret_key)
        where = f"weed mini (pid {server.pid}) at {server.endpoint_url}, started in {server.start_seconds:.1f} s"
    else:
        s3 = S3Spec(endpoint_url=a.endpoint_url, bucket=a.bucket,
                    region=os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1")))
        where = a.endpoint_url
    root = f"s3-overhead-{os.getpid()}/"
    c = client(s3)
    created = False
    results = []
    try:
        try:
            c.head_bucket(Bucket=s3.bucket)
        except Exception:  # noqa: BLE001 -- missing: ours to make (and to remove)
            c.create_bucket(Bucket=s3.bucket)
            created = True
        cases = {"put": {"name": "put", "object_bytes": MiB, "objects": a.put_objects, "block": MiB, "seconds": None},
                 "get": {"name": "get", "object_bytes": a.read_object_mb * MiB, "objects": a.read_objects,
                         "block": 64 << 10, "seconds": a.seconds}}
        print(f"iosweep target=s3 vs a minimal boto3 loop, server: {where}, bucket {s3.bucket}, "
              f"{a.pairs} pairs, iodepth {a.iodepth}", flush=True)
        for name in a.cases.split(","):
            for writers in writer_counts:
                case = dict(cases[name], iodepth=a.iodepth, body=a.ref_body, refill=a.refill == "true")
                if name == "put":
                    case["objects"] = max(1, a.put_objects // writers)
                print(f"  {describe(case)}, {writers} process(es):", flush=True)
                results.append((case, writers, measure(s3, case, writers, a.pairs, root)))
    finally:
        left = delete_prefix(c, s3.bucket, root)
        if created:
            try:
                c.delete_bucket(Bucket=s3.bucket)
            except Exception:  # noqa: BLE001 -- not empty (someone else's objects): left as it is
                pass
        if server is not None:
            server.stop()
            tmp.cleanup()

    print()
    print(f"reference: an os.urandom body generated once per process (as a {a.ref_body}) and PUT again and again; "
          "GET bodies read with readinto() into a preallocated buffer; same botocore Config "
          "(workloads.targets.s3.client); iosweep's PUT data: "
          + ("a fresh dgen-py object per PUT (data.refill=true)" if a.refill == "true" else
             "one dgen-py object PUT again and again (data.refill=false)"))
    print(f"{'case':<52} {'procs':>5} {'iosweep':>9} {'ref':>9} {'cpu% io/ref':>12}  per-pair ratios"
          f"{'':<22} median  budget")
    worst = []
    for case, writers, r in results:
        io, ref = statistics.median(r["sides"]["iosweep"]), statistics.median(r["sides"]["reference"])
        cpu = f"{statistics.median(r['cpu']['iosweep']):.0f}/{statistics.median(r['cpu']['reference']):.0f}"
        verdict = "PASS" if r["ratio"] >= BUDGET else "BELOW"
        worst.append(verdict)
        print(f"{describe(case):<52} {writers:>5} {io:9.1f} {ref:9.1f} {cpu:>12}  "
              f"{str([round(x, 3) for x in r['ratios']]):<37} {r['ratio']:.3f}  >= {BUDGET} {verdict}")
    print(f"(MiB/s medians; objects left behind and removed at the end: {left}; run time "
          f"{time.monotonic() - t_begin:.0f} s)")
    return 0 if all(v == "PASS" for v in worst) else 1


if __name__ == "__main__":
    sys.exit(main())
