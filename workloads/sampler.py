"""The run's time series while it runs: per-interval throughput from the workers' published op
counters, the machine's CPU, memory and device traffic over the same interval, and the progress
calls. Also the device counters at the end of the ramp, where the metrics' window starts."""
from __future__ import annotations

import os
import time

import psutil

from .metrics import MIB
from .prepare import device_counters
from .spec import Spec


def system_sample(net_at_start) -> dict:
    """The machine's state under the names of MLflow's System Metrics (mlflow/system_metrics/metrics):
    the runner logs them as system/<name>. Network traffic counts from the start of the window."""
    mem, disk, net = psutil.virtual_memory(), psutil.disk_usage(os.sep), psutil.net_io_counters()
    return {"cpu_utilization_percentage": psutil.cpu_percent(None),
            "system_memory_usage_megabytes": mem.used / 1e6, "system_memory_usage_percentage": mem.percent,
            "disk_usage_percentage": disk.percent, "disk_usage_megabytes": disk.used / 1e6,
            "disk_available_megabytes": disk.free / 1e6,
            "network_receive_megabytes": (net.bytes_recv - net_at_start.bytes_recv) / 1e6,
            "network_transmit_megabytes": (net.bytes_sent - net_at_start.bytes_sent) / 1e6}


class Sampler:
    """Per-interval throughput from the workers' published op counters, the machine's CPU, memory
    and device traffic over the same interval, and the progress calls."""

    def __init__(self, spec: Spec, ops_done, starts, progress, device: str | None, bytes_done=None):
        self.spec, self.ops_done, self.starts, self.progress = spec, ops_done, starts, progress
        self.bytes_done = bytes_done  # the workers' bytes so far (ops vary in length); None: ops x block_size
        self.device = device
        self.t0 = None
        self.rows: list[dict] = []
        self.last_t = self.last_ops = self.last_bytes = 0
        self.last_dev = None
        self.dev_after_ramp = None  # device counters when ramp_s ended (to one poll, <= 50 ms)
        self.next_log = self.next_progress = 0

    def poll(self, final: bool = False) -> None:
        """final: the workers are done; a run shorter than one interval still gets one sample."""
        now = time.perf_counter_ns()
        if self.t0 is None:
            if not all(self.starts):
                return
            self.t0 = min(self.starts)
            self.next_log = self.t0 + int(self.spec.log_interval_s * 1e9)
            self.next_progress = self.t0 + 1_000_000_000
            self.last_t = self.t0
            self.last_dev = device_counters(self.device)
            psutil.cpu_percent(None)  # starts psutil's interval
            self.net_at_start = psutil.net_io_counters()
        if self.dev_after_ramp is None and self.spec.ramp_s and now - self.t0 >= self.spec.ramp_s * 1e9:
            self.dev_after_ramp = device_counters(self.device)
        if final and not self.rows:
            self.next_log = now
        if now < self.next_log and now < self.next_progress:
            return
        ops = sum(self.ops_done)
        done_b = sum(self.bytes_done) if self.bytes_done is not None else ops * self.spec.block_size
        if now >= self.next_log:
            dt = (now - self.last_t) / 1e9
            d_ops = ops - self.last_ops
            t_s = (now - self.t0) / 1e9
            row = {"t_s": t_s, "mib_s": (done_b - self.last_bytes) / MIB / dt, "iops": d_ops / dt,
                   "ramp": t_s - dt / 2 < self.spec.ramp_s,  # mostly inside the warm-up
                   **system_sample(self.net_at_start)}
            dev = device_counters(self.device)
            if dev and self.last_dev:
                row["device_read_mib_s"] = (dev[0] - self.last_dev[0]) / MIB / dt
                row["device_write_mib_s"] = (dev[1] - self.last_dev[1]) / MIB / dt
            self.rows.append(row)
            self.last_t, self.last_ops, self.last_dev, self.last_bytes = now, ops, dev, done_b
            self.next_log += int(self.spec.log_interval_s * 1e9)
        if now >= self.next_progress and self.progress is not None:
            if self.spec.metadata:  # files handled (all phases), not bytes
                rate = self.rows[-1]["iops"] if self.rows else 0.0
                self.progress((now - self.t0) / 1e9, ops, rate, unit="files")
            else:
                rate = self.rows[-1]["mib_s"] if self.rows else 0.0
                self.progress((now - self.t0) / 1e9, done_b, rate)
            self.next_progress += 1_000_000_000
