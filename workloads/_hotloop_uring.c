/* engine=uring: io_uring through raw syscalls (as fio's engines/io_uring.c; no liburing).
 *
 * uring_open(fd, depth, block, rbuf, fixed_files, fixed_bufs, sqpoll, batch_submit, batch_complete[, slot]) -> ring
 *   A ring of `depth` slots per worker (a capsule). Slot s reads into rbuf[s*slot:(s+1)*slot] (slot:
 *   the largest read, block unless given; rbuf: None when the pattern never reads); writes reference
 *   blocks of the caller's write chunk.
 * uring_ops(ring, offsets, first, count, flags, wbuf, wi, hist_r, stats_r, hist_w, stats_w, timed, stop,
 *           deadline[, lengths]) -> (done, wi, nr, nw, err, ret)
 *   lengths: as run_ops' (None: every op is block bytes); a 4th element of stats_* counts the bytes.
 *   run_ops' contract with up to `depth` ops in flight, kept in flight ACROSS calls (draining at every
 *   group would cost several % at depth 32). done = ops submitted; nr / nw = ops completed. Returns
 *   with no write in flight when the chunk is used up (wi == its end: the caller refills it), and with
 *   nothing in flight after stop / the deadline (submission stops, what is in flight completes).
 *   Latency = from when the submitting io_uring_enter returned to the reap of the CQE: fio's clat
 *   (fio stamps issue_time right after that syscall, fio_ioring_queued).
 * uring_drain(ring, hist_r, stats_r, hist_w, stats_w, timed) -> (nr, nw, err, ret): complete all in flight.
 * uring_enters(ring) -> io_uring_enter calls so far; uring_inflight(ring) -> (ops, writes) in flight;
 * uring_close(ring); uring_probe(depth, sqpoll) -> 0 or the errno of io_uring_setup.
 */
#include "_hotloop.h"

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <stdlib.h>
#include <string.h>

#ifndef IORING_SETUP_COOP_TASKRUN
#define IORING_SETUP_COOP_TASKRUN (1U << 8)
#endif
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#define MAX_REG_BYTES (1LL << 30) /* the kernel registers buffers of at most 1 GiB each */
#define MAX_WCHUNKS 8             /* write chunks registered with fixed_bufs (a worker cycles through 4) */

struct uring {
    int ring_fd, fd, depth, block, slot, batch_submit, batch_complete, fixed_files, fixed_bufs, sqpoll;
    unsigned *sq_head, *sq_tail, *sq_mask, *sq_flags, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map;
    size_t sq_len, cq_len, sqes_len;
    unsigned sq_local_tail; /* SQEs written; the kernel's tail is published at submit */
    Py_buffer rbuf;         /* holds the read buffer's export while the ring lives */
    uint64_t *t_submit;     /* per slot: the tick it was submitted */
    uint8_t *is_write;      /* per slot */
    int64_t *want;          /* per slot: the bytes its op asked for (a shorter completion is a short I/O) */
    int count_r, count_w;   /* this call's stats_r / stats_w have a 4th element: the bytes moved */
    int *free_slots, n_free, inflight, inflight_w;
    int rpieces, slots_per_piece;             /* fixed_bufs: rbuf registered in pieces of <= 1 GiB */
    const char *wchunks[MAX_WCHUNKS];          /* fixed_bufs: registered write chunks, after the pieces */
    Py_ssize_t wchunk_len[MAX_WCHUNKS];
    int n_wchunks;
    long long enters;
};

static int sys_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}
static int sys_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags) {
    return (int)syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, NULL, (size_t)0);
}
static int sys_register(int fd, unsigned op, const void *arg, unsigned n) {
    return (int)syscall(__NR_io_uring_register, fd, op, arg, n);
}

/* A ring fd, with fio's task-run flags where the kernel has them; -1 and errno on failure. */
static int ring_setup(unsigned entries, int sqpoll, struct io_uring_params *p) {
    memset(p, 0, sizeof *p);
    if (sqpoll) {
        p->flags = IORING_SETUP_SQPOLL;
        p->sq_thread_idle = 1000; /* ms without work before the kernel thread sleeps */
        return sys_setup(entries, p);
    }
    p->flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    int fd = sys_setup(entries, p);
    if (fd < 0 && errno == EINVAL) { /* an older kernel: plain ring */
        memset(p, 0, sizeof *p);
        fd = sys_setup(entries, p);
    }
    return fd;
}

static void ring_unmap(struct uring *r) {
    if (r->sqes && r->sqes != MAP_FAILED) munmap(r->sqes, r->sqes_len);
    if (r->cq_map && r->cq_map != MAP_FAILED && r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_len);
    if (r->sq_map && r->sq_map != MAP_FAILED) munmap(r->sq_map, r->sq_len);
    r->sqes = NULL;
    r->sq_map = r->cq_map = NULL;
}

static int ring_map(struct uring *r, struct io_uring_params *p) {
    r->sq_len = p->sq_off.array + p->sq_entries * sizeof(unsigned);
    r->cq_len = p->cq_off.cqes + p->cq_entries * sizeof(struct io_uring_cqe);
    if (p->features & IORING_FEAT_SINGLE_MMAP) r->sq_len = r->cq_len = r->sq_len > r->cq_len ? r->sq_len : r->cq_len;
    r->sq_map = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->ring_fd, IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) return -1;
    r->cq_map = (p->features & IORING_FEAT_SINGLE_MMAP) ? r->sq_map
              : mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->ring_fd, IORING_OFF_CQ_RING);
    if (r->cq_map == MAP_FAILED) return -1;
    r->sqes_len = p->sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->ring_fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) return -1;
    char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p->sq_off.head);
    r->sq_tail = (unsigned *)(sq + p->sq_off.tail);
    r->sq_mask = (unsigned *)(sq + p->sq_off.ring_mask);
    r->sq_flags = (unsigned *)(sq + p->sq_off.flags);
    r->sq_array = (unsigned *)(sq + p->sq_off.array);
    r->cq_head = (unsigned *)(cq + p->cq_off.head);
    r->cq_tail = (unsigned *)(cq + p->cq_off.tail);
    r->cq_mask = (unsigned *)(cq + p->cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p->cq_off.cqes);
    for (unsigned i = 0; i < p->sq_entries; i++) r->sq_array[i] = i; /* SQE index = tail & mask, always */
    r->sq_local_tail = *r->sq_tail;
    return 0;
}

/* Register the read pieces and the known write chunks as fixed buffers (again); 0 or -1 and errno. */
static int register_buffers(struct uring *r) {
    struct iovec iov[4096 + MAX_WCHUNKS];
    int n = 0;
    if (r->rbuf.obj) {
        for (int i = 0; i < r->rpieces; i++) {
            Py_ssize_t off = (Py_ssize_t)i * r->slots_per_piece * r->slot;
            Py_ssize_t len = (Py_ssize_t)r->slots_per_piece * r->slot;
            if (off + len > r->rbuf.len) len = r->rbuf.len - off;
            iov[n].iov_base = (char *)r->rbuf.buf + off;
            iov[n++].iov_len = (size_t)len;
        }
    }
    for (int i = 0; i < r->n_wchunks; i++) {
        iov[n].iov_base = (void *)r->wchunks[i];
        iov[n++].iov_len = (size_t)r->wchunk_len[i];
    }
    if (n == 0) return 0;
    sys_register(r->ring_fd, IORING_UNREGISTER_BUFFERS, NULL, 0); /* none yet: EINVAL/ENXIO, harmless */
    return sys_register(r->ring_fd, IORING_REGISTER_BUFFERS, iov, (unsigned)n) < 0 ? -1 : 0;
}

static void ring_free(struct uring *r);

static const char *CAPSULE = "iosweep.uring";

static void capsule_destructor(PyObject *cap) {
    struct uring *r = PyCapsule_GetPointer(cap, CAPSULE);
    if (r) {
        ring_free(r);
        free(r);
    }
}

static struct uring *get_ring(PyObject *cap) {
    struct uring *r = PyCapsule_GetPointer(cap, CAPSULE);
    if (r && r->ring_fd < 0) {
        PyErr_SetString(PyExc_ValueError, "the io_uring ring is closed");
        return NULL;
    }
    return r;
}

PyObject *uring_open(PyObject *self, PyObject *args) {
    int fd, depth, block, fixed_files, fixed_bufs, sqpoll, batch_submit, batch_complete, slot = 0;
    PyObject *rbuf_o;
    if (!PyArg_ParseTuple(args, "iiiOpppii|i", &fd, &depth, &block, &rbuf_o, &fixed_files, &fixed_bufs, &sqpoll,
                          &batch_submit, &batch_complete, &slot))
        return NULL;
    if (slot <= 0) slot = block;
    if (depth < 1 || block < 1 || batch_submit < 1 || batch_complete < 1 || batch_submit > depth ||
        batch_complete > depth) {
        PyErr_SetString(PyExc_ValueError, "uring_open: depth, block and batches must be 1 .. depth");
        return NULL;
    }
    struct uring *r = calloc(1, sizeof *r);
    if (!r) return PyErr_NoMemory();
    r->ring_fd = -1;
    r->fd = fd;
    r->depth = depth;
    r->block = block;
    r->slot = slot;
    r->batch_submit = batch_submit;
    r->batch_complete = batch_complete;
    r->fixed_files = fixed_files;
    r->fixed_bufs = fixed_bufs;
    r->sqpoll = sqpoll;
    if (get_buffer(rbuf_o, &r->rbuf, 1)) {
        free(r);
        return NULL;
    }
    if (r->rbuf.obj && r->rbuf.len < (Py_ssize_t)depth * slot) {
        put_buffer(&r->rbuf);
        free(r);
        PyErr_SetString(PyExc_ValueError, "uring_open: the read buffer must hold depth x slot bytes");
        return NULL;
    }
    r->t_submit = calloc((size_t)depth, sizeof *r->t_submit);
    r->is_write = calloc((size_t)depth, 1);
    r->free_slots = calloc((size_t)depth, sizeof *r->free_slots);
    r->want = calloc((size_t)depth, sizeof *r->want);
    if (!r->t_submit || !r->is_write || !r->free_slots || !r->want) {
        ring_free(r);
        free(r);
        return PyErr_NoMemory();
    }
    for (int s = 0; s < depth; s++) r->free_slots[s] = depth - 1 - s; /* slot 0 is used first */
    r->n_free = depth;
    r->slots_per_piece = slot >= MAX_REG_BYTES ? 1 : (int)(MAX_REG_BYTES / slot);
    if (r->slots_per_piece > depth) r->slots_per_piece = depth;
    r->rpieces = (depth + r->slots_per_piece - 1) / r->slots_per_piece;

    struct io_uring_params p;
    const char *step = "io_uring_setup";
    r->ring_fd = ring_setup((unsigned)depth, sqpoll, &p);
    if (r->ring_fd < 0) goto fail;
    step = "mmap of the io_uring rings";
    if (ring_map(r, &p)) goto fail;
    if (fixed_files) {
        step = "io_uring_register(FILES)";
        if (sys_register(r->ring_fd, IORING_REGISTER_FILES, &fd, 1) < 0) goto fail;
    }
    if (fixed_bufs) {
        step = "io_uring_register(BUFFERS)";
        if (slot > MAX_REG_BYTES || r->rpieces > 4096) {
            errno = EINVAL;
            goto fail;
        }
        if (register_buffers(r)) goto fail;
    }
    return PyCapsule_New(r, CAPSULE, capsule_destructor);
fail: {
        int e = errno;
        ring_free(r);
        free(r);
        errno = e;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, step);
    }
}

/* io_uring_enter, retried on EINTR; counts the calls. */
static int enter(struct uring *r, unsigned submit, unsigned min_complete, unsigned flags) {
    int ret;
    do {
        r->enters++;
        ret = sys_enter(r->ring_fd, submit, min_complete, flags);
    } while (ret < 0 && errno == EINTR);
    return ret;
}

/* Hand the SQEs written since the last submit to the kernel and stamp their slots. 0 or an errno. */
static int submit(struct uring *r, int timed) {
    unsigned tail = *r->sq_tail, n = r->sq_local_tail - tail;
    if (n == 0) return 0;
    __atomic_store_n(r->sq_tail, r->sq_local_tail, __ATOMIC_RELEASE);
    if (r->sqpoll) {
        __atomic_thread_fence(__ATOMIC_SEQ_CST); /* the tail store before the flags load */
        if (__atomic_load_n(r->sq_flags, __ATOMIC_RELAXED) & IORING_SQ_NEED_WAKEUP)
            if (enter(r, 0, 0, IORING_ENTER_SQ_WAKEUP) < 0) return errno;
    } else {
        while (__atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE) != r->sq_local_tail) {
            int ret = enter(r, r->sq_local_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE), 0, 0);
            if (ret < 0) return errno;
            if (ret == 0) return EBUSY; /* never with at most depth in flight: do not spin */
        }
    }
    if (timed) { /* fio stamps issue_time here too: after the submitting syscall returned */
        uint64_t t = ticks();
        for (unsigned i = tail; i != r->sq_local_tail; i++)
            r->t_submit[r->sqes[i & *r->sq_mask].user_data] = t;
    }
    return 0;
}

/* Wait until >= min_complete CQEs are there, then reap all of them into the histograms. Returns 0 or
 * an errno of io_uring_enter; a failed or short op sets *err / *ret (the first one only). */
static int reap(struct uring *r, int min_complete, int timed, int64_t *hr, int64_t *sr, int64_t *hw, int64_t *sw,
                Py_ssize_t *nr, Py_ssize_t *nw, int *err, ssize_t *ret, uint64_t *now) {
    unsigned head = *r->cq_head;
    unsigned avail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) - head;
    if ((int)avail < min_complete) {
        if (enter(r, 0, (unsigned)min_complete, IORING_ENTER_GETEVENTS) < 0) return errno;
        avail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) - head;
    }
    uint64_t t = (timed || now) ? ticks() : 0; /* one clock read per batch, as fio's ios_completed */
    if (now) *now = t;
    for (unsigned i = 0; i < avail; i++) {
        struct io_uring_cqe *cqe = &r->cqes[(head + i) & *r->cq_mask];
        int s = (int)cqe->user_data, res = cqe->res, w = r->is_write[s];
        r->free_slots[r->n_free++] = s;
        r->inflight--;
        if (w) r->inflight_w--;
        if (res != r->want[s]) {
            if (*err == 0) {
                *err = res < 0 ? -res : -1;
                *ret = res < 0 ? -1 : res;
            }
            continue;
        }
        if (w) {
            if (timed) record(hw, sw, ticks_to_ns(t - r->t_submit[s]));
            if (r->count_w) sw[3] += res;
            (*nw)++;
        } else {
            if (timed) record(hr, sr, ticks_to_ns(t - r->t_submit[s]));
            if (r->count_r) sr[3] += res;
            (*nr)++;
        }
    }
    __atomic_store_n(r->cq_head, head + avail, __ATOMIC_RELEASE);
    return 0;
}

/* fixed_bufs: the index of the registered buffer holding the write chunk wbase, or -1 (not registered). */
static int wchunk_index(struct uring *r, const char *wbase, Py_ssize_t len) {
    for (int i = 0; i < r->n_wchunks; i++)
        if (r->wchunks[i] == wbase && r->wchunk_len[i] >= len) return (r->rbuf.obj ? r->rpieces : 0) + i;
    return -1;
}

/* fixed_bufs: register a new write chunk (nothing may be in flight); its index, or -1: write it unregistered. */
static int wchunk_register(struct uring *r, const char *wbase, Py_ssize_t len) {
    if (r->n_wchunks == MAX_WCHUNKS || len > MAX_REG_BYTES || r->inflight) return -1;
    r->wchunks[r->n_wchunks] = wbase;
    r->wchunk_len[r->n_wchunks++] = len;
    if (register_buffers(r)) { /* e.g. RLIMIT_MEMLOCK: this chunk stays unregistered */
        r->n_wchunks--;
        register_buffers(r);
        return -1;
    }
    return (r->rbuf.obj ? r->rpieces : 0) + r->n_wchunks - 1;
}

static void prep(struct uring *r, int slot, int write, char *addr, int64_t off, int64_t len, int buf_index) {
    struct io_uring_sqe *sqe = &r->sqes[r->sq_local_tail & *r->sq_mask];
    memset(sqe, 0, sizeof *sqe);
    if (buf_index >= 0) {
        sqe->opcode = write ? IORING_OP_WRITE_FIXED : IORING_OP_READ_FIXED;
        sqe->buf_index = (uint16_t)buf_index;
    } else {
        sqe->opcode = write ? IORING_OP_WRITE : IORING_OP_READ;
    }
    if (r->fixed_files) {
        sqe->fd = 0;
        sqe->flags = IOSQE_FIXED_FILE;
    } else {
        sqe->fd = r->fd;
    }
    sqe->addr = (uint64_t)(uintptr_t)addr;
    sqe->len = (unsigned)len;
    r->want[slot] = len;
    sqe->off = (uint64_t)off;
    sqe->user_data = (uint64_t)slot;
    r->sq_local_tail++;
    r->is_write[slot] = (uint8_t)write;
    r->inflight++;
    if (write) r->inflight_w++;
}

PyObject *uring_ops(PyObject *self, PyObject *args) {
    int timed;
    Py_ssize_t first, count, wi, nr = 0, nw = 0;
    long long deadline;
    PyObject *ring_o, *offsets_o, *flags_o, *wbuf_o, *hist_r_o, *stats_r_o, *hist_w_o, *stats_w_o, *stop_o;
    PyObject *lengths_o = Py_None;
    if (!PyArg_ParseTuple(args, "OOnnOOnOOOOpOL|O", &ring_o, &offsets_o, &first, &count, &flags_o, &wbuf_o, &wi,
                          &hist_r_o, &stats_r_o, &hist_w_o, &stats_w_o, &timed, &stop_o, &deadline, &lengths_o))
        return NULL;
    struct uring *r = get_ring(ring_o);
    if (!r) return NULL;
    Py_buffer offsets, flags, wbuf, hist_r, stats_r, hist_w, stats_w, stop, lengths;
    offsets.obj = flags.obj = wbuf.obj = stop.obj = lengths.obj = NULL;
    hist_r.obj = stats_r.obj = hist_w.obj = stats_w.obj = NULL;
    PyObject *result = NULL;
    if (get_buffer(offsets_o, &offsets, 0) || get_buffer(flags_o, &flags, 0) || get_buffer(wbuf_o, &wbuf, 0) ||
        get_buffer(hist_r_o, &hist_r, 1) || get_buffer(stats_r_o, &stats_r, 1) || get_buffer(hist_w_o, &hist_w, 1) ||
        get_buffer(stats_w_o, &stats_w, 1) || get_buffer(stop_o, &stop, 0) || get_buffer(lengths_o, &lengths, 0))
        goto out;
    if (first < 0 || count < 0 || (first + count) * (Py_ssize_t)sizeof(int64_t) > offsets.len ||
        (flags.obj && first + count > flags.len) || hist_r.len != N_BUCKETS * (Py_ssize_t)sizeof(int64_t) ||
        hist_w.len != hist_r.len || stats_r.len < 3 * (Py_ssize_t)sizeof(int64_t) ||
        stats_w.len < 3 * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "uring_ops: buffers do not match the requested ops");
        goto out;
    }
    if (check_lengths(&lengths, first, count, flags.buf, r->rbuf.obj != NULL, r->slot, r->block, "uring_ops"))
        goto out;
    const int64_t *lens = (const int64_t *)lengths.buf;
    r->count_r = stats_r.len >= 4 * (Py_ssize_t)sizeof(int64_t);
    r->count_w = stats_w.len >= 4 * (Py_ssize_t)sizeof(int64_t);
    const int64_t *offs = (const int64_t *)offsets.buf;
    const uint8_t *is_read = (const uint8_t *)flags.buf;
    char *wbase = (char *)wbuf.buf;
    Py_ssize_t wper = wbuf.len / r->block;
    int64_t *hr = (int64_t *)hist_r.buf, *hw = (int64_t *)hist_w.buf;
    int64_t *sr = (int64_t *)stats_r.buf, *sw = (int64_t *)stats_w.buf;
    int all_reads = r->rbuf.obj != NULL && is_read == NULL;
    volatile const char *stop_flag = (volatile const char *)stop.buf;
    Py_ssize_t done = 0;
    int err = 0;
    ssize_t ret = 0;
    if (!all_reads && !is_read && !wbuf.obj) {
        PyErr_SetString(PyExc_ValueError, "uring_ops: writes need a write chunk");
        goto out;
    }
    if ((is_read || all_reads) && !r->rbuf.obj) {
        PyErr_SetString(PyExc_ValueError, "uring_ops: reads need a ring opened with a read buffer");
        goto out;
    }

    Py_BEGIN_ALLOW_THREADS
    uint64_t start = ticks(), now = start;
    int64_t left_ns = deadline ? deadline - now_ns() : 0;
    uint64_t deadline_ticks = deadline ? start + (uint64_t)((left_ns > 0 ? left_ns : 0) /
                                                            (use_tsc ? ns_per_tick : 1.0)) : 0;
    int stopping = (stop_flag && *stop_flag) || (deadline && start >= deadline_ticks);
    int wfixed = -1, sysret = 0;
    if (r->fixed_bufs && wbuf.obj && !stopping && (wfixed = wchunk_index(r, wbase, wbuf.len)) < 0) {
        /* a chunk not seen yet (a worker cycles through a few): registering needs nothing in flight */
        while (r->inflight > 0 && !sysret && !err)
            sysret = reap(r, r->inflight, timed, hr, sr, hw, sw, &nr, &nw, &err, &ret, NULL);
        if (!sysret && !err) wfixed = wchunk_register(r, wbase, wbuf.len);
    }
    if (sysret) err = sysret;
    while (!err) {
        /* queue ops into free slots, submitting every batch_submit */
        int queued = 0;
        while (!stopping && done < count && r->n_free > 0) {
            Py_ssize_t i = first + done;
            int read = is_read ? is_read[i] : all_reads;
            if (!read && wi >= wper) break; /* the chunk is used up: the caller refills it */
            int slot = r->free_slots[--r->n_free];
            int buf_index = -1;
            char *addr;
            if (read) {
                addr = (char *)r->rbuf.buf + (Py_ssize_t)slot * r->slot;
                if (r->fixed_bufs) buf_index = slot / r->slots_per_piece;
            } else {
                addr = wbase + wi * r->block;
                buf_index = wfixed;
            }
            prep(r, slot, !read, addr, offs[i], lens ? lens[i] : r->block, buf_index);
            done++;
            if (!read) wi++;
            if (++queued == r->batch_submit) {
                if ((sysret = submit(r, timed))) break;
                queued = 0;
            }
        }
        if (!sysret && queued) sysret = submit(r, timed);
        if (sysret) {
            err = sysret;
            break;
        }
        if (err) break;
        int chunk_done = wbuf.obj && wi >= wper;
        int need; /* completions to wait for before returning or queueing again */
        if (stopping)
            need = r->inflight;
        else if (chunk_done && (done == count || !(is_read ? is_read[first + done] : all_reads)))
            need = r->inflight_w; /* the chunk is used up and the group or the next op needs a new one */
        else if (done == count)
            break; /* the group is submitted: keep its ops in flight into the next call */
        else
            need = r->inflight < r->batch_complete ? r->inflight : r->batch_complete;
        if (need <= 0) {
            if (stopping || chunk_done) break;
            need = r->inflight ? 1 : 0;
            if (!need) break;
        }
        if ((sysret = reap(r, need, timed, hr, sr, hw, sw, &nr, &nw, &err, &ret, &now))) {
            err = sysret;
            break;
        }
        if (err) break;
        if (!stopping && ((stop_flag && *stop_flag) || (deadline && now >= deadline_ticks)))
            stopping = 1; /* submit nothing more; what is in flight completes */
    }
    Py_END_ALLOW_THREADS

    result = Py_BuildValue("nnnnin", done, wi, nr, nw, err, (Py_ssize_t)ret);
out:
    put_buffer(&offsets);
    put_buffer(&flags);
    put_buffer(&wbuf);
    put_buffer(&hist_r);
    put_buffer(&stats_r);
    put_buffer(&hist_w);
    put_buffer(&stats_w);
    put_buffer(&stop);
    put_buffer(&lengths);
    return result;
}

PyObject *uring_drain(PyObject *self, PyObject *args) {
    PyObject *ring_o, *hist_r_o, *stats_r_o, *hist_w_o, *stats_w_o;
    int timed, err = 0, sysret = 0;
    ssize_t ret = 0;
    Py_ssize_t nr = 0, nw = 0;
    if (!PyArg_ParseTuple(args, "OOOOOp", &ring_o, &hist_r_o, &stats_r_o, &hist_w_o, &stats_w_o, &timed))
        return NULL;
    struct uring *r = get_ring(ring_o);
    if (!r) return NULL;
    Py_buffer hist_r, stats_r, hist_w, stats_w;
    hist_r.obj = stats_r.obj = hist_w.obj = stats_w.obj = NULL;
    PyObject *result = NULL;
    if (get_buffer(hist_r_o, &hist_r, 1) || get_buffer(stats_r_o, &stats_r, 1) || get_buffer(hist_w_o, &hist_w, 1) ||
        get_buffer(stats_w_o, &stats_w, 1))
        goto out;
    if (hist_r.len != N_BUCKETS * (Py_ssize_t)sizeof(int64_t) || hist_w.len != hist_r.len ||
        stats_r.len < 3 * (Py_ssize_t)sizeof(int64_t) || stats_w.len < 3 * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "uring_drain: histograms do not match");
        goto out;
    }
    r->count_r = stats_r.len >= 4 * (Py_ssize_t)sizeof(int64_t);
    r->count_w = stats_w.len >= 4 * (Py_ssize_t)sizeof(int64_t);
    Py_BEGIN_ALLOW_THREADS
    while (r->inflight > 0 && !sysret)
        sysret = reap(r, r->inflight, timed, (int64_t *)hist_r.buf, (int64_t *)stats_r.buf, (int64_t *)hist_w.buf,
                      (int64_t *)stats_w.buf, &nr, &nw, &err, &ret, NULL);
    Py_END_ALLOW_THREADS
    result = Py_BuildValue("nnin", nr, nw, sysret ? sysret : err, (Py_ssize_t)ret);
out:
    put_buffer(&hist_r);
    put_buffer(&stats_r);
    put_buffer(&hist_w);
    put_buffer(&stats_w);
    return result;
}

/* Wait for what is in flight (the kernel still writes into the read buffer), then let go of everything. */
static void ring_free(struct uring *r) {
    if (r->ring_fd >= 0) {
        int64_t h[N_BUCKETS], s[4];
        r->count_r = r->count_w = 0;
        Py_ssize_t nr = 0, nw = 0;
        int err = 0;
        ssize_t ret = 0;
        while (r->inflight > 0)
            if (reap(r, r->inflight, 0, h, s, h, s, &nr, &nw, &err, &ret, NULL)) break;
    }
    ring_unmap(r);
    if (r->ring_fd >= 0) close(r->ring_fd);
    r->ring_fd = -1;
    put_buffer(&r->rbuf);
    free(r->t_submit);
    free(r->is_write);
    free(r->free_slots);
    free(r->want);
    r->want = NULL;
    r->t_submit = NULL;
    r->is_write = NULL;
    r->free_slots = NULL;
}

PyObject *uring_close(PyObject *self, PyObject *args) {
    PyObject *ring_o;
    if (!PyArg_ParseTuple(args, "O", &ring_o)) return NULL;
    struct uring *r = PyCapsule_GetPointer(ring_o, CAPSULE);
    if (!r) return NULL;
    if (r->ring_fd >= 0 || r->rbuf.obj) ring_free(r);
    Py_RETURN_NONE;
}

PyObject *uring_enters(PyObject *self, PyObject *args) {
    PyObject *ring_o;
    if (!PyArg_ParseTuple(args, "O", &ring_o)) return NULL;
    struct uring *r = PyCapsule_GetPointer(ring_o, CAPSULE);
    if (!r) return NULL;
    return PyLong_FromLongLong(r->enters);
}

PyObject *uring_inflight(PyObject *self, PyObject *args) {
    PyObject *ring_o;
    if (!PyArg_ParseTuple(args, "O", &ring_o)) return NULL;
    struct uring *r = PyCapsule_GetPointer(ring_o, CAPSULE);
    if (!r) return NULL;
    return Py_BuildValue("ii", r->inflight, r->inflight_w);
}

/* 0 when a ring of `depth` entries can be set up here, else the errno io_uring_setup gave. */
PyObject *uring_probe(PyObject *self, PyObject *args) {
    int depth, sqpoll;
    if (!PyArg_ParseTuple(args, "ip", &depth, &sqpoll)) return NULL;
    struct io_uring_params p;
    int fd = ring_setup((unsigned)depth, sqpoll, &p);
    if (fd < 0) return PyLong_FromLong(errno);
    close(fd);
    return PyLong_FromLong(0);
}
