/* pattern=append: records appended to a log file, with a durability policy (workloads/append.py).
 *
 * Why C: a 128-byte record costs ~0.1-0.5 us to buffer and ~1-2 us to write(2); a Python loop adds
 * ~1 us per record and would measure itself. This loop copies or writes each record, times each
 * write(2) call (and each fsync) into its own log-linear histogram, counts records, write calls and
 * fsyncs, and releases the GIL so dgen-py's producer thread fills the next data chunk meanwhile.
 *
 * append_ops(fd, mode, chunk, ci, record, count, buf, map, state, policy, every, interval_ns,
 *            datasync, direct, limit, hist_w, stats_w, hist_s, stats_s, timed, stop, deadline)
 *     -> (done, ci, why, err, ret)
 *   mode     0 unbuffered: one write(2) per record
 *            1 buffered: records are copied into `buf` (page-aligned, its length is the buffer size);
 *              a full buffer is flushed with one write(2)
 *            2 mmap: the record is stored into `map` (an address from append_map), the file grown
 *              with ftruncate in GROW steps ahead of the stores
 *   chunk    the data: record i of this call is bytes [ci*record, (ci+1)*record) of it; the loop
 *            returns (why=1) when the chunk holds no further whole record
 *   state    int64[N_STATE] (see the ST_ names), kept by the caller between calls and files
 *   policy   0 none, 1 end, 2 every `every` records, 3 interval: when `interval_ns` passed since the
 *            last sync, 4 dsync (the fd has O_DSYNC: no fsync here). end is the caller's (append_sync)
 *   datasync fdatasync(2) instead of fsync(2); mmap: msync(MS_SYNC) either way
 *   direct   the fd has O_DIRECT (buffered mode only): flushes are pwrite at ST_FILE_OFF; a partial
 *            buffer that must reach the file (a sync, the end) is written padded with zeros to 4 KiB
 *            and its partial page kept in the buffer, so the next flush rewrites that page whole;
 *            the caller ftruncates the file back to ST_POS at the end
 *   limit    the file's share in bytes: the loop returns (why=2) before a record would pass it
 *   hist_s   the fsync latencies, a histogram of their own
 *   why      0 count records done, 1 chunk used up, 2 file full, 3 stop flag or deadline
 *   err      0, an errno, or -1 for a short write of `ret` bytes
 *
 * append_sync(fd, mode, buf, map, state, datasync, direct, hist_w, stats_w, hist_s, stats_s, timed, sync)
 *     -> (err, ret): flush what the buffer holds (a timed write), then with sync=1 one timed fsync.
 */
#include "_hotloop.h"
#include <fcntl.h>
#include <sys/mman.h>

#define PAGE 4096
#define GROW (1 << 20)  /* mmap: the file is grown this much ahead of the stores (one ftruncate per MiB) */

enum {
    ST_POS,        /* record bytes appended to the current file (in the buffer or the file) */
    ST_BUFPOS,     /* bytes in the user buffer */
    ST_SINCE,      /* records since the last sync */
    ST_LAST_SYNC,  /* ticks() of the last sync, or of the start (policy interval) */
    ST_RECORDS,    /* records appended, all files */
    ST_FSYNCS,     /* fsync/fdatasync/msync calls */
    ST_WRITES,     /* write(2) calls (unbuffered: one per record; buffered: flushes; mmap: record stores) */
    ST_FILE_OFF,   /* direct: where the next flush goes; mmap: the file's size grown so far */
    ST_SYNCED,     /* mmap: bytes of the mapping already msync'ed */
    N_STATE
};

static inline int do_flush(int fd, char *buf, int64_t *st, int direct, int partial_ok, int64_t *hw, int64_t *sw,
                           int timed, ssize_t *ret_out) {
    /* write the buffer; direct: only whole pages, the partial tail page padded (partial_ok) or kept */
    size_t n = (size_t)st[ST_BUFPOS];
    if (n == 0) return 0;
    size_t len = n, keep = 0;
    if (direct) {
        keep = n % PAGE;
        if (keep && partial_ok) {
            len = n + (PAGE - keep);
            memset(buf + n, 0, PAGE - keep);
        } else {
            len = n - keep;
            keep = 0;  /* nothing kept back: a flush of whole pages when no sync asks for the tail */
            if (len == 0) return 0;
        }
    }
    uint64_t t0 = timed ? ticks() : 0;
    ssize_t ret = direct ? pwrite(fd, buf, len, (off_t)st[ST_FILE_OFF]) : write(fd, buf, len);
    uint64_t t1 = timed ? ticks() : 0;
    *ret_out = ret;
    if (ret != (ssize_t)len) return ret < 0 ? errno : -1;
    if (timed) record(hw, sw, ticks_to_ns(t1 - t0));
    st[ST_WRITES]++;
    if (direct) {
        size_t whole = keep ? len - PAGE : len;  /* the padded partial page is written again next time */
        st[ST_FILE_OFF] += (int64_t)whole;
        size_t rest = n - whole;
        if (rest) memmove(buf, buf + whole, rest);
        st[ST_BUFPOS] = (int64_t)rest;
    } else {
        st[ST_BUFPOS] = 0;
    }
    return 0;
}

static inline int do_sync(int fd, int mode, char *map, int64_t *st, int datasync, int64_t *hs, int64_t *ss, int timed) {
    uint64_t t0 = timed ? ticks() : 0;
    int rc;
    if (mode == 2) {
        int64_t from = st[ST_SYNCED] & ~(int64_t)(PAGE - 1);
        rc = st[ST_POS] > from ? msync(map + from, (size_t)(st[ST_POS] - from), MS_SYNC) : 0;
        if (rc == 0) st[ST_SYNCED] = st[ST_POS];
    } else {
        rc = datasync ? fdatasync(fd) : fsync(fd);
    }
    uint64_t t1 = ticks();
    if (rc != 0) return errno;
    if (timed) record(hs, ss, ticks_to_ns(t1 - t0));
    st[ST_FSYNCS]++;
    st[ST_SINCE] = 0;
    st[ST_LAST_SYNC] = (int64_t)t1;
    return 0;
}

typedef struct {
    Py_buffer chunk, buf, state, hist_w, stats_w, hist_s, stats_s, stop;
} views;

static void release(views *v) {
    put_buffer(&v->chunk);
    put_buffer(&v->buf);
    put_buffer(&v->state);
    put_buffer(&v->hist_w);
    put_buffer(&v->stats_w);
    put_buffer(&v->hist_s);
    put_buffer(&v->stats_s);
    put_buffer(&v->stop);
}

static int check_hists(views *v) {
    Py_ssize_t h = N_BUCKETS * (Py_ssize_t)sizeof(int64_t);
    if (v->state.len < N_STATE * (Py_ssize_t)sizeof(int64_t) || v->hist_w.len != h || v->hist_s.len != h ||
        v->stats_w.len < 3 * (Py_ssize_t)sizeof(int64_t) || v->stats_s.len < 3 * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "append: state or histogram buffers have the wrong size");
        return -1;
    }
    return 0;
}

PyObject *append_ops(PyObject *self, PyObject *args) {
    int fd, mode, policy, datasync, direct, timed;
    Py_ssize_t ci, rlen, count, every;
    long long interval_ns, limit, deadline, map_addr;
    PyObject *chunk_o, *buf_o, *state_o, *hw_o, *sw_o, *hs_o, *ss_o, *stop_o;
    if (!PyArg_ParseTuple(args, "iiOnnnOLOinLppLOOOOpOL", &fd, &mode, &chunk_o, &ci, &rlen, &count, &buf_o,
                          &map_addr, &state_o, &policy, &every, &interval_ns, &datasync, &direct, &limit, &hw_o,
                          &sw_o, &hs_o, &ss_o, &timed, &stop_o, &deadline))
        return NULL;
    views v;
    memset(&v, 0, sizeof v);
    PyObject *result = NULL;
    if (get_buffer(chunk_o, &v.chunk, 0) || get_buffer(buf_o, &v.buf, 1) || get_buffer(state_o, &v.state, 1) ||
        get_buffer(hw_o, &v.hist_w, 1) || get_buffer(sw_o, &v.stats_w, 1) || get_buffer(hs_o, &v.hist_s, 1) ||
        get_buffer(ss_o, &v.stats_s, 1) || get_buffer(stop_o, &v.stop, 0) || check_hists(&v))
        goto out;
    if (rlen <= 0 || ci < 0 || count < 0 || mode < 0 || mode > 2 || (mode == 1 && v.buf.len < rlen) ||
        (mode == 2 && !map_addr) || (policy == 2 && every <= 0) || (direct && (mode != 1 || v.buf.len % PAGE))) {
        PyErr_SetString(PyExc_ValueError, "append_ops: arguments do not describe an append");
        goto out;
    }
    const char *data = (const char *)v.chunk.buf;
    Py_ssize_t per_chunk = v.chunk.len / rlen;
    char *buf = (char *)v.buf.buf, *map = (char *)(intptr_t)map_addr;
    Py_ssize_t bufsize = v.buf.len;
    int64_t *st = (int64_t *)v.state.buf;
    int64_t *hw = (int64_t *)v.hist_w.buf, *sw = (int64_t *)v.stats_w.buf;
    int64_t *hs = (int64_t *)v.hist_s.buf, *ss = (int64_t *)v.stats_s.buf;
    volatile const char *stop_flag = (volatile const char *)v.stop.buf;
    Py_ssize_t done = 0;
    int why = 0, err = 0;
    ssize_t ret = 0;

    Py_BEGIN_ALLOW_THREADS
    uint64_t start = ticks();
    if (st[ST_LAST_SYNC] == 0) st[ST_LAST_SYNC] = (int64_t)start;  /* interval: counted from the first call */
    int64_t left_ns = deadline ? deadline - now_ns() : 0;
    double per_tick = use_tsc ? ns_per_tick : 1.0;
    uint64_t deadline_ticks = deadline ? start + (uint64_t)((left_ns > 0 ? left_ns : 0) / per_tick) : 0;
    uint64_t interval_ticks = (uint64_t)(interval_ns / per_tick);
    for (; done < count; done++) {
        if (ci >= per_chunk) { why = 1; break; }
        if (st[ST_POS] + rlen > limit) { why = 2; break; }
        const char *rec = data + ci * rlen;
        if (mode == 0) {
            uint64_t t0 = timed ? ticks() : 0;
            ret = write(fd, rec, (size_t)rlen);
            uint64_t t1 = timed ? ticks() : 0;
            if (ret != rlen) { err = ret < 0 ? errno : -1; break; }
            if (timed) record(hw, sw, ticks_to_ns(t1 - t0));
            st[ST_WRITES]++;
        } else if (mode == 1) {
            Py_ssize_t left = rlen;
            const char *from = rec;
            while (left > 0) {  /* a record larger than the room left spans two flushes */
                Py_ssize_t room = bufsize - st[ST_BUFPOS];
                Py_ssize_t n = left < room ? left : room;
                memcpy(buf + st[ST_BUFPOS], from, (size_t)n);
                st[ST_BUFPOS] += n;
                from += n;
                left -= n;
                if (st[ST_BUFPOS] == bufsize && (err = do_flush(fd, buf, st, direct, 0, hw, sw, timed, &ret))) break;
            }
            if (err) break;
        } else {
            uint64_t t0 = timed ? ticks() : 0;
            if (st[ST_POS] + rlen > st[ST_FILE_OFF]) {  /* grow the file ahead of the stores */
                int64_t to = (st[ST_POS] + rlen + GROW - 1) / GROW * GROW;
                if (to > limit) to = limit;
                if (ftruncate(fd, (off_t)to) != 0) { err = errno; break; }
                st[ST_FILE_OFF] = to;
            }
            memcpy(map + st[ST_POS], rec, (size_t)rlen);
            uint64_t t1 = timed ? ticks() : 0;
            if (timed) record(hw, sw, ticks_to_ns(t1 - t0));
            st[ST_WRITES]++;
        }
        st[ST_POS] += rlen;
        st[ST_RECORDS]++;
        st[ST_SINCE]++;
        ci++;
        if ((policy == 2 && st[ST_SINCE] >= every) ||
            (policy == 3 && ticks() - (uint64_t)st[ST_LAST_SYNC] >= interval_ticks)) {
            if (mode == 1 && (err = do_flush(fd, buf, st, direct, 1, hw, sw, timed, &ret))) { done++; break; }
            if ((err = do_sync(fd, mode, map, st, datasync, hs, ss, timed))) { done++; break; }
        }
        if (stop_flag && *stop_flag) { done++; why = 3; break; }
        if (deadline && ticks() >= deadline_ticks) { done++; why = 3; break; }
    }
    Py_END_ALLOW_THREADS

    result = Py_BuildValue("nniin", done, ci, why, err, (Py_ssize_t)ret);
out:
    release(&v);
    return result;
}

PyObject *append_sync(PyObject *self, PyObject *args) {
    int fd, mode, datasync, direct, timed, sync;
    long long map_addr;
    PyObject *buf_o, *state_o, *hw_o, *sw_o, *hs_o, *ss_o;
    if (!PyArg_ParseTuple(args, "iiOLOppOOOOpp", &fd, &mode, &buf_o, &map_addr, &state_o, &datasync, &direct, &hw_o,
                          &sw_o, &hs_o, &ss_o, &timed, &sync))
        return NULL;
    views v;
    memset(&v, 0, sizeof v);
    PyObject *result = NULL;
    if (get_buffer(buf_o, &v.buf, 1) || get_buffer(state_o, &v.state, 1) || get_buffer(hw_o, &v.hist_w, 1) ||
        get_buffer(sw_o, &v.stats_w, 1) || get_buffer(hs_o, &v.hist_s, 1) || get_buffer(ss_o, &v.stats_s, 1) ||
        check_hists(&v))
        goto out;
    int64_t *st = (int64_t *)v.state.buf;
    int err = 0;
    ssize_t ret = 0;
    Py_BEGIN_ALLOW_THREADS
    if (mode == 1 && v.buf.buf)
        err = do_flush(fd, (char *)v.buf.buf, st, direct, 1, (int64_t *)v.hist_w.buf, (int64_t *)v.stats_w.buf,
                       timed, &ret);
    if (!err && sync)
        err = do_sync(fd, mode, (char *)(intptr_t)map_addr, st, datasync, (int64_t *)v.hist_s.buf,
                      (int64_t *)v.stats_s.buf, timed);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("in", err, (Py_ssize_t)ret);
out:
    release(&v);
    return result;
}

/* mmap mode: a MAP_SHARED writable mapping of `length` bytes of fd (the file grows under it). */
PyObject *append_map(PyObject *self, PyObject *args) {
    int fd;
    long long length;
    if (!PyArg_ParseTuple(args, "iL", &fd, &length)) return NULL;
    void *p = mmap(NULL, (size_t)length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return PyErr_SetFromErrno(PyExc_OSError);
    return PyLong_FromLongLong((long long)(intptr_t)p);
}

PyObject *append_unmap(PyObject *self, PyObject *args) {
    long long addr, length;
    if (!PyArg_ParseTuple(args, "LL", &addr, &length)) return NULL;
    if (munmap((void *)(intptr_t)addr, (size_t)length) != 0) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* fallocate=true: reserve `length` bytes at `offset` without changing the file's size
 * (FALLOC_FL_KEEP_SIZE), so appends with O_APPEND still start at the end of the records. */
PyObject *append_fallocate(PyObject *self, PyObject *args) {
    int fd;
    long long offset, length;
    if (!PyArg_ParseTuple(args, "iLL", &fd, &offset, &length)) return NULL;
    if (fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}
