/* The per-op loop of the in-process engines, in C.
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
 *
 * mmap_ops(map, map_off, touch, offsets, first, count, flags, wbuf, wi, rbuf, block,
 *          hist_r, stats_r, hist_w, stats_w, faults, timed, stop, deadline) -> (done, wi, nr, nw, err, ret)
 *   The engine=mmap issue function: the same contract as run_ops, but each op is a memory access
 *   to `map` (a buffer over a MAP_SHARED mapping of the file starting at file offset `map_off`):
 *   a read memcpy's the block into rbuf, or with touch=1 reads one byte per 4 KiB page of it; a
 *   write memcpy's block wi of wbuf into the mapping. Page faults are part of the op's time.
 *   faults  int64[2]: the calling thread's minor and major page faults during this call are added
 *           (getrusage RUSAGE_THREAD around the loop: the faults of the accesses, not the
 *           interpreter's between calls)
 *   err     0; EINVAL for an op outside the mapping; EFAULT when an access raised SIGBUS (the
 *           file shrank under the mapping, or the device failed a page-in): the loop catches it
 *           and returns, instead of the kernel killing the process
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#if defined(__x86_64__)
#include <string.h>
#include <x86intrin.h>
static int use_tsc = 0;
static double ns_per_tick = 1.0;

/* Use the TSC only where the kernel says it is invariant (constant rate, never stops). */
static void calibrate(void) {
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
static inline uint64_t ticks(void) { return use_tsc ? __rdtsc() : (uint64_t)now_ns(); }
static inline int64_t ticks_to_ns(uint64_t t) { return use_tsc ? (int64_t)((double)t * ns_per_tick) : (int64_t)t; }
#else
static int use_tsc = 0;
static void calibrate(void) {}
static inline uint64_t ticks(void) { return (uint64_t)now_ns(); }
static inline int64_t ticks_to_ns(uint64_t t) { return (int64_t)t; }
#endif

#define SUB_BITS 7
#define SUB (1 << SUB_BITS)
#define MAX_EXP 42
#define N_BUCKETS (SUB + (MAX_EXP - SUB_BITS + 1) * SUB)

/* Same bucket as workloads.metrics.bucket_index(): exact below 128 ns, then 128 per power of two. */
static inline Py_ssize_t bucket(int64_t v) {
    if (v < SUB) return v < 0 ? 0 : v;
    int e = 63 - __builtin_clzll((unsigned long long)v);
    int shift = e - SUB_BITS;
    Py_ssize_t idx = SUB + (Py_ssize_t)shift * SUB + ((v >> shift) - SUB);
    return idx < N_BUCKETS ? idx : N_BUCKETS - 1;
}

static inline void record(int64_t *hist, int64_t *stats, int64_t v) {
    hist[bucket(v)]++;
    stats[0] += v;
    if (v < stats[1]) stats[1] = v;  /* the caller starts min at INT64_MAX */
    if (v > stats[2]) stats[2] = v;
}

static int get_buffer(PyObject *obj, Py_buffer *view, int writable) {
    if (obj == Py_None) {
        view->obj = NULL;
        view->buf = NULL;
        view->len = 0;
        return 0;
    }
    return PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE);
}

static void put_buffer(Py_buffer *view) {
    if (view->obj != NULL) PyBuffer_Release(view);
}

static PyObject *run_ops(PyObject *self, PyObject *args) {
    int fd, mode, timed;
    Py_ssize_t first, count, wi, block, nr = 0, nw = 0;
    long long deadline;
    PyObject *offsets_o, *flags_o, *wbuf_o, *rbuf_o, *hist_r_o, *stats_r_o, *hist_w_o, *stats_w_o, *stop_o;
    if (!PyArg_ParseTuple(args, "iiOnnOOnOnOOOOpOL", &fd, &mode, &offsets_o, &first, &count, &flags_o, &wbuf_o,
                          &wi, &rbuf_o, &block, &hist_r_o, &stats_r_o, &hist_w_o, &stats_w_o, &timed, &stop_o,
                          &deadline))
        return NULL;

    Py_buffer offsets, flags, wbuf, rbuf, hist_r, stats_r, hist_w, stats_w, stop;
    offsets.obj = flags.obj = wbuf.obj = rbuf.obj = stop.obj = NULL;
    hist_r.obj = stats_r.obj = hist_w.obj = stats_w.obj = NULL;
    PyObject *result = NULL;
    if (get_buffer(offsets_o, &offsets, 0) || get_buffer(flags_o, &flags, 0) || get_buffer(wbuf_o, &wbuf, 0) ||
        get_buffer(rbuf_o, &rbuf, 1) || get_buffer(hist_r_o, &hist_r, 1) || get_buffer(stats_r_o, &stats_r, 1) ||
        get_buffer(hist_w_o, &hist_w, 1) || get_buffer(stats_w_o, &stats_w, 1) || get_buffer(stop_o, &stop, 0))
        goto out;
    if (block <= 0 || first < 0 || count < 0 || (first + count) * (Py_ssize_t)sizeof(int64_t) > offsets.len ||
        (flags.obj && first + count > flags.len) || (rbuf.obj && rbuf.len < block) ||
        hist_r.len != N_BUCKETS * (Py_ssize_t)sizeof(int64_t) || hist_w.len != hist_r.len ||
        stats_r.len < 3 * (Py_ssize_t)sizeof(int64_t) || stats_w.len < 3 * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "run_ops: buffers do not match the requested ops");
        goto out;
    }

    const int64_t *offs = (const int64_t *)offsets.buf;
    const uint8_t *is_read = (const uint8_t *)flags.buf;
    char *wbase = (char *)wbuf.buf;
    Py_ssize_t wper = wbuf.len / block;
    int64_t *hr = (int64_t *)hist_r.buf, *hw = (int64_t *)hist_w.buf;
    int64_t *sr = (int64_t *)stats_r.buf, *sw = (int64_t *)stats_w.buf;
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
        uint64_t t0 = timed ? ticks() : 0;
        if (mode == 1)
            ret = block;
        else if (read)
            ret = pread(fd, rbuf.buf, (size_t)block, (off_t)offs[i]);
        else
            ret = pwrite(fd, wbase + wi * block, (size_t)block, (off_t)offs[i]);
        uint64_t t1 = timed ? ticks() : 0;
        if (ret != block) {
            err = ret < 0 ? errno : -1;
            break;
        }
        if (read) {
            if (timed) record(hr, sr, ticks_to_ns(t1 - t0));
            nr++;
        } else {
            if (timed) record(hw, sw, ticks_to_ns(t1 - t0));
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
    return result;
}

/* SIGBUS on a mapping: the page behind an access does not exist (the file was truncated) or could
 * not be read. The handler jumps back into mmap_ops, which reports EFAULT; a SIGBUS anywhere else
 * (another thread, or outside an access) gets the previous disposition back and happens again. */
static __thread sigjmp_buf bus_jump;
static __thread volatile sig_atomic_t bus_armed = 0;
static struct sigaction bus_previous;
static int bus_installed = 0;

static void on_sigbus(int sig, siginfo_t *info, void *ctx) {
    if (bus_armed) {
        bus_armed = 0;
        siglongjmp(bus_jump, 1);
    }
    sigaction(SIGBUS, &bus_previous, NULL);  /* returning re-runs the access under the old handler */
    bus_installed = 0;
}

static int install_sigbus(void) {
    if (bus_installed) return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, &bus_previous) != 0) return -1;
    bus_installed = 1;
    return 0;
}

#define PAGE 4096
static volatile unsigned char touch_sink;  /* touched bytes land here, so the loads are kept */

static PyObject *mmap_ops(PyObject *self, PyObject *args) {
    int touch, timed;
    long long map_off, deadline;
    Py_ssize_t first, count, wi_in, block;
    PyObject *map_o, *offsets_o, *flags_o, *wbuf_o, *rbuf_o, *hist_r_o, *stats_r_o, *hist_w_o, *stats_w_o, *faults_o;
    PyObject *stop_o;
    if (!PyArg_ParseTuple(args, "OLpOnnOOnOnOOOOOpOL", &map_o, &map_off, &touch, &offsets_o, &first, &count, &flags_o,
                          &wbuf_o, &wi_in, &rbuf_o, &block, &hist_r_o, &stats_r_o, &hist_w_o, &stats_w_o, &faults_o,
                          &timed, &stop_o, &deadline))
        return NULL;

    Py_buffer map, offsets, flags, wbuf, rbuf, hist_r, stats_r, hist_w, stats_w, faults, stop;
    map.obj = offsets.obj = flags.obj = wbuf.obj = rbuf.obj = stop.obj = faults.obj = NULL;
    hist_r.obj = stats_r.obj = hist_w.obj = stats_w.obj = NULL;
    PyObject *result = NULL;
    /* the mapping is writable only when the pattern writes (wbuf given) */
    if (get_buffer(map_o, &map, wbuf_o != Py_None) || get_buffer(offsets_o, &offsets, 0) ||
        get_buffer(flags_o, &flags, 0) || get_buffer(wbuf_o, &wbuf, 0) || get_buffer(rbuf_o, &rbuf, 1) ||
        get_buffer(hist_r_o, &hist_r, 1) || get_buffer(stats_r_o, &stats_r, 1) || get_buffer(hist_w_o, &hist_w, 1) ||
        get_buffer(stats_w_o, &stats_w, 1) || get_buffer(faults_o, &faults, 1) || get_buffer(stop_o, &stop, 0))
        goto out;
    if (map.obj == NULL || faults.len < 2 * (Py_ssize_t)sizeof(int64_t) || block <= 0 || first < 0 || count < 0 ||
        (first + count) * (Py_ssize_t)sizeof(int64_t) > offsets.len || (flags.obj && first + count > flags.len) ||
        (rbuf.obj && rbuf.len < block) || hist_r.len != N_BUCKETS * (Py_ssize_t)sizeof(int64_t) ||
        hist_w.len != hist_r.len || stats_r.len < 3 * (Py_ssize_t)sizeof(int64_t) ||
        stats_w.len < 3 * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "mmap_ops: buffers do not match the requested ops");
        goto out;
    }
    if (install_sigbus() != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto out;
    }

    char *mbase = (char *)map.buf;
    const int64_t mlen = (int64_t)map.len;
    const int64_t *offs = (const int64_t *)offsets.buf;
    const uint8_t *is_read = (const uint8_t *)flags.buf;
    char *wbase = (char *)wbuf.buf;
    char *rdst = (char *)rbuf.buf;
    Py_ssize_t wper = wbuf.len / block;
    int64_t *hr = (int64_t *)hist_r.buf, *hw = (int64_t *)hist_w.buf;
    int64_t *sr = (int64_t *)stats_r.buf, *sw = (int64_t *)stats_w.buf;
    int all_reads = rbuf.obj != NULL && is_read == NULL;
    volatile const char *stop_flag = (volatile const char *)stop.buf;
    /* volatile: they must hold their values across a siglongjmp from the SIGBUS handler */
    volatile Py_ssize_t done = 0, nr = 0, nw = 0, wi = wi_in;
    volatile int err = 0;
    int64_t *nfaults = (int64_t *)faults.buf;
    struct rusage ru0, ru1;

    Py_BEGIN_ALLOW_THREADS
    getrusage(RUSAGE_THREAD, &ru0);
    uint64_t start = ticks();
    int64_t left_ns = deadline ? deadline - now_ns() : 0;
    uint64_t deadline_ticks = deadline ? start + (uint64_t)((left_ns > 0 ? left_ns : 0) /
                                                            (use_tsc ? ns_per_tick : 1.0)) : 0;
    if (sigsetjmp(bus_jump, 1) != 0) {
        err = EFAULT;  /* the op `done` raised SIGBUS: not counted */
    } else {
        for (; done < count; done++) {
            Py_ssize_t i = first + done;
            int read = is_read ? is_read[i] : all_reads;
            if (!read && wi >= wper) break;
            int64_t at = offs[i] - map_off;
            if (at < 0 || at + block > mlen) {
                err = EINVAL;
                break;
            }
            char *p = mbase + at;
            uint64_t t0 = timed ? ticks() : 0;
            bus_armed = 1;
            if (!read) {
                memcpy(p, wbase + wi * block, (size_t)block);
            } else if (touch) {
                unsigned char acc = 0;
                for (Py_ssize_t k = 0; k < block; k += PAGE) acc ^= ((volatile const unsigned char *)p)[k];
                touch_sink = acc;
            } else {
                memcpy(rdst, p, (size_t)block);
            }
            bus_armed = 0;
            uint64_t t1 = timed ? ticks() : 0;
            if (read) {
                if (timed) record(hr, sr, ticks_to_ns(t1 - t0));
                nr++;
            } else {
                if (timed) record(hw, sw, ticks_to_ns(t1 - t0));
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
    }
    bus_armed = 0;
    getrusage(RUSAGE_THREAD, &ru1);
    nfaults[0] += ru1.ru_minflt - ru0.ru_minflt;
    nfaults[1] += ru1.ru_majflt - ru0.ru_majflt;
    Py_END_ALLOW_THREADS

    result = Py_BuildValue("nnnnin", (Py_ssize_t)done, (Py_ssize_t)wi, (Py_ssize_t)nr, (Py_ssize_t)nw, (int)err,
                           err ? (Py_ssize_t)0 : block);
out:
    put_buffer(&map);
    put_buffer(&offsets);
    put_buffer(&flags);
    put_buffer(&wbuf);
    put_buffer(&rbuf);
    put_buffer(&hist_r);
    put_buffer(&stats_r);
    put_buffer(&hist_w);
    put_buffer(&stats_w);
    put_buffer(&faults);
    put_buffer(&stop);
    return result;
}

static PyObject *clock_source(PyObject *self, PyObject *unused) {
    return use_tsc ? PyUnicode_FromFormat("tsc (%d ps/tick)", (int)(ns_per_tick * 1000 + 0.5))
                   : PyUnicode_FromString("clock_gettime(CLOCK_MONOTONIC)");
}

static PyMethodDef methods[] = {
    {"run_ops", run_ops, METH_VARARGS, "Run a batch of timed positional I/O ops (see the module source)."},
    {"mmap_ops", mmap_ops, METH_VARARGS, "Run a batch of timed memory accesses to a file mapping (engine=mmap)."},
    {"clock_source", clock_source, METH_NOARGS, "The clock that times each op."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_hotloop", NULL, -1, methods};

PyMODINIT_FUNC PyInit__hotloop(void) {
    calibrate();
    return PyModule_Create(&module);
}
