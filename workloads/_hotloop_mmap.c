/* engine=mmap: each op is a memory access to a MAP_SHARED mapping of the file.
 *
 * mmap_ops(map, map_off, touch, offsets, first, count, flags, wbuf, wi, rbuf, block,
 *          hist_r, stats_r, hist_w, stats_w, faults, timed, stop, deadline[, lengths]) -> (done, wi, nr, nw, err, ret)
 *   lengths: as run_ops' (None: every op is block bytes); a 4th element of stats_* counts the bytes.
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
#include "_hotloop.h"
#include <setjmp.h>
#include <signal.h>
#include <sys/resource.h>

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

PyObject *mmap_ops(PyObject *self, PyObject *args) {
    int touch, timed;
    long long map_off, deadline;
    Py_ssize_t first, count, wi_in, block;
    PyObject *map_o, *offsets_o, *flags_o, *wbuf_o, *rbuf_o, *hist_r_o, *stats_r_o, *hist_w_o, *stats_w_o, *faults_o;
    PyObject *stop_o, *lengths_o = Py_None;
    if (!PyArg_ParseTuple(args, "OLpOnnOOnOnOOOOOpOL|O", &map_o, &map_off, &touch, &offsets_o, &first, &count,
                          &flags_o, &wbuf_o, &wi_in, &rbuf_o, &block, &hist_r_o, &stats_r_o, &hist_w_o, &stats_w_o,
                          &faults_o, &timed, &stop_o, &deadline, &lengths_o))
        return NULL;

    Py_buffer map, offsets, flags, wbuf, rbuf, hist_r, stats_r, hist_w, stats_w, faults, stop, lengths;
    map.obj = offsets.obj = flags.obj = wbuf.obj = rbuf.obj = stop.obj = faults.obj = lengths.obj = NULL;
    hist_r.obj = stats_r.obj = hist_w.obj = stats_w.obj = NULL;
    PyObject *result = NULL;
    /* the mapping is writable only when the pattern writes (wbuf given) */
    if (get_buffer(map_o, &map, wbuf_o != Py_None) || get_buffer(offsets_o, &offsets, 0) ||
        get_buffer(flags_o, &flags, 0) || get_buffer(wbuf_o, &wbuf, 0) || get_buffer(rbuf_o, &rbuf, 1) ||
        get_buffer(hist_r_o, &hist_r, 1) || get_buffer(stats_r_o, &stats_r, 1) || get_buffer(hist_w_o, &hist_w, 1) ||
        get_buffer(stats_w_o, &stats_w, 1) || get_buffer(faults_o, &faults, 1) || get_buffer(stop_o, &stop, 0) ||
        get_buffer(lengths_o, &lengths, 0))
        goto out;
    if (map.obj == NULL || faults.len < 2 * (Py_ssize_t)sizeof(int64_t) || block <= 0 || first < 0 || count < 0 ||
        (first + count) * (Py_ssize_t)sizeof(int64_t) > offsets.len || (flags.obj && first + count > flags.len) ||
        (rbuf.obj && rbuf.len < block) || hist_r.len != N_BUCKETS * (Py_ssize_t)sizeof(int64_t) ||
        hist_w.len != hist_r.len || stats_r.len < 3 * (Py_ssize_t)sizeof(int64_t) ||
        stats_w.len < 3 * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "mmap_ops: buffers do not match the requested ops");
        goto out;
    }
    if (check_lengths(&lengths, first, count, flags.buf, rbuf.obj != NULL, rbuf.len, block, "mmap_ops")) goto out;
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
    const int64_t *lens = (const int64_t *)lengths.buf;
    int64_t *bytes_r = stats_r.len >= 4 * (Py_ssize_t)sizeof(int64_t) ? sr + 3 : NULL;
    int64_t *bytes_w = stats_w.len >= 4 * (Py_ssize_t)sizeof(int64_t) ? sw + 3 : NULL;
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
            Py_ssize_t len = lens ? (Py_ssize_t)lens[i] : block;
            if (at < 0 || at + len > mlen) {
                err = EINVAL;
                break;
            }
            char *p = mbase + at;
            uint64_t t0 = timed ? ticks() : 0;
            bus_armed = 1;
            if (!read) {
                memcpy(p, wbase + wi * block, (size_t)len);
            } else if (touch) {
                unsigned char acc = 0;
                for (Py_ssize_t k = 0; k < len; k += PAGE) acc ^= ((volatile const unsigned char *)p)[k];
                touch_sink = acc;
            } else {
                memcpy(rdst, p, (size_t)len);
            }
            bus_armed = 0;
            uint64_t t1 = timed ? ticks() : 0;
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
    put_buffer(&lengths);
    return result;
}
