/*
 * cowprof._alloc — leave no partly used pymalloc pool for a forked worker to allocate into.
 *
 * A worker's first allocations of each size class go to the pools the master left partly used (and,
 * once those are full, to the empty pools of its arenas): every such allocation writes a page the
 * worker shares with the master, so the kernel copies it. fill_pools() runs in the master right
 * before fork and allocates (and leaks) exactly the free blocks of every partly used pool, and
 * optionally blocks in the arenas' empty pools, so that a worker's allocations start in fresh pools
 * of fresh arenas (pages that are new, not copied, and packed densely). The pages that filler blocks
 * cover whole (most of an empty pool: all but the page with its header) are then handed back to the
 * kernel with madvise(MADV_DONTNEED): nothing ever reads or writes a filler block, so the master keeps
 * the blocks allocated at the cost of no memory, and gives back what its emptied pools held.
 *
 * What to fill is read from the interpreter itself: _PyObject_DebugMallocStats() (what
 * sys._debugmallocstats() prints) gives, per size class, the block size, the pools in use, the
 * blocks in use and the free ("avail") blocks, plus the number of empty pools and the pool size.
 * No allocator structure is read; when the text does not parse, nothing is filled and the reason
 * is returned. The filler blocks come from PyObject_Malloc(size of the class), in one C loop with no
 * Python code in between, so nothing else allocates while a class is being filled.
 *
 * no_hugepages() advises MADV_NOHUGEPAGE on given address ranges (the master's anonymous memory right
 * before fork): khugepaged would otherwise collapse a 2 MiB range of the shared heap into a huge page
 * in the master or a worker, copying every 4 KiB page of it that the processes still shared.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>

/* Exported by libpython since 3.3 (declared in an internal header): prints pymalloc statistics. */
PyAPI_FUNC(int) _PyObject_DebugMallocStats(FILE *out);

#define MAX_CLASSES 128

typedef struct {
    size_t size, pools, in_use, avail;
} size_class;

typedef struct {
    size_class cls[MAX_CLASSES];
    int nclasses;
    size_t unused_pools;
    size_t pool_size;
    size_t arenas;
    const char *error; /* why the statistics could not be read */
} pymalloc_stats;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Parses the text of _PyObject_DebugMallocStats. Returns 0, or -1 with st->error set. */
static int parse_stats(const char *text, pymalloc_stats *st) {
    memset(st, 0, sizeof(*st));
    const char *p = strstr(text, "avail blocks");
    if (p == NULL) {
        st->error = "pymalloc statistics have no size class table";
        return -1;
    }
    p = strchr(p, '\n');
    if (p == NULL || strncmp(p + 1, "-----", 5) != 0) {
        st->error = "pymalloc statistics: unexpected table header";
        return -1;
    }
    p = strchr(p + 1, '\n');
    while (p != NULL && st->nclasses < MAX_CLASSES) {
        unsigned int idx;
        size_t size, pools, in_use, avail;
        int used = 0;
        if (sscanf(p + 1, " %u %zu %zu %zu %zu%n", &idx, &size, &pools, &in_use, &avail, &used) != 5) break;
        if (size == 0 || size > 4096 || idx >= MAX_CLASSES) {
            st->error = "pymalloc statistics: implausible size class";
            return -1;
        }
        size_class *c = &st->cls[st->nclasses++];
        c->size = size;
        c->pools = pools;
        c->in_use = in_use;
        c->avail = avail;
        p = strchr(p + 1, '\n');
    }
    if (st->nclasses == 0) {
        st->error = "pymalloc statistics: empty size class table";
        return -1;
    }
    const char *u = strstr(text, " unused pools * ");
    if (u != NULL) {
        const char *line = u;
        while (line > text && line[-1] != '\n') line--;
        if (sscanf(line, "%zu unused pools * %zu bytes", &st->unused_pools, &st->pool_size) != 2) {
            st->error = "pymalloc statistics: unreadable unused pools line";
            return -1;
        }
    }
    const char *a = strstr(text, " arenas * ");
    if (a != NULL) {
        const char *line = a;
        while (line > text && line[-1] != '\n') line--;
        if (sscanf(line, "%zu arenas", &st->arenas) != 1) st->arenas = 0;
    }
    return 0;
}

/* Reads the current statistics. Returns 1 if read, 0 when pymalloc is not in use, -1 on error. */
static int read_stats(pymalloc_stats *st) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL) {
        memset(st, 0, sizeof(*st));
        st->error = "open_memstream failed";
        return -1;
    }
    int printed = _PyObject_DebugMallocStats(f);
    fclose(f);
    int rc;
    if (!printed) {
        memset(st, 0, sizeof(*st));
        st->error = "pymalloc is not in use (PYTHONMALLOC or a debug build)";
        rc = 0;
    } else {
        rc = parse_stats(buf, st) == 0 ? 1 : -1;
    }
    free(buf);
    return rc;
}

static size_t avail_blocks(const pymalloc_stats *st) {
    size_t n = 0;
    for (int i = 0; i < st->nclasses; i++) n += st->cls[i].avail;
    return n;
}

/* The filler blocks allocated by one fill_pools() call, for discard_pages(). */
typedef struct {
    uintptr_t addr;
    size_t size;
} filler_block;

typedef struct {
    filler_block *block;
    size_t n, cap;
    int lost; /* a block could not be recorded: discard nothing (a page might hold an unrecorded one) */
} filler_list;

static void filler_add(filler_list *fl, uintptr_t addr, size_t size) {
    if (fl->lost) return;
    if (fl->n == fl->cap) {
        size_t cap = fl->cap ? fl->cap * 2 : 4096;
        filler_block *grown = realloc(fl->block, cap * sizeof(*grown));
        if (grown == NULL) {
            fl->lost = 1;
            return;
        }
        fl->block = grown;
        fl->cap = cap;
    }
    fl->block[fl->n++] = (filler_block){addr, size};
}

/* Allocates and leaks n blocks of size bytes, recording each in fl; returns how many were allocated. */
static size_t leak_blocks(size_t size, size_t n, filler_list *fl) {
    size_t done = 0;
    for (; done < n; done++) {
        void *p = PyObject_Malloc(size);
        if (p == NULL) break;
        filler_add(fl, (uintptr_t)p, size);
    }
    return done;
}

static int cmp_by_addr(const void *a, const void *b) {
    uintptr_t x = ((const filler_block *)a)->addr, y = ((const filler_block *)b)->addr;
    return (x > y) - (x < y);
}

/* Hands back to the kernel every page that filler blocks cover whole: sorts the blocks by address,
 * merges adjacent ones into runs and madvise(MADV_DONTNEED)s the pages inside each run. Returns the
 * bytes discarded. */
static size_t discard_pages(filler_list *fl) {
    if (fl->lost || fl->n == 0) return 0;
    qsort(fl->block, fl->n, sizeof(*fl->block), cmp_by_addr);
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    size_t discarded = 0;
    for (size_t i = 0; i < fl->n;) {
        uintptr_t lo = fl->block[i].addr, hi = lo + fl->block[i].size;
        for (i++; i < fl->n && fl->block[i].addr == hi; i++) hi += fl->block[i].size;
        uintptr_t first = (lo + page - 1) & ~(page - 1), last = hi & ~(page - 1);
        if (last > first && madvise((void *)first, last - first, MADV_DONTNEED) == 0) discarded += last - first;
    }
    return discarded;
}

#define SET_SIZE(d, key, val)                                                   \
    do {                                                                         \
        PyObject *_v = PyLong_FromSize_t((size_t)(val));                          \
        if (_v == NULL || PyDict_SetItemString(d, key, _v) < 0) {               \
            Py_XDECREF(_v);                                                      \
            Py_DECREF(d);                                                        \
            return NULL;                                                         \
        }                                                                        \
        Py_DECREF(_v);                                                           \
    } while (0)

/* The part of a fill's result every fill has: filled, reason (None or a string), seconds. */
static PyObject *fill_result(int filled, const char *reason, double seconds) {
    PyObject *why = reason ? PyUnicode_FromString(reason) : Py_NewRef(Py_None);
    if (why == NULL) return NULL;
    return Py_BuildValue("{s:O,s:N,s:d}", "filled", filled ? Py_True : Py_False, "reason", why, "seconds", seconds);
}

PyDoc_STRVAR(fill_pools_doc,
"fill_pools($module, /, *, max_bytes, empty_pools=True, discard=True)\n--\n\n"
"Allocate (and never free) the free blocks of every partly used pymalloc pool and, with\n"
"empty_pools, blocks of the largest size class in the arenas' empty pools, so that allocations\n"
"made after this call (in a forked child) start in fresh pools. Allocates at most max_bytes.\n"
"With discard, the pages the filler blocks cover whole are given back (madvise MADV_DONTNEED).\n"
"Returns: filled (bool), reason (None or why nothing was filled), filler_bytes, blocks,\n"
"discarded_bytes,\n"
"avail_before, avail_after (free blocks in used pools), empty_pools_before, empty_pools_after,\n"
"pool_size, seconds.");

/* What one pool fill did (fill_pools' result). */
typedef struct {
    int read;              /* the statistics could be read (pymalloc in use) */
    const char *reason;    /* why nothing, or not everything, was filled; NULL */
    size_t spent, blocks, discarded, avail_before, avail_after, empty_before, empty_after, pool_size;
    double seconds;
} pools_fill;

/* The fill itself; allocates nothing but the filler blocks (and malloc's, for the statistics' text). */
static void fill_pools_now(size_t max_bytes, int empty_pools, int discard, pools_fill *out) {
    double t0 = now_seconds();
    pymalloc_stats before, st, after;
    filler_list fillers = {0};
    size_t spent = 0, blocks = 0, discarded = 0;
    const char *reason = NULL;
    int rc = read_stats(&before);
    if (rc <= 0) {
        reason = before.error;
    } else {
        /* 1. the free blocks of partly used pools, class by class, cheapest class first is not
         *    needed: the cost of a class is its free bytes, all of which a worker would write into */
        for (int i = 0; i < before.nclasses; i++) {
            const size_class *c = &before.cls[i];
            if (c->avail == 0) continue;
            size_t cost = c->avail * c->size;
            if (spent + cost > (size_t)max_bytes) {
                reason = "max_bytes reached";
                continue;
            }
            size_t n = leak_blocks(c->size, c->avail, &fillers);
            blocks += n;
            spent += n * c->size;
        }
        /* 2. empty pools: blocks of the largest class, a pool's worth (as the table says) each */
        if (empty_pools && before.unused_pools > 0 && reason == NULL) {
            /* the largest class that has pools, so the table says how many blocks a pool holds */
            const size_class *big = NULL;
            size_t per_pool = 0;
            for (int i = before.nclasses - 1; i >= 0 && big == NULL; i--) {
                const size_class *c = &before.cls[i];
                if (c->pools > 0 && (c->in_use + c->avail) % c->pools == 0) {
                    big = c;
                    per_pool = (c->in_use + c->avail) / c->pools;
                }
            }
            if (per_pool == 0 || before.pool_size == 0) {
                reason = "pymalloc statistics: cannot tell blocks per pool";
            } else {
                /* as many pools as the cap allows: pymalloc hands out the empty pools of its fullest
                 * arenas first, the ones a worker would take first */
                size_t pools = before.unused_pools, room = ((size_t)max_bytes - spent) / before.pool_size;
                if (pools > room) {
                    pools = room;
                    reason = "max_bytes reached";
                }
                size_t n = leak_blocks(big->size, pools * per_pool, &fillers);
                blocks += n;
                spent += n * big->size;
            }
        }
        /* 3. what step 2 left partly used (the last pool of the largest class) */
        if (read_stats(&st) > 0) {
            for (int i = 0; i < st.nclasses; i++) {
                const size_class *c = &st.cls[i];
                if (c->avail == 0 || spent + c->avail * c->size > (size_t)max_bytes) continue;
                size_t n = leak_blocks(c->size, c->avail, &fillers);
                blocks += n;
                spent += n * c->size;
            }
        }
    }
    int have_after = rc > 0 && read_stats(&after) > 0;
    if (discard) discarded = discard_pages(&fillers);
    free(fillers.block);
    *out = (pools_fill){
        .read = rc > 0, .reason = reason, .spent = spent, .blocks = blocks, .discarded = discarded,
        .avail_before = rc > 0 ? avail_blocks(&before) : 0, .avail_after = have_after ? avail_blocks(&after) : 0,
        .empty_before = rc > 0 ? before.unused_pools : 0, .empty_after = have_after ? after.unused_pools : 0,
        .pool_size = rc > 0 ? before.pool_size : 0, .seconds = now_seconds() - t0,
    };
}

static PyObject *fill_pools(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"max_bytes", "empty_pools", "discard", NULL};
    Py_ssize_t max_bytes = -1;
    int empty_pools = 1, discard = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$npp:fill_pools", kwlist, &max_bytes, &empty_pools, &discard))
        return NULL;
    if (max_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "max_bytes (>= 0) is required");
        return NULL;
    }
    pools_fill r;
    fill_pools_now((size_t)max_bytes, empty_pools, discard, &r);
    PyObject *d = fill_result(r.read && r.blocks > 0, r.reason, r.seconds);
    if (d == NULL) return NULL;
    SET_SIZE(d, "filler_bytes", r.spent);
    SET_SIZE(d, "blocks", r.blocks);
    SET_SIZE(d, "discarded_bytes", r.discarded);
    SET_SIZE(d, "avail_before", r.avail_before);
    SET_SIZE(d, "avail_after", r.avail_after);
    SET_SIZE(d, "empty_pools_before", r.empty_before);
    SET_SIZE(d, "empty_pools_after", r.empty_after);
    SET_SIZE(d, "pool_size", r.pool_size);
    return d;
}

/* ---- glibc malloc: the free chunks of the main arena ------------------------------------------ */

#if defined(__GLIBC__) && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 33)
#define HAVE_MALLOC_FILL 1
#include <malloc.h>
#endif
#endif

#ifdef HAVE_MALLOC_FILL
#define MAX_BINS 256

typedef struct {
    size_t chunk, count; /* chunk size of the bin's smallest free chunk; free chunks in the bin */
} free_bin;

/* Reads the free chunks of the main arena's bins from malloc_info(). Returns the number of bins
 * with chunks (0 when there are none) or -1 when the text cannot be read. */
static int read_bins(free_bin *bins, size_t *free_bytes) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (f == NULL) return -1;
    int rc = malloc_info(0, f);
    fclose(f);
    int n = -1;
    *free_bytes = 0;
    const char *heap = rc == 0 && buf != NULL ? strstr(buf, "<heap nr=\"0\">") : NULL;
    const char *end = heap ? strstr(heap, "</sizes>") : NULL;
    if (heap != NULL && end != NULL) {
        n = 0;
        for (const char *p = strstr(heap, "<size "); p != NULL && p < end && n < MAX_BINS; p = strstr(p + 1, "<size ")) {
            size_t from, to, total, count;
            if (sscanf(p, "<size from=\"%zu\" to=\"%zu\" total=\"%zu\" count=\"%zu\"", &from, &to, &total, &count) != 4) {
                n = -1;
                break;
            }
            if (count == 0) continue;
            bins[n].chunk = from & ~(size_t)15; /* the size field's low bits are flags */
            bins[n].count = count;
            *free_bytes += total;
            n++;
        }
    }
    free(buf);
    return n;
}

/* Allocates chunk-sized requests until one comes from the top chunk (fresh memory at the heap's
 * end: kept, it is no worker's to reuse), up to n; returns the bytes allocated. */
static size_t take_chunks(size_t chunk, size_t n, uintptr_t top, size_t *taken) {
    size_t spent = 0;
    for (size_t k = 0; k < n; k++) {
        void *p = malloc(chunk - sizeof(size_t)); /* the request whose chunk is exactly this size */
        if (p == NULL) break;
        spent += chunk;
        (*taken)++;
        if ((uintptr_t)p >= top) break;
    }
    return spent;
}

/* The main arena's top chunk starts here: what malloc hands out from or above it is fresh. */
static uintptr_t top_start(void) {
    struct mallinfo2 mi = mallinfo2();
    return (uintptr_t)sbrk(0) - mi.keepcost;
}
#endif

PyDoc_STRVAR(fill_malloc_doc,
"fill_malloc($module, /, *, max_bytes)\n--\n\n"
"Allocate (and never free) the free chunks of glibc malloc's main arena, as malloc_info() lists\n"
"them, and the chunks its per-thread cache holds, so that a forked child's malloc() takes fresh\n"
"memory instead of the gaps between the master's data. Call it after malloc_trim(0), which gave\n"
"the free chunks' whole pages back: the chunks then cost the address space they already had.\n"
"Allocates at most max_bytes. Returns: filled (bool), reason (None or why not everything was\n"
"filled), filler_bytes, chunks, free_before, free_after (free bytes in the bins), seconds.");

/* What one malloc fill did (fill_malloc's result). */
typedef struct {
    const char *reason;
    size_t spent, chunks, free_before, free_after;
    double seconds;
} malloc_fill;

static void fill_malloc_now(size_t max_bytes, malloc_fill *out) {
    double t0 = now_seconds();
    size_t spent = 0, chunks = 0, free_before = 0, free_after = 0;
    const char *reason = NULL;
#ifdef HAVE_MALLOC_FILL
    free_bin bins[MAX_BINS];
    uintptr_t top = top_start();
    int n = read_bins(bins, &free_before);
    if (n < 0) reason = "malloc_info() output not understood";
    /* 1. the bins: best fit splits a larger chunk of a size range, whose remainder the next
     *    round finds in the bins again */
    for (int round = 0; n > 0 && round < 8 && reason == NULL; round++) {
        for (int i = 0; i < n; i++) {
            size_t cost = bins[i].chunk * bins[i].count;
            if (spent + cost > (size_t)max_bytes) {
                reason = "max_bytes reached";
                break;
            }
            spent += take_chunks(bins[i].chunk, bins[i].count, top, &chunks);
        }
        n = read_bins(bins, &free_after);
        if (n < 0) reason = "malloc_info() output not understood";
    }
    /* 2. the per-thread cache: at most 7 chunks of each size up to 1032 bytes, invisible to
     *    malloc_info(); a class is done when its next chunk comes from the top */
    for (size_t chunk = 32; chunk <= 1040 && reason == NULL; chunk += 16) {
        if (spent + 8 * chunk > (size_t)max_bytes) {
            reason = "max_bytes reached";
            break;
        }
        spent += take_chunks(chunk, 8, top, &chunks);
    }
    if (read_bins(bins, &free_after) < 0 && reason == NULL) reason = "malloc_info() output not understood";
#else
    reason = "not glibc 2.33+ malloc";
#endif
    *out = (malloc_fill){.reason = reason, .spent = spent, .chunks = chunks, .free_before = free_before,
                         .free_after = free_after, .seconds = now_seconds() - t0};
}

static PyObject *fill_malloc(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"max_bytes", NULL};
    Py_ssize_t max_bytes = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$n:fill_malloc", kwlist, &max_bytes)) return NULL;
    if (max_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "max_bytes (>= 0) is required");
        return NULL;
    }
    malloc_fill r;
    fill_malloc_now((size_t)max_bytes, &r);
    PyObject *d = fill_result(r.chunks > 0, r.reason, r.seconds);
    if (d == NULL) return NULL;
    SET_SIZE(d, "filler_bytes", r.spent);
    SET_SIZE(d, "chunks", r.chunks);
    SET_SIZE(d, "free_before", r.free_before);
    SET_SIZE(d, "free_after", r.free_after);
    return d;
}

/* Totals of fill_before_fork() since the module was loaded (in this process and its parent). */
static struct {
    size_t calls, pool_bytes, malloc_bytes;
    double seconds;
} before_fork_totals;

PyDoc_STRVAR(fill_before_fork_doc,
"fill_before_fork($module, /, *, max_bytes, empty_pools=True, malloc=True)\n--\n\n"
"fill_pools(max_bytes=..., empty_pools=...) then, with malloc, fill_malloc(max_bytes=...), for an\n"
"os.register_at_fork(before=...) callback: allocates no Python object after the fills (the\n"
"result would sit in a partly used pool a child allocates into) and returns None. Totals:\n"
"before_fork_totals().");

static PyObject *fill_before_fork(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"max_bytes", "empty_pools", "malloc", NULL};
    Py_ssize_t max_bytes = -1;
    int empty_pools = 1, malloc_too = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$npp:fill_before_fork", kwlist, &max_bytes, &empty_pools,
                                     &malloc_too))
        return NULL;
    if (max_bytes < 0) {
        PyErr_SetString(PyExc_ValueError, "max_bytes (>= 0) is required");
        return NULL;
    }
    pools_fill p;
    fill_pools_now((size_t)max_bytes, empty_pools, 1, &p);
    malloc_fill m = {0};
    if (malloc_too) fill_malloc_now((size_t)max_bytes, &m);
    before_fork_totals.calls++;
    before_fork_totals.pool_bytes += p.spent;
    before_fork_totals.malloc_bytes += m.spent;
    before_fork_totals.seconds += p.seconds + m.seconds;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(before_fork_totals_doc,
"before_fork_totals($module, /)\n--\n\n"
"What fill_before_fork() did so far: calls, pool_bytes, malloc_bytes (filler allocated), seconds.");

static PyObject *before_fork_totals_fn(PyObject *self, PyObject *unused) {
    return Py_BuildValue("{s:n,s:n,s:n,s:d}", "calls", (Py_ssize_t)before_fork_totals.calls,
                         "pool_bytes", (Py_ssize_t)before_fork_totals.pool_bytes,
                         "malloc_bytes", (Py_ssize_t)before_fork_totals.malloc_bytes,
                         "seconds", before_fork_totals.seconds);
}

PyDoc_STRVAR(stats_doc,
"stats($module, /)\n--\n\n"
"The pymalloc statistics fill_pools() works from: size_classes (list of (block size, pools in use,\n"
"blocks in use, free blocks)), empty_pools, pool_size, arenas; None when pymalloc is not in use.\n"
"Raises RuntimeError when they cannot be parsed.");

static PyObject *stats(PyObject *self, PyObject *unused) {
    pymalloc_stats st;
    int rc = read_stats(&st);
    if (rc == 0) Py_RETURN_NONE;
    if (rc < 0) {
        PyErr_SetString(PyExc_RuntimeError, st.error);
        return NULL;
    }
    PyObject *classes = PyList_New(st.nclasses);
    if (classes == NULL) return NULL;
    for (int i = 0; i < st.nclasses; i++) {
        PyObject *t = Py_BuildValue("(nnnn)", (Py_ssize_t)st.cls[i].size, (Py_ssize_t)st.cls[i].pools,
                                    (Py_ssize_t)st.cls[i].in_use, (Py_ssize_t)st.cls[i].avail);
        if (t == NULL) {
            Py_DECREF(classes);
            return NULL;
        }
        PyList_SET_ITEM(classes, i, t);
    }
    return Py_BuildValue("{s:N,s:n,s:n,s:n}", "size_classes", classes, "empty_pools", (Py_ssize_t)st.unused_pools,
                         "pool_size", (Py_ssize_t)st.pool_size, "arenas", (Py_ssize_t)st.arenas);
}

PyDoc_STRVAR(no_hugepages_doc,
"no_hugepages($module, /, ranges)\n--\n\n"
"madvise(MADV_NOHUGEPAGE) on each (start, end) address range of this process (page aligned).\n"
"Returns (bytes advised, number of ranges the kernel refused, errno of the first refusal or 0).");

static PyObject *no_hugepages(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"ranges", NULL};
    PyObject *ranges;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:no_hugepages", kwlist, &ranges)) return NULL;
    PyObject *seq = PySequence_Fast(ranges, "ranges must be a sequence of (start, end)");
    if (seq == NULL) return NULL;
    size_t advised = 0;
    Py_ssize_t refused = 0;
    int first_errno = 0;
    long page = sysconf(_SC_PAGESIZE);
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        unsigned long long start, end;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "KK:range", &start, &end)) {
            Py_DECREF(seq);
            return NULL;
        }
        if (end <= start || start % (unsigned long long)page || end % (unsigned long long)page) {
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "range %llx-%llx is empty or not page aligned", start, end);
            return NULL;
        }
#ifdef MADV_NOHUGEPAGE
        if (madvise((void *)(uintptr_t)start, (size_t)(end - start), MADV_NOHUGEPAGE) == 0) {
            advised += (size_t)(end - start);
            continue;
        }
        if (first_errno == 0) first_errno = errno;
#else
        if (first_errno == 0) first_errno = ENOSYS;
#endif
        refused++;
    }
    Py_DECREF(seq);
    return Py_BuildValue("(nni)", (Py_ssize_t)advised, refused, first_errno);
}

static PyMethodDef alloc_methods[] = {
    {"fill_pools", (PyCFunction)(void (*)(void))fill_pools, METH_VARARGS | METH_KEYWORDS, fill_pools_doc},
    {"fill_malloc", (PyCFunction)(void (*)(void))fill_malloc, METH_VARARGS | METH_KEYWORDS, fill_malloc_doc},
    {"fill_before_fork", (PyCFunction)(void (*)(void))fill_before_fork, METH_VARARGS | METH_KEYWORDS,
     fill_before_fork_doc},
    {"before_fork_totals", before_fork_totals_fn, METH_NOARGS, before_fork_totals_doc},
    {"stats", stats, METH_NOARGS, stats_doc},
    {"no_hugepages", (PyCFunction)(void (*)(void))no_hugepages, METH_VARARGS | METH_KEYWORDS, no_hugepages_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef alloc_module = {
    PyModuleDef_HEAD_INIT, "cowprof._alloc",
    "Fills partly used pymalloc pools and keeps huge pages off the shared heap before fork\n"
    "(see native/_alloc.c).",
    -1, alloc_methods,
};

PyMODINIT_FUNC PyInit__alloc(void) {
    return PyModule_Create(&alloc_module);
}
