/* What the C issue functions of the in-process engines share (workloads/_hotloop*.c): the op clock
 * (the invariant TSC, calibrated in _hotloop.c), the log-linear histogram and buffer helpers, and the
 * issue functions the module's method table lists. One C file per engine: _hotloop.c (run_ops: sync
 * and null, and the module), _hotloop_uring.c (engine=uring), _hotloop_mmap.c (engine=mmap).
 */
#ifndef IOSWEEP_HOTLOOP_H
#define IOSWEEP_HOTLOOP_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#if defined(__x86_64__)
#include <x86intrin.h>
#endif
extern int use_tsc;         /* 1 where the kernel says the TSC is invariant (see calibrate in _hotloop.c) */
extern double ns_per_tick;  /* TSC ticks to ns, calibrated against CLOCK_MONOTONIC at import */
void calibrate(void);

static inline uint64_t ticks(void) {
#if defined(__x86_64__)
    if (use_tsc) return __rdtsc();
#endif
    return (uint64_t)now_ns();
}
static inline int64_t ticks_to_ns(uint64_t t) { return use_tsc ? (int64_t)((double)t * ns_per_tick) : (int64_t)t; }

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

static inline int get_buffer(PyObject *obj, Py_buffer *view, int writable) {
    if (obj == Py_None) {
        view->obj = NULL;
        view->buf = NULL;
        view->len = 0;
        return 0;
    }
    return PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE);
}

static inline void put_buffer(Py_buffer *view) {
    if (view->obj != NULL) PyBuffer_Release(view);
}

/* Variable-length ops (`lengths`, int64 per op, or no buffer): every op of first .. first+count-1 must
 * move > 0 bytes, a read at most `rmax` (its buffer), a write at most `block` (a block of the write
 * chunk). 0, or -1 with a ValueError set. */
static inline int check_lengths(const Py_buffer *lengths, Py_ssize_t first, Py_ssize_t count, const void *flags,
                                int all_reads, Py_ssize_t rmax, Py_ssize_t block, const char *who) {
    if (lengths->obj == NULL) return 0;
    if ((first + count) * (Py_ssize_t)sizeof(int64_t) > lengths->len) {
        PyErr_Format(PyExc_ValueError, "%s: lengths do not match the requested ops", who);
        return -1;
    }
    const int64_t *lens = (const int64_t *)lengths->buf;
    const uint8_t *is_read = (const uint8_t *)flags;
    for (Py_ssize_t i = first; i < first + count; i++) {
        int read = is_read ? is_read[i] : all_reads;
        if (lens[i] <= 0 || lens[i] > (read ? rmax : block)) {
            PyErr_Format(PyExc_ValueError, "%s: op %zd has length %lld: must be 1 .. %zd bytes", who, i,
                         (long long)lens[i], read ? rmax : block);
            return -1;
        }
    }
    return 0;
}

/* the issue functions (see each file's head comment) */
PyObject *uring_open(PyObject *self, PyObject *args);
PyObject *uring_ops(PyObject *self, PyObject *args);
PyObject *uring_drain(PyObject *self, PyObject *args);
PyObject *uring_close(PyObject *self, PyObject *args);
PyObject *uring_enters(PyObject *self, PyObject *args);
PyObject *uring_inflight(PyObject *self, PyObject *args);
PyObject *uring_probe(PyObject *self, PyObject *args);
PyObject *mmap_ops(PyObject *self, PyObject *args);
PyObject *append_ops(PyObject *self, PyObject *args);
PyObject *append_sync(PyObject *self, PyObject *args);
PyObject *append_map(PyObject *self, PyObject *args);
PyObject *append_unmap(PyObject *self, PyObject *args);
PyObject *append_fallocate(PyObject *self, PyObject *args);

#endif
