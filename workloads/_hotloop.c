/* The per-op loop of the in-process engines, in C: the module, its clock, and run_ops (engine=sync and
 * engine=null). engine=uring's issue functions are in _hotloop_uring.c, engine=mmap's in
 * _hotloop_mmap.c; what they share is in _hotloop.h.
 *
 * Why C: in CPython each time.perf_counter_ns() call costs ~100 ns here, so timing every op
 * cost 12-22% of a 4 KiB cached read (~1.2-1.9 us). This loop times each op with two reads of
 * the CPU's invariant TSC (~11 ns each on this VM, against 31 ns for clock_gettime; fio's
 * default clocksource=cpu does the same), converted to ns with a factor calibrated against
 * CLOCK_MONOTONIC at import; where the TSC is not invariant it uses clock_gettime. It adds each
 * latency straight into the log-linear histogram, and releases the GIL while it runs, so
 * dgen-py's producer thread fills buffers meanwhile. Plans, buffers, ramp and reduction stay in
 * Python.
 *
 * run_ops(fd, mode, offsets, first, count, flags, wbuf, wi, rbuf, block,
 *         hist_r, stats_r, hist_w, stats_w, timed, stop, deadline) -> (done, wi, nr, nw, err, ret)
 *   mode    0: pread/pwrite; 1: no I/O (the null engine)
 *   offsets int64 byte offsets; ops first .. first+count-1 are run
 *   flags   None (every op is a read if rbuf is given, else a write) or uint8 per op, 1 = read
 *   wbuf    the current write chunk: write i uses block wi of it; the loop returns when the chunk
 *           is used up and a write is next, so the caller can hand it the next chunk
 *   hist_*  int64 counts of the log-linear latency histogram (workloads/metrics.py: SUB_BITS=7,
 *           MAX_EXP=42); each timed op adds one to its bucket, so nothing is buffered or folded
 *   stats_* int64[3]: sum, min (start it at INT64_MAX), max of the latencies (ns), updated in place
 *   nr, nw  ops read / written by this call
 *   stop    None or a one-byte shared buffer: the loop returns after the op during which it became
 *           non-zero (a stop request reaches the worker within one op, not one batch)
 *   deadline CLOCK_MONOTONIC ns after which the loop returns (0: none); checked after every op
 *   err     0, an errno, or -1 for a short transfer of `ret` bytes
 *   lengths optional, None (every op is `block` bytes: the fast path) or int64 bytes per op: read i
 *           reads lengths[i] bytes into rbuf (rbuf must hold the largest), write i writes lengths[i]
 *           <= block bytes of block wi (variable-length ops: trace replay, merged requests)
 *   stats_* with a 4th element, it counts the bytes the ops moved (the real bytes, whatever their lengths)
 */
#include "_hotloop.h"

int use_tsc = 0;
double ns_per_tick = 1.0;

#if defined(__x86_64__)
/* Use the TSC only where the kernel says it is invariant (constant rate, never stops). */
void calibrate(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[4096];
    int constant = 0, nonstop = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "flags", 5) == 0) {
            constant = strstr(line, " constant_tsc") != NULL;
            nonstop = strstr(line, " nonstop_tsc") != NULL;
            break;
        }
    }
    if (f) fclose(f);
    if (!(constant && nonstop)) return;
    int64_t t0 = now_ns();
    uint64_t c0 = __rdtsc();
    while (now_ns() - t0 < 20000000) /* 20 ms: the factor is good to ~1e-6 */
        ;
    int64_t t1 = now_ns();
    uint64_t c1 = __rdtsc();
    if (c1 <= c0) return;
    ns_per_tick = (double)(t1 - t0) / (double)(c1 - c0);
    use_tsc = 1;
}
#else
void calibrate(void) {}
#endif

static PyObject *run_ops(PyObject *self, PyObject *args) {
    int fd, mode, timed;
    Py_ssize_t first, count, wi, block, nr = 0, nw = 0;
    long long deadline;
    PyObject *offsets_o, *flags_o, *wbuf_o, *rbuf_o, *hist_r_o, *stats_r_o, *hist_w_o, *stats_w_o, *stop_o;
    PyObject *lengths_o = Py_None;
    if (!PyArg_ParseTuple(args, "iiOnnOOnOnOOOOpOL|O", &fd, &mode, &offsets_o, &first, &count, &flags_o, &wbuf_o,
                          &wi, &rbuf_o, &block, &hist_r_o, &stats_r_o, &hist_w_o, &stats_w_o, &timed, &stop_o,
                          &deadline, &lengths_o))
        return NULL;

    Py_buffer offsets, flags, wbuf, rbuf, hist_r, stats_r, hist_w, stats_w, stop, lengths;
    offsets.obj = flags.obj = wbuf.obj = rbuf.obj = stop.obj = lengths.obj = NULL;
    hist_r.obj = stats_r.obj = hist_w.obj = stats_w.obj = NULL;
    PyObject *result = NULL;
    if (get_buffer(offsets_o, &offsets, 0) || get_buffer(flags_o, &flags, 0) || get_buffer(wbuf_o, &wbuf, 0) ||
        get_buffer(rbuf_o, &rbuf, 1) || get_buffer(hist_r_o, &hist_r, 1) || get_buffer(stats_r_o, &stats_r, 1) ||
        get_buffer(hist_w_o, &hist_w, 1) || get_buffer(stats_w_o, &stats_w, 1) || get_buffer(stop_o, &stop, 0) ||
        get_buffer(lengths_o, &lengths, 0))
        goto out;
    if (block <= 0 || first < 0 || count < 0 || (first + count) * (Py_ssize_t)sizeof(int64_t) > offsets.len ||
        (flags.obj && first + count > flags.len) || (rbuf.obj && rbuf.len < block) ||
        hist_r.len != N_BUCKETS * (Py_ssize_t)sizeof(int64_t) || hist_w.len != hist_r.len ||
        stats_r.len < 3 * (Py_ssize_t)sizeof(int64_t) || stats_w.len < 3 * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "run_ops: buffers do not match the requested ops");
        goto out;
    }
    if (check_lengths(&lengths, first, count, flags.buf, rbuf.obj != NULL, rbuf.len, block, "run_ops")) goto out;

    const int64_t *offs = (const int64_t *)offsets.buf;
    const uint8_t *is_read = (const uint8_t *)flags.buf;
    char *wbase = (char *)wbuf.buf;
    Py_ssize_t wper = wbuf.len / block;
    int64_t *hr = (int64_t *)hist_r.buf, *hw = (int64_t *)hist_w.buf;
    int64_t *sr = (int64_t *)stats_r.buf, *sw = (int64_t *)stats_w.buf;
    const int64_t *lens = (const int64_t *)lengths.buf;
    int64_t *bytes_r = stats_r.len >= 4 * (Py_ssize_t)sizeof(int64_t) ? sr + 3 : NULL;
    int64_t *bytes_w = stats_w.len >= 4 * (Py_ssize_t)sizeof(int64_t) ? sw + 3 : NULL;
    int all_reads = rbuf.obj != NULL && is_read == NULL;
    volatile const char *stop_flag = (volatile const char *)stop.buf;
    Py_ssize_t done = 0;
    int err = 0;
    ssize_t ret = 0;

    Py_BEGIN_ALLOW_THREADS
    /* the deadline in the loop's own clock: ticks from now */
    uint64_t start = ticks();
    int64_t left_ns = deadline ? deadline - now_ns() : 0;
    uint64_t deadline_ticks = deadline ? start + (uint64_t)((left_ns > 0 ? left_ns : 0) /
                                                            (use_tsc ? ns_per_tick : 1.0)) : 0;
    for (; done < count; done++) {
        Py_ssize_t i = first + done;
        int read = is_read ? is_read[i] : all_reads;
        if (!read && wi >= wper) break;
        ssize_t len = lens ? (ssize_t)lens[i] : block;
        uint64_t t0 = timed ? ticks() : 0;
        if (mode == 1)
            ret = len;
        else if (read)
            ret = pread(fd, rbuf.buf, (size_t)len, (off_t)offs[i]);
        else
            ret = pwrite(fd, wbase + wi * block, (size_t)len, (off_t)offs[i]);
        uint64_t t1 = timed ? ticks() : 0;
        if (ret != len) {
            err = ret < 0 ? errno : -1;
            break;
        }
        if (read) {
            if (timed) record(hr, sr, ticks_to_ns(t1 - t0));
            if (bytes_r) *bytes_r += len;
            nr++;
        } else {
            if (timed) record(hw, sw, ticks_to_ns(t1 - t0));
            if (bytes_w) *bytes_w += len;
            nw++;
            wi++;
        }
        if (stop_flag && *stop_flag) {
            done++;
            break;
        }
        if (deadline && (timed ? t1 : ticks()) >= deadline_ticks) {
            done++;
            break;
        }
    }
    Py_END_ALLOW_THREADS

    result = Py_BuildValue("nnnnin", done, wi, nr, nw, err, (Py_ssize_t)ret);
out:
    put_buffer(&offsets);
    put_buffer(&flags);
    put_buffer(&wbuf);
    put_buffer(&rbuf);
    put_buffer(&hist_r);
    put_buffer(&stats_r);
    put_buffer(&hist_w);
    put_buffer(&stats_w);
    put_buffer(&stop);
    put_buffer(&lengths);
    return result;
}


static PyObject *clock_source(PyObject *self, PyObject *unused) {
    return use_tsc ? PyUnicode_FromFormat("tsc (%d ps/tick)", (int)(ns_per_tick * 1000 + 0.5))
                   : PyUnicode_FromString("clock_gettime(CLOCK_MONOTONIC)");
}

static PyMethodDef methods[] = {
    {"run_ops", run_ops, METH_VARARGS, "Run a batch of timed positional I/O ops (see the module source)."},
    {"uring_open", uring_open, METH_VARARGS, "Set up a worker's io_uring ring (see engine=uring above)."},
    {"uring_ops", uring_ops, METH_VARARGS, "Run ops through the ring with up to depth in flight."},
    {"uring_drain", uring_drain, METH_VARARGS, "Complete every op still in flight."},
    {"uring_close", uring_close, METH_VARARGS, "Complete what is in flight and free the ring."},
    {"uring_enters", uring_enters, METH_VARARGS, "io_uring_enter calls made by the ring so far."},
    {"uring_inflight", uring_inflight, METH_VARARGS, "(ops, writes) in flight."},
    {"uring_probe", uring_probe, METH_VARARGS, "0 if io_uring_setup works here, else its errno."},
    {"mmap_ops", mmap_ops, METH_VARARGS, "Run a batch of timed memory accesses to a file mapping (engine=mmap)."},
    {"append_ops", append_ops, METH_VARARGS, "Append records with a durability policy (pattern=append)."},
    {"append_sync", append_sync, METH_VARARGS, "Flush the append buffer, and fsync once if asked."},
    {"append_map", append_map, METH_VARARGS, "Map a file for appends by stores (pattern=append mode mmap)."},
    {"append_unmap", append_unmap, METH_VARARGS, "Unmap what append_map mapped."},
    {"append_fallocate", append_fallocate, METH_VARARGS, "fallocate(FALLOC_FL_KEEP_SIZE) a range."},
    {"clock_source", clock_source, METH_NOARGS, "The clock that times each op."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hotloop", NULL, -1, methods};

PyMODINIT_FUNC PyInit__hotloop(void) {
    calibrate();
    return PyModule_Create(&module);
}

