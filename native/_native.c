/*
 * cowprof._native — the parts of heap preparation that Python cannot do.
 *
 * walk():  visits every live object reachable from the GC-tracked set once, iteratively (explicit
 *          stack, no C recursion over the object graph), and for each object not yet immortal:
 *            - sets its refcount to the immortal value of the headers this file is compiled against
 *              (PEP 683), so later Py_INCREF/Py_DECREF never write to its page;
 *            - caches the hash of exact str objects;
 *            - assigns the version tag of its type (PyUnstable_Type_AssignVersionTag);
 *            - optionally records (address, size, type) into a heap map, streamed to a file.
 *          Objects whose type has a finalizer (tp_finalize: every io object, classes with __del__,
 *          generators and coroutines; legacy tp_del) stay mortal, and so do the dicts, cells and
 *          instances of classes that hold one directly (an instance also through a small dict it
 *          holds): those are freed, and finalized, exactly when they would be without cowprof.
 *          Their referents are still walked. The walk returns the objects with a finalizer it left mortal, so that
 *          cowprof can finalize at exit those that an immortal object keeps alive.
 *          It descends into containers the GC does not track (dicts and tuples of atomic values),
 *          into dict keys (dict_traverse skips str keys) and into code objects (not reachable by
 *          tp_traverse: consts, names, local names, file name, qualname, line/exception tables).
 *          On 3.14, afterwards, LOAD_CONST_MORTAL instructions of constants now immortal become
 *          LOAD_CONST_IMMORTAL (settle_const_loads).
 *          Heap map records (16 bytes each) go through a small ring of reused chunks to a writer
 *          thread that encodes them (format 3: address deltas and type/size as varints, ~3-4 bytes
 *          a record) and write()s them to the file descriptor Python opened: the walk touches no
 *          fresh memory for them, and the encoding and the file's page cache are done on another
 *          core while the walk goes on. The thread runs no Python code, blocks all signals, and is
 *          joined before walk() returns.
 * unfinalized(), call_finalizer(): exit finalization (see cowprof/finalize.py).
 * trim():  malloc_trim(0) where glibc has it.
 * info():  what this build can do, and why not.
 *
 * No parsing, formatting or policy here: cowprof/prepare.py decides when and what.
 * No Python code runs during a walk (only C-level __sizeof__ implementations are called), so no
 * object can be freed or created under our feet apart from the short-lived int __sizeof__ returns.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <opcode.h> /* opcode numbers of the headers compiled against (LOAD_CONST_MORTAL: 3.14) */
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

/* ------------------------------------------------------------------------------------------ */
/* What this build can do: decided only from the headers we compile against.                   */

#if SIZEOF_VOID_P <= 4
#  define CP_CAN_WALK 0
#  define CP_REASON "32-bit builds are not supported"
#elif defined(Py_GIL_DISABLED)
#  define CP_CAN_WALK 0
#  define CP_REASON "free-threaded CPython keeps immortality in ob_ref_local; cowprof does not immortalize there"
#elif PY_VERSION_HEX < 0x030C0000
#  define CP_CAN_WALK 0
#  define CP_REASON "immortal objects need CPython 3.12+ (PEP 683)"
#elif PY_VERSION_HEX < 0x030E0000
/* 3.12 and 3.13: immortal means the low 32 bits of ob_refcnt are all set (_Py_IMMORTAL_REFCNT);
 * Py_INCREF's saturated add then skips and Py_DECREF's sign test skips. */
#  define CP_CAN_WALK 1
#  define CP_UNTESTED 0
#  define CP_SCHEME "ob_refcnt = _Py_IMMORTAL_REFCNT"
#  define CP_IMMORTAL_VALUE ((unsigned long long)_Py_IMMORTAL_REFCNT)
static inline void cp_set_immortal(PyObject *op) { op->ob_refcnt = _Py_IMMORTAL_REFCNT; }
#elif defined(_Py_IMMORTAL_INITIAL_REFCNT) && defined(_Py_IMMORTAL_MINIMUM_REFCNT) && defined(_Py_IMMORTAL_FLAGS)
/* 3.14 and later, 64-bit: the refcount word is {uint32 ob_refcnt, uint16 ob_overflow, uint16 ob_flags}.
 * _Py_IsImmortal tests the 32-bit count for >= _Py_IMMORTAL_MINIMUM_REFCNT, but Py_INCREF skips only
 * at >= _Py_IMMORTAL_INITIAL_REFCNT (below it, it still writes), and immortality is also flagged in
 * ob_flags: set both the way CPython's own _Py_SetImmortalUntracked (Objects/object.c) does. The 3.15
 * API PyUnstable_SetImmortal cannot serve a heap walk: it refuses every object with more than one
 * reference, and every str. Versions after 3.15 compile with the constants of their headers but
 * have not been run by cowprof's test suite: prepare.py enables them only on request. */
#  define CP_CAN_WALK 1
#  define CP_UNTESTED (PY_VERSION_HEX >= 0x03100000)
#  define CP_SCHEME "ob_refcnt = _Py_IMMORTAL_INITIAL_REFCNT, ob_flags |= _Py_IMMORTAL_FLAGS"
#  define CP_IMMORTAL_VALUE ((unsigned long long)_Py_IMMORTAL_INITIAL_REFCNT)
static inline void cp_set_immortal(PyObject *op) {
    op->ob_flags |= _Py_IMMORTAL_FLAGS;
    op->ob_refcnt = (uint32_t)_Py_IMMORTAL_INITIAL_REFCNT;
}
#else
#  define CP_CAN_WALK 0
#  define CP_REASON "this cowprof build does not know the immortal refcount scheme of this CPython version"
#endif

#if CP_CAN_WALK

/* 3.14's LOAD_CONST specializations (settle_const_loads): also only from the headers. The bytecode
 * is read as (opcode, oparg) byte pairs, the format co_code documents. */
#if defined(LOAD_CONST_MORTAL) && defined(LOAD_CONST_IMMORTAL) && defined(EXTENDED_ARG) && \
    defined(MIN_INSTRUMENTED_OPCODE)
#  define CP_SETTLES_CONST_LOADS 1
#endif

/* str objects longer than this are not hashed up front (hashing is ~1 GB/s; such strings are rarely
 * hashed by a server and cost one page each if they are). */
#define CP_HASH_MAX_LEN (1 << 20)

static double clock_seconds(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double now_seconds(void) { return clock_seconds(CLOCK_MONOTONIC); }

/* ---- explicit stack ---------------------------------------------------------------------- */
typedef struct {
    PyObject **items;
    size_t len, cap;
} cp_stack;

static int stack_push(cp_stack *s, PyObject *op) {
    if (s->len == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 4096;
        PyObject **n = PyMem_RawRealloc(s->items, ncap * sizeof(PyObject *));
        if (n == NULL) return -1;
        s->items = n;
        s->cap = ncap;
    }
    s->items[s->len++] = op;
    return 0;
}

/* ---- pointer set (open addressing, linear probing) ---------------------------------------- */
typedef struct {
    uintptr_t *slots;
    size_t cap, len; /* cap is a power of two; 0 marks an empty slot */
} cp_ptrset;

static inline size_t ptr_hash(uintptr_t p) { return (size_t)((p >> 4) * 0x9E3779B97F4A7C15ull); }

static int ptrset_grow(cp_ptrset *s) {
    size_t ncap = s->cap ? s->cap * 2 : 1024;
    uintptr_t *n = PyMem_RawCalloc(ncap, sizeof(uintptr_t));
    if (n == NULL) return -1;
    for (size_t i = 0; i < s->cap; i++) {
        uintptr_t p = s->slots[i];
        if (p) {
            size_t j = ptr_hash(p) & (ncap - 1);
            while (n[j]) j = (j + 1) & (ncap - 1);
            n[j] = p;
        }
    }
    PyMem_RawFree(s->slots);
    s->slots = n;
    s->cap = ncap;
    return 0;
}

/* 1 if added, 0 if it was there, -1 on memory error */
static int ptrset_add(cp_ptrset *s, const void *ptr) {
    uintptr_t p = (uintptr_t)ptr;
    if ((s->len + 1) * 2 > s->cap && ptrset_grow(s) < 0) return -1;
    size_t j = ptr_hash(p) & (s->cap - 1);
    while (s->slots[j]) {
        if (s->slots[j] == p) return 0;
        j = (j + 1) & (s->cap - 1);
    }
    s->slots[j] = p;
    s->len++;
    return 1;
}

/* ---- heap map sink: a ring of chunks drained by a writer thread ------------------------------ */
typedef struct {
    uint64_t addr;
    uint32_t size;
    uint32_t type;
} cp_hmrec;

#define CP_HM_CHUNKS 8
#define CP_HM_CHUNK_RECORDS ((size_t)1 << 14) /* 16384 records, 256 KiB a chunk: the ring stays in cache */
#define CP_HM_CHUNK_BYTES (CP_HM_CHUNK_RECORDS * sizeof(cp_hmrec))

/* Heap map format 3 (cowprof/heapmap.py documents it): the writer thread encodes each chunk of
 * records as a header <u4 records, <u4 records with their own size, <u4 shift, <u4 types> and four
 * streams of unsigned values: the zigzag delta of each address from the previous record's, in units
 * of 1 << shift (the largest power of two that the chunk's addresses and the previous one are all
 * multiples of); the chunk's types (their indexes, in order of first appearance); each record's type
 * as a position in that list << 1, | 1 when its size is not the first size seen for that type
 * (returned as heapmap_type_sizes); and those sizes. A stream is <u1 width, <u4 exceptions>, each
 * value's low `width` bytes, then (<u4 index, <u8 value>) for the values that need more: the width
 * is the one that makes the stream shortest (patched frame of reference; see put_stream), so a
 * reader decodes it with a few array operations. Format 2 is the raw records. */
#define CP_HM3_HEADER 16
#define CP_HM3_STREAM_HEADER 5
#define CP_HM3_EXCEPTION 12
#define CP_HM3_MAX_BYTES (CP_HM3_HEADER + 4 * (CP_HM3_STREAM_HEADER + 8 * CP_HM_CHUNK_RECORDS) + 8)
#define CP_HM3_NO_SIZE UINT64_MAX

typedef struct {
    uint64_t first_size;    /* size of the first record of this type; CP_HM3_NO_SIZE until seen */
    uint64_t chunk;         /* the last chunk it appeared in (chunks count from 1) ... */
    uint64_t local;         /* ... and its position in that chunk's list of types */
} cp_hmtype;

typedef struct {
    uint64_t prev;          /* address of the previous record */
    uint64_t chunks;        /* chunks encoded */
    cp_hmtype *types;       /* per type index */
    size_t types_cap;
    uint8_t *out;           /* the encoded chunk (CP_HM3_MAX_BYTES) */
    uint64_t *vals;         /* 4 * CP_HM_CHUNK_RECORDS: the values of the four streams */
} cp_hmenc;

typedef struct {
    int fd;
    int copy_fd;                   /* >= 0: the raw (format 2) records are also written there */
    int format;                    /* 2 or 3 */
    char *ring;                    /* CP_HM_CHUNKS chunks, reused */
    size_t lens[CP_HM_CHUNKS];     /* bytes handed over per chunk */
    cp_hmrec *pos, *end;           /* the chunk being filled */
    uint64_t ready;                /* chunks handed to the writer so far */
    uint64_t written;              /* chunks the writer is done with */
    uint64_t records;
    uint64_t bytes;                /* bytes written to fd (writer thread; read after the join) */
    cp_hmenc enc;                  /* format 3 state, used by the writer thread only */
    int done;                      /* no more chunks will come */
    int err;                       /* first write error (errno), then chunks are dropped */
    int threaded;                  /* 0: the thread could not start, write in the walk */
    double waited;                 /* seconds the walk waited for a free chunk */
    double writer_cpu;             /* CPU seconds of the writer thread (set as it exits) */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} cp_sink;

static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return errno ? errno : EIO;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static inline void put_u32le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static inline void put_u64le(uint8_t *p, uint64_t v) {
    for (int b = 0; b < 8; b++) p[b] = (uint8_t)(v >> (8 * b));
}

static int enc_open(cp_hmenc *e) {
    memset(e, 0, sizeof(*e));
    e->out = PyMem_RawMalloc(CP_HM3_MAX_BYTES);
    e->vals = PyMem_RawMalloc(4 * CP_HM_CHUNK_RECORDS * sizeof(uint64_t));
    return e->out && e->vals ? 0 : -1;
}

static void enc_close(cp_hmenc *e) {
    PyMem_RawFree(e->out);
    PyMem_RawFree(e->vals);
    PyMem_RawFree(e->types);
    memset(e, 0, sizeof(*e));
}

/* Room for type index ty in the per-type table (the raw allocator needs no GIL). */
static int enc_grow(cp_hmenc *e, uint32_t ty) {
    size_t ncap = e->types_cap ? e->types_cap : 256;
    while (ncap <= ty) ncap *= 2;
    cp_hmtype *n = PyMem_RawRealloc(e->types, ncap * sizeof(cp_hmtype));
    if (n == NULL) return -1;
    for (size_t i = e->types_cap; i < ncap; i++) n[i] = (cp_hmtype){CP_HM3_NO_SIZE, 0, 0};
    e->types = n;
    e->types_cap = ncap;
    return 0;
}

static inline unsigned byte_len(uint64_t v) {
    return (unsigned)(71 - __builtin_clzll(v | 1)) / 8; /* 1..8 */
}

/* One stream of n values at p; returns its end (and may write up to 8 bytes past it). Its width w
 * is the smallest of those that make it shortest, w * n + 12 * (values longer than w bytes: the
 * exceptions), judged on every CP_HM3_SAMPLE-th value of a stream longer than CP_HM3_SAMPLE_ALL
 * (a histogram of every value was a fifth of the writer's time). */
#define CP_HM3_SAMPLE 8
#define CP_HM3_SAMPLE_ALL 1024
static uint8_t *put_stream(uint8_t *p, const uint64_t *v, size_t n) {
    size_t count[9] = {0}, step = n > CP_HM3_SAMPLE_ALL ? CP_HM3_SAMPLE : 1, m = (n + step - 1) / step;
    for (size_t i = 0; i < n; i += step) count[byte_len(v[i])]++;
    size_t w = 8, best = 8 * m, above = 0;
    for (size_t c = 7; c >= 1; c--) {
        above += count[c + 1]; /* sampled values longer than c bytes */
        size_t cost = c * m + CP_HM3_EXCEPTION * above;
        if (cost <= best) {
            best = cost;
            w = c;
        }
    }
    uint64_t limit = w < 8 ? ((uint64_t)1 << (8 * w)) - 1 : UINT64_MAX;
    uint8_t *head = p;
    p += CP_HM3_STREAM_HEADER;
    size_t exceptions = 0;
    for (size_t i = 0; i < n; i++) {
#if PY_LITTLE_ENDIAN
        memcpy(p, &v[i], 8); /* the low w bytes count; the rest is overwritten next */
#else
        for (size_t b = 0; b < w; b++) p[b] = (uint8_t)(v[i] >> (8 * b));
#endif
        p += w;
        exceptions += v[i] > limit;
    }
    head[0] = (uint8_t)w;
    put_u32le(head + 1, (uint32_t)exceptions);
    if (exceptions) {
        for (size_t i = 0; i < n; i++) {
            if (v[i] > limit) {
                put_u32le(p, (uint32_t)i);
                put_u64le(p + 4, v[i]);
                p += CP_HM3_EXCEPTION;
            }
        }
    }
    return p;
}

/* Encode n (<= CP_HM_CHUNK_RECORDS) records into e->out; returns its length, 0 when out of memory. */
static size_t enc_chunk(cp_hmenc *e, const cp_hmrec *r, size_t n) {
    uint64_t any = e->prev;
    for (size_t i = 0; i < n; i++) any |= r[i].addr;
    unsigned shift = any ? (unsigned)__builtin_ctzll(any) : 0;
    uint64_t *a = e->vals, *k = a + CP_HM_CHUNK_RECORDS, *t = k + CP_HM_CHUNK_RECORDS, *s = t + CP_HM_CHUNK_RECORDS;
    size_t own_sizes = 0, n_types = 0;
    uint64_t prev = e->prev, chunk = ++e->chunks;
    for (size_t i = 0; i < n; i++) {
        int64_t d = (int64_t)(r[i].addr - prev) >> shift; /* exact: both are multiples of 1 << shift */
        a[i] = ((uint64_t)d << 1) ^ (uint64_t)(d >> 63);
        prev = r[i].addr;
        uint32_t ty = r[i].type;
        if (ty >= e->types_cap && enc_grow(e, ty) < 0) return 0;
        cp_hmtype *info = &e->types[ty];
        if (info->first_size == CP_HM3_NO_SIZE) info->first_size = r[i].size;
        if (info->chunk != chunk) {
            info->chunk = chunk;
            info->local = n_types;
            k[n_types++] = ty;
        }
        unsigned own = info->first_size != r[i].size;
        t[i] = (info->local << 1) | own;
        if (own) s[own_sizes++] = r[i].size;
    }
    e->prev = prev;
    put_u32le(e->out, (uint32_t)n);
    put_u32le(e->out + 4, (uint32_t)own_sizes);
    put_u32le(e->out + 8, shift);
    put_u32le(e->out + 12, (uint32_t)n_types);
    uint8_t *p = put_stream(e->out + CP_HM3_HEADER, a, n);
    p = put_stream(p, k, n_types);
    p = put_stream(p, t, n);
    p = put_stream(p, s, own_sizes);
    return (size_t)(p - e->out);
}

/* Write one chunk of raw records (in the format asked for, and raw to the copy); 0 or an errno. */
static int sink_write(cp_sink *k, const char *chunk, size_t len) {
    int e = 0;
    if (k->format == 3) {
        size_t n = enc_chunk(&k->enc, (const cp_hmrec *)chunk, len / sizeof(cp_hmrec));
        if (n == 0 && len) return ENOMEM;
        e = write_all(k->fd, (const char *)k->enc.out, n);
        k->bytes += n;
    } else {
        e = write_all(k->fd, chunk, len);
        k->bytes += len;
    }
    if (!e && k->copy_fd >= 0) e = write_all(k->copy_fd, chunk, len);
    return e;
}

static void *sink_thread(void *arg) {
    cp_sink *k = (cp_sink *)arg;
    pthread_mutex_lock(&k->mu);
    for (;;) {
        while (k->written == k->ready && !k->done) pthread_cond_wait(&k->cv, &k->mu);
        if (k->written == k->ready) break; /* done and drained */
        size_t i = (size_t)(k->written % CP_HM_CHUNKS);
        size_t len = k->lens[i];
        int skip = k->err != 0;
        pthread_mutex_unlock(&k->mu);
        int e = skip ? 0 : sink_write(k, k->ring + i * CP_HM_CHUNK_BYTES, len);
        pthread_mutex_lock(&k->mu);
        if (e && !k->err) k->err = e;
        k->written++;
        pthread_cond_broadcast(&k->cv);
    }
    k->writer_cpu = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
    pthread_mutex_unlock(&k->mu);
    return NULL;
}

static void sink_point(cp_sink *k, uint64_t chunk) {
    k->pos = (cp_hmrec *)(k->ring + (size_t)(chunk % CP_HM_CHUNKS) * CP_HM_CHUNK_BYTES);
    k->end = (cp_hmrec *)((char *)k->pos + CP_HM_CHUNK_BYTES);
}

static int sink_open(cp_sink *k, int fd, int format, int copy_fd) {
    memset(k, 0, sizeof(*k));
    k->fd = fd;
    k->copy_fd = copy_fd;
    k->format = format;
    k->ring = PyMem_RawMalloc(CP_HM_CHUNKS * CP_HM_CHUNK_BYTES);
    if (k->ring == NULL || (format == 3 && enc_open(&k->enc) < 0)) {
        enc_close(&k->enc);
        PyMem_RawFree(k->ring);
        k->ring = NULL;
        return -1;
    }
    pthread_mutex_init(&k->mu, NULL);
    pthread_cond_init(&k->cv, NULL);
    /* the thread takes no signal: Python's handlers must run in the main thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    k->threaded = pthread_create(&k->thread, NULL, sink_thread, k) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    sink_point(k, 0);
    return 0;
}

/* Hand the chunk being filled to the writer and move to the next free one. */
static void sink_flush(cp_sink *k) {
    size_t i = (size_t)(k->ready % CP_HM_CHUNKS);
    size_t len = (size_t)((char *)k->pos - (k->ring + i * CP_HM_CHUNK_BYTES));
    if (!k->threaded) {
        if (!k->err && len) k->err = sink_write(k, k->ring + i * CP_HM_CHUNK_BYTES, len);
        sink_point(k, k->ready);
        return;
    }
    pthread_mutex_lock(&k->mu);
    k->lens[i] = len;
    k->ready++;
    pthread_cond_broadcast(&k->cv);
    if (k->ready - k->written >= CP_HM_CHUNKS) {
        double t = now_seconds();
        while (k->ready - k->written >= CP_HM_CHUNKS) pthread_cond_wait(&k->cv, &k->mu);
        k->waited += now_seconds() - t;
    }
    pthread_mutex_unlock(&k->mu);
    sink_point(k, k->ready);
}

static inline void sink_add(cp_sink *k, const void *addr, Py_ssize_t size, uint32_t type) {
    if (k->pos == k->end) sink_flush(k);
    cp_hmrec *r = k->pos++;
    r->addr = (uint64_t)(uintptr_t)addr;
    r->size = size > (Py_ssize_t)UINT32_MAX ? UINT32_MAX : (uint32_t)size;
    r->type = type;
    k->records++;
}

/* Flush the rest (an empty chunk is not written), stop and join the writer. Returns 0 or the
 * first write error (errno). The format 3 first-size table stays for the caller (sink_free). */
static int sink_close(cp_sink *k) {
    if (k->ring == NULL) return 0;
    if (k->pos != (cp_hmrec *)(k->ring + (size_t)(k->ready % CP_HM_CHUNKS) * CP_HM_CHUNK_BYTES)) sink_flush(k);
    if (k->threaded) {
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&k->mu);
        k->done = 1;
        pthread_cond_broadcast(&k->cv);
        pthread_mutex_unlock(&k->mu);
        pthread_join(k->thread, NULL);
        Py_END_ALLOW_THREADS
        k->threaded = 0;
    }
    pthread_mutex_destroy(&k->mu);
    pthread_cond_destroy(&k->cv);
    PyMem_RawFree(k->ring);
    k->ring = NULL;
    return k->err;
}

static void sink_free(cp_sink *k) {
    (void)sink_close(k);
    enc_close(&k->enc);
}

/* ---- per-type facts, computed once per type ----------------------------------------------- */
enum { SZ_CONST, SZ_VAR, SZ_STR, SZ_LONG, SZ_DICT, SZ_CALL };

/* dict.__sizeof__ is _PyDict_SizeOf: declared in 3.12's public headers, exported but declared only in
 * the internal pycore_dict.h in 3.13-3.15. Calling it directly spares the walk a Python-level call
 * (and a new int) per dict; other versions call __sizeof__. */
#if PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x03100000
PyAPI_FUNC(Py_ssize_t) _PyDict_SizeOf(PyDictObject *);
#endif
#define CP_DICT_SIZEOF (PY_VERSION_HEX < 0x03100000)

typedef struct {
    PyTypeObject *tp;     /* key; NULL = empty slot */
    PyObject *sizeof_fn;  /* borrowed: the first C-level __sizeof__ along the MRO */
    Py_ssize_t const_size; /* for SZ_CONST (and compact ints: SZ_LONG), -1 until measured */
    uint32_t id;          /* index in the heap map's type table */
    uint8_t mode;
    uint8_t preheader;    /* GC header + managed dict/weakref slots before the object */
    uint8_t buffers;      /* BUF_*: which separately allocated buffer its instances own */
    uint8_t finalizer;    /* instances have a finalizer: they stay mortal */
    uint8_t may_hold;     /* CP_WATCH_*: how its instances are watched for holding one (visit_root) */
} cp_typeinfo;

enum { BUF_NONE, BUF_LIST, BUF_SET, BUF_DICT };
enum { CP_WATCH_NONE, CP_WATCH_DIRECT, CP_WATCH_DICTS };

/* Instances of such a type run code when they are freed (io objects flush and close, __del__,
 * generators run their finally blocks): an immortal one would never run it. */
static inline int cp_has_finalizer(PyTypeObject *tp) {
    return tp->tp_finalize != NULL || tp->tp_del != NULL;
}

#define CP_TYPE_CACHE 256

typedef struct {
    int immortalize;
    int new_only;             /* a repeat walk: skip tracked objects that are already immortal */
    int record;
    int hash_strings;
    int tag_types;
    int immortal_keys;        /* set the shared key tables of heap types to keys_immortal_refcnt */
    Py_ssize_t keys_immortal_refcnt;
    uint32_t *keys_versions;  /* the interpreter's key-version counter: version module and shared tables */
    Py_ssize_t gc_head;       /* sizeof(PyGC_Head), measured by the caller */
    Py_ssize_t managed_pre;   /* bytes of the managed dict/weakref pre-header */
    cp_stack stack;
    cp_stack finalizable;     /* objects with a finalizer left mortal (borrowed; no Python code runs) */
    cp_stack codes;           /* code objects whose constant loads are settled after the walk (3.14) */
    const uint8_t *opcode_caches; /* inline cache entries per opcode (256 bytes, the caller's), or NULL */
    PyObject *opcode_caches_obj;  /* the bytes object holding them */
    cp_ptrset seen;           /* without immortalize: everything visited; with it: objects left mortal */
    int watch;                /* CP_WATCH_*: while the direct referents of a tracked root are visited */
    int holds_finalizable;    /* ... and one of them is a mortal object with a finalizer */
    cp_typeinfo *types;
    size_t types_cap, types_len;
    struct { PyTypeObject *tp; cp_typeinfo *ti; } type_cache[CP_TYPE_CACHE]; /* direct-mapped, before the table */
    PyTypeObject **type_list; /* by id */
    size_t type_list_cap;
    cp_sink hm;               /* heap map records, when record is set */
    PyObject *object_sizeof;  /* object.__sizeof__ descriptor */
    PyObject *sizeof_name;
    int failed;
    /* counts */
    uint64_t objects, immortalized, already_immortal, left_mortal, tracked, untracked, bytes;
    uint64_t strings_hashed, types_tagged, containers_descended;
    uint64_t with_finalizer;
    uint64_t const_loads_settled;
    uint64_t shared_keys_immortalized, keys_versioned;
} cp_walk;

static PyObject *first_c_sizeof(cp_walk *w, PyTypeObject *tp) {
    /* Skip __sizeof__ written in Python: no Python code may run during the walk. */
    PyObject *mro = tp->tp_mro;
    if (mro == NULL || !PyTuple_Check(mro)) return w->object_sizeof;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        /* PyType_GetDict: static builtin types keep their dict in the interpreter state */
        PyObject *dict = PyType_GetDict((PyTypeObject *)PyTuple_GET_ITEM(mro, i));
        if (dict == NULL) {
            PyErr_Clear();
            continue;
        }
        PyObject *f = PyDict_GetItemWithError(dict, w->sizeof_name); /* borrowed; the type keeps it */
        Py_DECREF(dict);
        if (f == NULL) {
            if (PyErr_Occurred()) PyErr_Clear();
            continue;
        }
        if (Py_IS_TYPE(f, &PyMethodDescr_Type) || PyCFunction_Check(f)) return f;
    }
    return w->object_sizeof;
}

static inline size_t type_slot(PyTypeObject *tp) { return ((uintptr_t)tp >> 6) & (CP_TYPE_CACHE - 1); }

/* interp_state.c */
Py_ssize_t *cp_keys_refcnt(PyDictKeysObject *keys);
uint32_t *cp_keys_version(PyDictKeysObject *keys);
uint32_t *cp_keys_version_counter(void);

/* A key table given the version the specializer would give it (_PyDictKeys_GetVersionForCurrentState). */
static void version_keys(cp_walk *w, PyDictKeysObject *keys) {
    uint32_t *version = cp_keys_version(keys);
    if (version == NULL || *version != 0 || *w->keys_versions == 0) return; /* 0: the counter ran out */
    *version = (*w->keys_versions)++;
    w->keys_versioned++;
}

/* The key table a heap type's instances share (ht_cached_keys): made immortal and versioned. */
static void prepare_shared_keys(cp_walk *w, PyTypeObject *tp) {
    if (!(tp->tp_flags & Py_TPFLAGS_HEAPTYPE)) return;
    PyDictKeysObject *keys = ((PyHeapTypeObject *)tp)->ht_cached_keys;
    if (w->keys_versions != NULL) version_keys(w, keys);
    Py_ssize_t *refcnt = w->immortal_keys ? cp_keys_refcnt(keys) : NULL;
    if (refcnt == NULL || *refcnt == w->keys_immortal_refcnt) return;
    *refcnt = w->keys_immortal_refcnt;
    w->shared_keys_immortalized++;
}

static cp_typeinfo *typeinfo_get(cp_walk *w, PyTypeObject *tp) {
    size_t slot = type_slot(tp);
    if (w->type_cache[slot].tp == tp) return w->type_cache[slot].ti;
    if ((w->types_len + 1) * 2 > w->types_cap) {
        memset(w->type_cache, 0, sizeof(w->type_cache)); /* the entries move */
        size_t ncap = w->types_cap ? w->types_cap * 2 : 1024;
        cp_typeinfo *n = PyMem_RawCalloc(ncap, sizeof(cp_typeinfo));
        if (n == NULL) return NULL;
        for (size_t i = 0; i < w->types_cap; i++) {
            if (w->types[i].tp) {
                size_t j = ptr_hash((uintptr_t)w->types[i].tp) & (ncap - 1);
                while (n[j].tp) j = (j + 1) & (ncap - 1);
                n[j] = w->types[i];
            }
        }
        PyMem_RawFree(w->types);
        w->types = n;
        w->types_cap = ncap;
    }
    size_t j = ptr_hash((uintptr_t)tp) & (w->types_cap - 1);
    while (w->types[j].tp) {
        if (w->types[j].tp == tp) {
            w->type_cache[slot].tp = tp;
            w->type_cache[slot].ti = &w->types[j];
            return &w->types[j];
        }
        j = (j + 1) & (w->types_cap - 1);
    }
    /* new type */
    if (w->types_len == w->type_list_cap) {
        size_t ncap = w->type_list_cap ? w->type_list_cap * 2 : 256;
        PyTypeObject **n = PyMem_RawRealloc(w->type_list, ncap * sizeof(PyTypeObject *));
        if (n == NULL) return NULL;
        w->type_list = n;
        w->type_list_cap = ncap;
    }
    cp_typeinfo *ti = &w->types[j];
    ti->tp = tp;
    ti->id = (uint32_t)w->types_len;
    w->type_list[w->types_len++] = tp;
    ti->const_size = -1;
    ti->preheader = (uint8_t)((PyType_IS_GC(tp) ? w->gc_head : 0) +
                              ((tp->tp_flags & Py_TPFLAGS_PREHEADER) ? w->managed_pre : 0));
    ti->sizeof_fn = first_c_sizeof(w, tp);
    /* decided once per type: PyAnySet_Check on every object would walk the MRO twice */
    if (PyType_IsSubtype(tp, &PyList_Type)) ti->buffers = BUF_LIST;
    else if (PyType_IsSubtype(tp, &PySet_Type) || PyType_IsSubtype(tp, &PyFrozenSet_Type)) ti->buffers = BUF_SET;
    else if (PyType_IsSubtype(tp, &PyDict_Type)) ti->buffers = BUF_DICT;
    else ti->buffers = BUF_NONE;
    ti->finalizer = (uint8_t)cp_has_finalizer(tp);
    ti->may_hold = (uint8_t)((tp->tp_flags & Py_TPFLAGS_HEAPTYPE) && !PyType_IsSubtype(tp, &PyType_Type)
                                 ? CP_WATCH_DICTS
                                 : ti->buffers == BUF_DICT || tp == &PyCell_Type ? CP_WATCH_DIRECT : CP_WATCH_NONE);
    int inline_values = 0;
#ifdef Py_TPFLAGS_INLINE_VALUES
    inline_values = (tp->tp_flags & Py_TPFLAGS_INLINE_VALUES) != 0;
#endif
    if (tp == &PyUnicode_Type) {
        ti->mode = SZ_STR;
    } else if (tp == &PyLong_Type) {
        ti->mode = SZ_LONG;
    } else if (CP_DICT_SIZEOF && tp == &PyDict_Type) {
        ti->mode = SZ_DICT;
    } else if (tp == &PyTuple_Type || tp == &PyBytes_Type) {
        ti->mode = SZ_VAR; /* their __sizeof__ is basicsize + itemsize * size */
    } else if (ti->sizeof_fn == w->object_sizeof) {
        if (tp->tp_itemsize == 0)
            ti->mode = SZ_CONST;
        else
            ti->mode = inline_values || PyType_IsSubtype(tp, &PyLong_Type) ? SZ_CALL : SZ_VAR;
    } else {
        ti->mode = SZ_CALL;
    }
    if (w->tag_types && PyUnstable_Type_AssignVersionTag(tp)) w->types_tagged++;
    if (w->immortal_keys || w->keys_versions != NULL) prepare_shared_keys(w, tp);
    return ti;
}

static Py_ssize_t call_sizeof(cp_typeinfo *ti, PyObject *op) {
    PyObject *r = PyObject_CallOneArg(ti->sizeof_fn, op);
    if (r == NULL) {
        PyErr_Clear();
        return ti->tp->tp_basicsize;
    }
    Py_ssize_t n = PyLong_AsSsize_t(r);
    Py_DECREF(r);
    if (n < 0) {
        PyErr_Clear();
        return ti->tp->tp_basicsize;
    }
    return n;
}

static inline Py_ssize_t var_size(PyTypeObject *tp, PyObject *op) {
    Py_ssize_t n = Py_SIZE(op);
    if (n < 0) n = -n;
    return tp->tp_basicsize + tp->tp_itemsize * n;
}

/* Size of the object by __sizeof__ (what sys.getsizeof reports without the pre-header). */
static Py_ssize_t object_size(cp_typeinfo *ti, PyObject *op) {
    switch (ti->mode) {
    case SZ_CONST:
        if (ti->const_size < 0) ti->const_size = call_sizeof(ti, op);
        return ti->const_size;
    case SZ_VAR:
        return var_size(ti->tp, op);
    case SZ_STR:
        if (PyUnicode_IS_COMPACT_ASCII(op))
            return (Py_ssize_t)sizeof(PyASCIIObject) + PyUnicode_GET_LENGTH(op) + 1;
        return call_sizeof(ti, op);
    case SZ_LONG:
        /* an int of one digit (the small ints of 0 digits are static, never visited): all of one
         * size, measured once; calling __sizeof__ for each (it returns a new int) was ~10% of a walk */
        if (!PyUnstable_Long_IsCompact((PyLongObject *)op)) return call_sizeof(ti, op);
        if (ti->const_size < 0) ti->const_size = call_sizeof(ti, op);
        return ti->const_size;
#if CP_DICT_SIZEOF
    case SZ_DICT:
        return _PyDict_SizeOf((PyDictObject *)op);
#endif
    default:
        return call_sizeof(ti, op);
    }
}

static inline void hm_add(cp_walk *w, const void *addr, Py_ssize_t size, uint32_t type) {
    sink_add(&w->hm, addr, size, type);
}

/* Heap map: the object's own block (pre-header included) plus the separately allocated buffers of
 * list, set and dict that are part of its __sizeof__ and whose addresses public structs expose.
 * Cannot fail: the sink keeps a write error for the end of the walk. */
static void record(cp_walk *w, cp_typeinfo *ti, PyObject *op, Py_ssize_t size) {
    PyTypeObject *tp = ti->tp;
    Py_ssize_t block = size;
    if ((ti->mode == SZ_CALL && !PyLong_Check(op)) || ti->mode == SZ_DICT) {
        /* __sizeof__ counts separately allocated parts too: the object's own block is its layout */
        block = tp->tp_itemsize ? var_size(tp, op) : tp->tp_basicsize;
    }
    hm_add(w, (char *)op - ti->preheader, block + ti->preheader, ti->id);
    if (ti->buffers == BUF_NONE) return;
    if (ti->buffers == BUF_LIST) {
        PyListObject *l = (PyListObject *)op;
        if (l->ob_item && l->allocated > 0) hm_add(w, l->ob_item, l->allocated * (Py_ssize_t)sizeof(PyObject *), ti->id);
    } else if (ti->buffers == BUF_SET) {
        PySetObject *s = (PySetObject *)op;
        if (s->table != s->smalltable) hm_add(w, s->table, (s->mask + 1) * (Py_ssize_t)sizeof(setentry), ti->id);
    } else {
        PyDictObject *d = (PyDictObject *)op;
        /* combined table: __sizeof__ - basicsize is the keys object this dict owns */
        if (d->ma_values == NULL && size > tp->tp_basicsize && d->ma_keys != NULL)
            hm_add(w, d->ma_keys, size - tp->tp_basicsize, ti->id);
    }
}

/* Objects the walk must leave mortal. Debug builds of 3.14+ check that every immortal str that is
 * not static is interned (_PyUnicode_CheckConsistency, _Py_SetImmortalUntracked); interning the
 * heap's strings is not ours to do, so there the strings that are not interned stay mortal. */
static inline int keep_mortal(PyObject *op) {
#if defined(Py_DEBUG) && PY_VERSION_HEX >= 0x030E0000
    return PyUnicode_CheckExact(op) && PyUnicode_CHECK_INTERNED(op) == SSTATE_NOT_INTERNED;
#else
    (void)op;
    return 0;
#endif
}

/* Count, size, record, hash and tag one object seen for the first time. */
static int account(cp_walk *w, cp_typeinfo *ti, PyObject *op) {
    PyTypeObject *tp = ti->tp;
    Py_ssize_t size = object_size(ti, op);
    w->objects++;
    w->bytes += (uint64_t)(size + ti->preheader);
    if (w->record) record(w, ti, op, size);
    if (w->hash_strings && tp == &PyUnicode_Type && ((PyASCIIObject *)op)->hash == -1 &&
        PyUnicode_GET_LENGTH(op) <= CP_HASH_MAX_LEN) {
        if (PyObject_Hash(op) == -1) PyErr_Clear();
        else w->strings_hashed++;
    } else if (PyType_Check(op)) {
        if (typeinfo_get(w, (PyTypeObject *)op) == NULL) return -1;
    } else if (w->keys_versions != NULL && PyModule_Check(op)) {
        PyObject *globals = PyModule_GetDict(op); /* borrowed; NULL only for a module not initialized */
        if (globals != NULL) version_keys(w, ((PyDictObject *)globals)->ma_keys);
    }
    return 0;
}

/* Then immortalize it, unless it has a finalizer or holds (directly) a mortal object with one.
 * (Takes the type's facts by value: a typeinfo pointer does not survive the table growing.) */
static int settle(cp_walk *w, PyObject *op, int was_immortal, int finalizer, int holds_finalizable) {
    if (was_immortal) {
        w->already_immortal++;
        return 0;
    }
    if (!w->immortalize) return 0;
    if (finalizer) {
        w->left_mortal++;
        w->with_finalizer++;
        return stack_push(&w->finalizable, op);
    }
    if (holds_finalizable || keep_mortal(op)) {
        w->left_mortal++;
        return 0;
    }
    cp_set_immortal(op);
    w->immortalized++;
    /* An interned str made immortal is interned-immortal, the state CPython's own
     * immortalize_interned() gives it: interning it again must not find an immortal string
     * marked mortal (debug builds assert on that), and shutdown treats it as immortal. */
    if (Py_IS_TYPE(op, &PyUnicode_Type) && PyUnicode_CHECK_INTERNED(op) == SSTATE_INTERNED_MORTAL)
        ((PyASCIIObject *)op)->state.interned = SSTATE_INTERNED_IMMORTAL;
    return 0;
}

static int process(cp_walk *w, PyObject *op, int was_immortal) {
    cp_typeinfo *ti = typeinfo_get(w, Py_TYPE(op));
    if (ti == NULL) return -1;
    int finalizer = ti->finalizer;
    if (account(w, ti, op) < 0) return -1;
    return settle(w, op, was_immortal, finalizer, 0);
}

/* May this untracked object hold references we must follow? Only GC-capable objects may be
 * traversed (static types have a tp_traverse that must not be called on them), plus code objects,
 * which we read ourselves. */
static inline int is_container(PyObject *op) {
    return PyCode_Check(op) || (Py_TYPE(op)->tp_traverse != NULL && PyObject_IS_GC(op));
}

static inline int mortal_finalizable(PyObject *op) {
    return cp_has_finalizer(Py_TYPE(op)) && !_Py_IsImmortal(op);
}

/* A direct referent of the tracked root being visited: does the root hold an object with a
 * finalizer? An instance of a class also counts what a small dict it holds holds (its own __dict__
 * when that is a separate dict, as for NamedTemporaryFile's wrapper on 3.15, or a dict attribute). */
#define CP_PEEK_MAX 64
static void watch_edge(cp_walk *w, PyObject *op) {
    if (mortal_finalizable(op)) {
        w->holds_finalizable = 1;
    } else if (w->watch == CP_WATCH_DICTS && PyDict_CheckExact(op) && PyDict_GET_SIZE(op) <= CP_PEEK_MAX) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(op, &pos, &k, &v)) {
            if (mortal_finalizable(v)) {
                w->holds_finalizable = 1;
                return;
            }
        }
    }
}

/* Visit callback for every reference found: tracked objects are left to the GC-list pass (each is
 * a root there), untracked ones are processed here and their contents pushed on the stack. */
static int visit_edge(PyObject *op, void *arg) {
    cp_walk *w = (cp_walk *)arg;
    if (op == NULL) return 0;
    if (w->watch && !w->holds_finalizable) watch_edge(w, op);
    if (PyType_IS_GC(Py_TYPE(op)) && PyObject_GC_IsTracked(op)) return 0; /* atomic types: no call */
    int immortal = _Py_IsImmortal(op);
    if (w->immortalize && !immortal) {
        /* first time: immortalizing it is also what marks it visited; what stays mortal is
         * marked in the visited set instead */
        if (cp_has_finalizer(Py_TYPE(op)) || keep_mortal(op)) {
            int added = ptrset_add(&w->seen, op);
            if (added < 0) goto fail;
            if (added == 0) return 0;
        }
        if (process(w, op, 0) < 0) goto fail;
        w->untracked++;
        if (is_container(op) && stack_push(&w->stack, op) < 0) goto fail;
        return 0;
    }
    /* already immortal (or not immortalizing): atomic objects and immutable containers need no
     * visit; mutable ones (dicts) may hold new objects, so follow them once per walk. */
    if (w->immortalize && !PyDict_Check(op)) return 0;
    if (!w->immortalize && !is_container(op) && immortal) return 0;
    int added = ptrset_add(&w->seen, op);
    if (added < 0) goto fail;
    if (added == 0) return 0;
    if (process(w, op, immortal) < 0) goto fail;
    w->untracked++;
    if (is_container(op) && stack_push(&w->stack, op) < 0) goto fail;
    return 0;
fail:
    w->failed = 1;
    return -1;
}

static int descend(cp_walk *w, PyObject *op) {
    w->containers_descended++;
    if (PyCode_Check(op)) {
        PyCodeObject *co = (PyCodeObject *)op;
        if (w->opcode_caches != NULL && stack_push(&w->codes, op) < 0) return -1;
        if (visit_edge(co->co_consts, w) || visit_edge(co->co_names, w) ||
            visit_edge(co->co_localsplusnames, w) || visit_edge(co->co_localspluskinds, w) ||
            visit_edge(co->co_filename, w) || visit_edge(co->co_name, w) ||
            visit_edge(co->co_qualname, w) || visit_edge(co->co_linetable, w) ||
            visit_edge(co->co_exceptiontable, w))
            return -1;
        return 0;
    }
    if (PyDict_Check(op)) {
        /* dict_traverse skips str keys; a worker iterating the dict would still incref them */
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(op, &pos, &k, &v)) {
            if (visit_edge(k, w) || visit_edge(v, w)) return -1;
        }
        if (PyDict_CheckExact(op)) return 0;
    }
    traverseproc trav = Py_TYPE(op)->tp_traverse;
    if (trav != NULL && PyObject_IS_GC(op) && trav(op, visit_edge, w) != 0) return -1;
    return w->failed ? -1 : 0;
}

static int drain(cp_walk *w) {
    while (w->stack.len) {
        PyObject *op = w->stack.items[--w->stack.len];
        if (descend(w, op) < 0) return -1;
    }
    return 0;
}

static int visit_root(PyObject *op, void *arg) {
    cp_walk *w = (cp_walk *)arg;
    int immortal = _Py_IsImmortal(op);
    /* A repeat walk is for objects created since the last one. 3.12/3.13 visit no frozen object;
     * 3.14+ also visit the permanent generation, whose objects the previous walk already did. */
    if (w->new_only && immortal) return 1;
    w->tracked++;
    if (!w->immortalize) {
        int added = ptrset_add(&w->seen, op);
        if (added < 0) goto fail;
        if (added == 0) return 1;
    }
    cp_typeinfo *ti = typeinfo_get(w, Py_TYPE(op));
    if (ti == NULL) goto fail;
    int finalizer = ti->finalizer, may_hold = ti->may_hold; /* ti is not used past account() */
    if (account(w, ti, op) < 0) goto fail;
    /* a tracked root is visited once by the GC-list pass whatever its refcount, so it can be
     * settled after its direct referents were seen (watch_edge). Only dicts, cells and instances of
     * classes are watched: the holders a program drops whole (NamedTemporaryFile's wrapper, an
     * object with a file attribute, a dict of files); watching every list and tuple too would cost
     * ~10% of the walk. */
    int watch = w->immortalize && !immortal && !finalizer ? may_hold : CP_WATCH_NONE;
    w->watch = watch;
    w->holds_finalizable = 0;
    int rc = descend(w, op);
    w->watch = CP_WATCH_NONE;
    if (rc < 0 || settle(w, op, immortal, finalizer, watch != CP_WATCH_NONE && w->holds_finalizable) < 0 ||
        drain(w) < 0)
        goto fail;
    return 1;
fail:
    w->failed = 1;
    return 0; /* stop the visit */
}

static void walk_free(cp_walk *w) {
    PyMem_RawFree(w->stack.items);
    PyMem_RawFree(w->finalizable.items);
    PyMem_RawFree(w->codes.items);
    Py_XDECREF(w->opcode_caches_obj);
    PyMem_RawFree(w->seen.slots);
    PyMem_RawFree(w->types);
    PyMem_RawFree(w->type_list);
    sink_free(&w->hm);
    Py_XDECREF(w->object_sizeof);
    Py_XDECREF(w->sizeof_name);
}

/* ---- walk(): its arguments and state, the walk, its result --------------------------------- */

/* Parses walk()'s arguments into *w (zeroed first) and sets up what the walk needs: object.__sizeof__
 * and, with a heap map, its sink and writer thread. -1 with an exception set; walk_free(w) is due
 * either way. */
static int walk_init(cp_walk *w, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"immortalize", "heapmap_fd", "gc_head", "managed_preheader", "hash_strings",
                             "tag_types", "new_only", "heapmap_format", "heapmap_copy_fd", "opcode_caches",
                             "shared_keys_refcnt", "version_keys", NULL};
    int immortalize = 1, heapmap_fd = -1, hash_strings = 1, tag_types = 1, new_only = 0;
    int heapmap_format = 3, copy_fd = -1, keys_versions = 0;
    PyObject *opcode_caches = Py_None, *keys_refcnt = Py_None;
    Py_ssize_t gc_head = 16, managed_pre = 2 * (Py_ssize_t)sizeof(PyObject *);
    memset(w, 0, sizeof(*w));
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$pinnpppiiOOp:walk", kwlist, &immortalize, &heapmap_fd,
                                     &gc_head, &managed_pre, &hash_strings, &tag_types, &new_only,
                                     &heapmap_format, &copy_fd, &opcode_caches, &keys_refcnt, &keys_versions))
        return -1;
    if (keys_refcnt != Py_None) {
        if (!PyLong_Check(keys_refcnt)) {
            PyErr_SetString(PyExc_TypeError, "shared_keys_refcnt must be None or an int");
            return -1;
        }
        w->keys_immortal_refcnt = PyLong_AsSsize_t(keys_refcnt);
        if (w->keys_immortal_refcnt == -1 && PyErr_Occurred()) return -1;
        w->immortal_keys = immortalize;
    }
    if (keys_versions && immortalize) w->keys_versions = cp_keys_version_counter();
    if (opcode_caches != Py_None && !(PyBytes_Check(opcode_caches) && PyBytes_GET_SIZE(opcode_caches) == 256)) {
        PyErr_SetString(PyExc_ValueError, "opcode_caches must be None or 256 bytes");
        return -1;
    }
#ifdef CP_SETTLES_CONST_LOADS
    if (opcode_caches != Py_None && immortalize) {
        w->opcode_caches_obj = Py_NewRef(opcode_caches);
        w->opcode_caches = (const uint8_t *)PyBytes_AS_STRING(opcode_caches);
    }
#endif
    if (heapmap_format != 2 && heapmap_format != 3) {
        PyErr_SetString(PyExc_ValueError, "heapmap_format must be 2 or 3");
        return -1;
    }
    if (gc_head < 0 || gc_head > 64 || managed_pre < 0 || managed_pre > 64) {
        PyErr_SetString(PyExc_ValueError, "implausible pre-header sizes");
        return -1;
    }
    w->immortalize = immortalize;
    w->new_only = new_only && immortalize;
    w->record = heapmap_fd >= 0;
    w->hash_strings = hash_strings;
    w->tag_types = tag_types;
    w->gc_head = gc_head;
    w->managed_pre = managed_pre;
    w->sizeof_name = PyUnicode_InternFromString("__sizeof__");
    if (w->sizeof_name == NULL) return -1;
    PyObject *odict = PyType_GetDict(&PyBaseObject_Type);
    if (odict == NULL) return -1;
    w->object_sizeof = PyDict_GetItemWithError(odict, w->sizeof_name);
    Py_XINCREF(w->object_sizeof);
    Py_DECREF(odict);
    if (w->object_sizeof == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "object.__sizeof__ not found");
        return -1;
    }
    if (w->record && sink_open(&w->hm, heapmap_fd, heapmap_format, copy_fd) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

#ifdef CP_SETTLES_CONST_LOADS
/* 3.14 specializes LOAD_CONST at its first run, for good: LOAD_CONST_MORTAL increfs without the
 * immortal check (and a specialized consumer may decref without it). Code the master ran before
 * the walk would so keep writing the refcounts of constants the walk made immortal, in every
 * worker. This rewrites those loads to LOAD_CONST_IMMORTAL, what the specializer itself picks for
 * an immortal constant (same oparg, neither has inline caches). Code under sys.monitoring (its
 * opcodes may be kept elsewhere) or with a tier-2 executor is left alone. */
static void settle_const_loads(cp_walk *w) {
    for (size_t k = 0; k < w->codes.len; k++) {
        PyCodeObject *co = (PyCodeObject *)w->codes.items[k];
        if (co->_co_monitoring != NULL) continue;
        uint8_t *units = (uint8_t *)co->co_code_adaptive; /* (opcode, oparg) byte pairs */
        Py_ssize_t n = Py_SIZE(co), nconsts = PyTuple_GET_SIZE(co->co_consts);
        size_t oparg = 0;
        for (Py_ssize_t i = 0; i < n; i++) {
            uint8_t op = units[2 * i];
            if (op >= MIN_INSTRUMENTED_OPCODE) break; /* instrumented, or ENTER_EXECUTOR */
            oparg = (oparg << 8) | units[2 * i + 1];
            if (op == EXTENDED_ARG) continue;
            if (op == LOAD_CONST_MORTAL && oparg < (size_t)nconsts &&
                _Py_IsImmortal(PyTuple_GET_ITEM(co->co_consts, (Py_ssize_t)oparg))) {
                units[2 * i] = LOAD_CONST_IMMORTAL;
                w->const_loads_settled++;
            }
            i += w->opcode_caches[op];
            oparg = 0;
        }
    }
}
#endif

/* What walk_run measured besides the counts in cp_walk. */
typedef struct {
    double seconds, cpu_seconds; /* wall clock and CPU time of the walking thread */
    int write_error;             /* errno of the heap map's first failed write, or 0 */
} cp_walk_run;

/* The walk itself; with a heap map its file is complete when this returns. -1 with an exception set. */
static int walk_run(cp_walk *w, cp_walk_run *run) {
    double t0 = now_seconds(), cpu0 = clock_seconds(CLOCK_THREAD_CPUTIME_ID);
    PyUnstable_GC_VisitObjects(visit_root, w);
#ifdef CP_SETTLES_CONST_LOADS
    if (!w->failed && w->opcode_caches != NULL) settle_const_loads(w);
#endif
    run->write_error = w->record ? sink_close(&w->hm) : 0;
    run->seconds = now_seconds() - t0;
    run->cpu_seconds = clock_seconds(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    if (w->failed) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        return -1;
    }
    return 0;
}

/* A dict built item by item that keeps the first error: once an item failed (its exception stays
 * set), the items after it are neither made nor set, and db_finish returns NULL. */
typedef struct {
    PyObject *d;
    int failed;
} cp_dict_builder;

static void db_init(cp_dict_builder *b) {
    b->d = PyDict_New();
    b->failed = b->d == NULL;
}

/* d[key] = made, a new reference released here, or NULL after an error */
static void db_set(cp_dict_builder *b, const char *key, PyObject *made) {
    if (made == NULL) {
        b->failed = 1;
        return;
    }
    if (!b->failed && PyDict_SetItemString(b->d, key, made) < 0) b->failed = 1;
    Py_DECREF(made);
}

static void db_u64(cp_dict_builder *b, const char *key, uint64_t v) {
    if (!b->failed) db_set(b, key, PyLong_FromUnsignedLongLong((unsigned long long)v));
}

static void db_float(cp_dict_builder *b, const char *key, double v) {
    if (!b->failed) db_set(b, key, PyFloat_FromDouble(v));
}

/* d[key] = make(w) */
static void db_make(cp_dict_builder *b, const char *key, PyObject *(*make)(const cp_walk *), const cp_walk *w) {
    if (!b->failed) db_set(b, key, make(w));
}

static PyObject *db_finish(cp_dict_builder *b) {
    if (!b->failed) return b->d;
    Py_XDECREF(b->d);
    return NULL;
}

/* the objects with a finalizer left mortal: still alive, no Python code ran since the walk saw them */
static PyObject *walk_finalizable(const cp_walk *w) {
    PyObject *objs = PyList_New((Py_ssize_t)w->finalizable.len);
    if (objs == NULL) return NULL;
    for (size_t i = 0; i < w->finalizable.len; i++) PyList_SET_ITEM(objs, (Py_ssize_t)i, Py_NewRef(w->finalizable.items[i]));
    return objs;
}

/* the heap map's types by index */
static PyObject *walk_heapmap_types(const cp_walk *w) {
    PyObject *types = PyTuple_New((Py_ssize_t)w->types_len);
    if (types == NULL) return NULL;
    for (size_t i = 0; i < w->types_len; i++) PyTuple_SET_ITEM(types, (Py_ssize_t)i, Py_NewRef((PyObject *)w->type_list[i]));
    return types;
}

/* per type index: bytes of pre-header (GC header, managed dict/weakref) before the object */
static PyObject *walk_heapmap_preheaders(const cp_walk *w) {
    PyObject *pre = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)w->types_len);
    if (pre == NULL) return NULL;
    for (size_t i = 0; i < w->types_cap; i++) {
        if (w->types[i].tp) PyBytes_AS_STRING(pre)[w->types[i].id] = (char)w->types[i].preheader;
    }
    return pre;
}

/* format 3, per type index: the size of its records that carry none (the first one the writer saw) */
static PyObject *walk_heapmap_type_sizes(const cp_walk *w) {
    PyObject *sizes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 * w->types_len));
    if (sizes == NULL) return NULL;
    for (size_t i = 0; i < w->types_len; i++) {
        uint64_t v = i < w->hm.enc.types_cap ? w->hm.enc.types[i].first_size : CP_HM3_NO_SIZE;
        put_u32le((uint8_t *)PyBytes_AS_STRING(sizes) + 4 * i, v == CP_HM3_NO_SIZE ? 0 : (uint32_t)v);
    }
    return sizes;
}

/* None, or the OSError of the heap map's failed write */
static PyObject *write_error_value(int write_error) {
    if (write_error == 0) return Py_NewRef(Py_None);
    return PyObject_CallFunction(PyExc_OSError, "is", write_error, strerror(write_error));
}

/* walk()'s result (keys in this order: see walk_doc and cowprof/_native.pyi) */
static PyObject *walk_result(const cp_walk *w, const cp_walk_run *run) {
    cp_dict_builder b;
    db_init(&b);
    db_u64(&b, "objects", w->objects);
    db_u64(&b, "immortalized", w->immortalized);
    db_u64(&b, "already_immortal", w->already_immortal);
    db_u64(&b, "left_mortal", w->left_mortal);
    db_u64(&b, "tracked", w->tracked);
    db_u64(&b, "untracked", w->untracked);
    db_u64(&b, "bytes", w->bytes);
    db_u64(&b, "strings_hashed", w->strings_hashed);
    db_u64(&b, "types_tagged", w->types_tagged);
    db_u64(&b, "containers_descended", w->containers_descended);
    db_u64(&b, "with_finalizer", w->with_finalizer);
    db_u64(&b, "const_loads_settled", w->const_loads_settled);
    db_u64(&b, "shared_keys_immortalized", w->shared_keys_immortalized);
    db_u64(&b, "keys_versioned", w->keys_versioned);
    db_make(&b, "finalizable", walk_finalizable, w);
    db_float(&b, "seconds", run->seconds);
    db_float(&b, "cpu_seconds", run->cpu_seconds);
    if (w->record) {
        db_u64(&b, "heapmap_records", w->hm.records);
        db_u64(&b, "heapmap_bytes", w->hm.bytes);
        db_u64(&b, "heapmap_format", (uint64_t)w->hm.format);
        db_float(&b, "heapmap_wait_seconds", w->hm.waited);
        db_float(&b, "heapmap_writer_cpu_seconds", w->hm.writer_cpu);
        if (!b.failed) db_set(&b, "heapmap_error", write_error_value(run->write_error));
        db_make(&b, "heapmap_types", walk_heapmap_types, w);
        db_make(&b, "heapmap_preheaders", walk_heapmap_preheaders, w);
        if (w->hm.format == 3) db_make(&b, "heapmap_type_sizes", walk_heapmap_type_sizes, w);
    }
    return db_finish(&b);
}

PyDoc_STRVAR(walk_doc,
"walk($module, /, *, immortalize=True, heapmap_fd=-1, gc_head=16, managed_preheader=16,\n"
"     hash_strings=True, tag_types=True, new_only=False, heapmap_format=3, heapmap_copy_fd=-1,\n"
"     opcode_caches=None, shared_keys_refcnt=None, version_keys=False)\n--\n\n"
"Visit every object reachable from the GC-tracked objects once (see the module docstring).\n"
"new_only (a repeat walk, with immortalize): GC-tracked objects that are already immortal are not\n"
"visited again (3.14+ lists the permanent generation among the tracked objects).\n"
"gc_head and managed_preheader are the pre-header sizes measured by the caller.\n"
"opcode_caches (256 bytes: the inline cache entries of each opcode, from the opcode module), with\n"
"immortalize, on 3.14: afterwards, LOAD_CONST_MORTAL of a constant now immortal becomes\n"
"LOAD_CONST_IMMORTAL in every code object walked ('const_loads_settled' counts them; 0 elsewhere).\n"
"shared_keys_refcnt (an int, with immortalize): the reference count given to the key table the\n"
"instances of each heap type walked share (ht_cached_keys), the interpreter's immortal value for key\n"
"tables as keys_refcount({}) reads it ('shared_keys_immortalized' counts them).\n"
"version_keys (with immortalize): the globals table of each module and the shared table of each heap\n"
"type walked that has no version yet get the next one of keys_version_counter() ('keys_versioned').\n"
"Returns counts (objects, immortalized, already_immortal, left_mortal, with_finalizer, tracked,\n"
"untracked, bytes, strings_hashed, types_tagged), seconds, cpu_seconds (of the walking thread) and\n"
"'finalizable' (list of the objects with a finalizer it left mortal). With heapmap_fd (an open file,\n"
"written from its current offset) the heap map records (address, size, type index) are written there\n"
"by a writer thread: heapmap_format 3 encodes them (chunks of four value streams, see\n"
"cowprof/heapmap.py), 2 writes them raw as <u8 addr, <u4 size, <u4 type index>; heapmap_copy_fd, when\n"
"given, also gets them raw. The result then has 'heapmap_records' (count), 'heapmap_bytes' (written to\n"
"heapmap_fd), 'heapmap_format', 'heapmap_error' (None or the OSError of a failed write),\n"
"'heapmap_wait_seconds' (the walk waiting for the writer), 'heapmap_writer_cpu_seconds',\n"
"'heapmap_types' (tuple of types by index), 'heapmap_preheaders' (bytes: pre-header size per type\n"
"index; a record starts that many bytes before the object) and, in format 3, 'heapmap_type_sizes'\n"
"(<u4 per type index: the size its records have unless they give their own).");

static PyObject *cp_walk_fn(PyObject *self, PyObject *args, PyObject *kwargs) {
    cp_walk w;
    cp_walk_run run;
    PyObject *result = NULL;
    if (walk_init(&w, args, kwargs) == 0 && walk_run(&w, &run) == 0) result = walk_result(&w, &run);
    walk_free(&w);
    return result;
}

/* ---- exit finalization (policy and order: cowprof/finalize.py) ----------------------------- */

PyDoc_STRVAR(unfinalized_doc,
"unfinalized($module, objects, /)\n--\n\n"
"The objects of the list whose type has a finalizer (tp_finalize) and that were not finalized yet.\n"
"(gc.get_objects() gives the tracked objects outside the permanent generation; the GC's own visit,\n"
"PyUnstable_GC_VisitObjects, also lists the permanent generation on 3.14+: the whole prepared heap.)");

static PyObject *cp_unfinalized(PyObject *self, PyObject *objects) {
    if (!PyList_Check(objects)) {
        PyErr_SetString(PyExc_TypeError, "unfinalized() takes a list");
        return NULL;
    }
    PyObject *found = PyList_New(0);
    if (found == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objects); i++) {
        PyObject *op = PyList_GET_ITEM(objects, i);
        if (Py_TYPE(op)->tp_finalize != NULL && !PyObject_GC_IsFinalized(op) && PyList_Append(found, op) < 0) {
            Py_DECREF(found);
            return NULL;
        }
    }
    return found;
}

PyDoc_STRVAR(call_finalizer_doc,
"call_finalizer($module, obj, /)\n--\n\n"
"Run obj's tp_finalize the way CPython does before freeing it (PyObject_CallFinalizer): at most once\n"
"for a GC object, which gets the finalized flag, so freeing it later does not run it again. An object\n"
"outside the GC has no such flag: it is given a reference that is never released, so it is never\n"
"freed and never finalized twice. Errors are reported by the finalizer as unraisable (io objects\n"
"only in development mode, as when they are freed). Returns False if there was nothing to run.");

static PyObject *cp_call_finalizer(PyObject *self, PyObject *op) {
    PyTypeObject *tp = Py_TYPE(op);
    int gc = PyType_IS_GC(tp);
    if (tp->tp_finalize == NULL || (gc && PyObject_GC_IsFinalized(op))) Py_RETURN_FALSE;
    PyObject_CallFinalizer(op);
    if (PyErr_Occurred()) PyErr_WriteUnraisable(op); /* a finalizer must not leave one set */
    if (!gc) Py_INCREF(op); /* deliberately never released */
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(is_immortal_doc, "is_immortal($module, obj, /)\n--\n\nWhether obj's refcount holds the immortal value.");

static PyObject *cp_is_immortal(PyObject *self, PyObject *obj) {
    return PyBool_FromLong(_Py_IsImmortal(obj));
}

PyDoc_STRVAR(functions_doc,
"functions($module, /)\n--\n\n"
"Every Python function object the GC tracks, in a new list: what [o for o in gc.get_objects() if\n"
"type(o) is types.FunctionType] gives, without a list of every object (PyUnstable_GC_VisitObjects,\n"
"which on 3.14+ also visits the permanent generation: frozen functions too).");

typedef struct {
    PyObject **items;
    Py_ssize_t n, cap;
    int failed;
} cp_found;

static int visit_function(PyObject *op, void *arg) {
    cp_found *found = (cp_found *)arg;
    if (!PyFunction_Check(op)) return 1; /* exact type: PyFunction_Type */
    if (found->n == found->cap) {
        Py_ssize_t cap = found->cap ? 2 * found->cap : 1024;
        PyObject **items = PyMem_RawRealloc(found->items, (size_t)cap * sizeof(PyObject *));
        if (items == NULL) {
            found->failed = 1;
            return 0;
        }
        found->items = items;
        found->cap = cap;
    }
    found->items[found->n++] = op; /* borrowed while the visit runs: nothing is freed under it */
    return 1;
}

static PyObject *cp_functions(PyObject *self, PyObject *unused) {
    cp_found found = {NULL, 0, 0, 0};
    PyUnstable_GC_VisitObjects(visit_function, &found);
    PyObject *list = found.failed ? PyErr_NoMemory() : PyList_New(found.n);
    for (Py_ssize_t i = 0; list != NULL && i < found.n; i++) PyList_SET_ITEM(list, i, Py_NewRef(found.items[i]));
    PyMem_RawFree(found.items);
    return list;
}

/* ---- 3.12: function versions given in the master (see interp_state.c) --------------------- */

uint32_t *cp_function_version_counter(void);

PyDoc_STRVAR(function_version_doc,
"function_version($module, func, /)\n--\n\n"
"func's version (func_version: what specialized calls to it check; 0 = none yet).");

static PyObject *cp_function_version(PyObject *self, PyObject *func) {
    if (!PyFunction_Check(func)) {
        PyErr_SetString(PyExc_TypeError, "function_version() takes a Python function");
        return NULL;
    }
    return PyLong_FromUnsignedLong(((PyFunctionObject *)func)->func_version);
}

PyDoc_STRVAR(function_version_counter_doc,
"function_version_counter($module, /)\n--\n\n"
"3.12: the interpreter's next function version (func_state.next_version), read through the internal\n"
"headers compiled against; None on other versions.");

static PyObject *cp_function_version_counter_fn(PyObject *self, PyObject *unused) {
    uint32_t *next = cp_function_version_counter();
    if (next == NULL) Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(*next);
}

#if PY_VERSION_HEX < 0x030D0000 /* 3.12: _PyFunction_Vectorcall is in its public headers */
typedef struct {
    uint32_t *next; /* the interpreter's counter, looked up once per visit */
    uint64_t assigned;
} cp_versioning;

static int visit_unversioned(PyObject *op, void *arg) {
    cp_versioning *v = (cp_versioning *)arg;
    if (!PyFunction_Check(op)) return 1;
    PyFunctionObject *func = (PyFunctionObject *)op;
    /* what _PyFunction_GetVersionForCurrentState does on its first call for func */
    if (func->func_version != 0 || func->vectorcall != _PyFunction_Vectorcall) return 1;
    if (*v->next == 0) return 0; /* the counter ran out: the interpreter stops versioning too */
    func->func_version = (*v->next)++;
    v->assigned++;
    return 1;
}
#endif

PyDoc_STRVAR(version_functions_doc,
"version_functions($module, /)\n--\n\n"
"3.12: gives every GC-tracked Python function that has no version yet the one the interpreter would\n"
"give it at the first specialized call to it (from function_version_counter()). Returns how many\n"
"it versioned; None on other versions (they version functions at creation). The caller must first\n"
"check that the interpreter draws versions from that counter (cowprof.function_versions).");

static PyObject *cp_version_functions(PyObject *self, PyObject *unused) {
#if PY_VERSION_HEX < 0x030D0000
    cp_versioning v = {cp_function_version_counter(), 0};
    if (v.next != NULL) {
        PyUnstable_GC_VisitObjects(visit_unversioned, &v);
        return PyLong_FromUnsignedLongLong(v.assigned);
    }
#endif
    Py_RETURN_NONE;
}

/* ---- key tables shared by a class's instances, made immortal (see interp_state.c) -------- */

static PyDictKeysObject *keys_of(PyObject *obj) {
    if (PyDict_Check(obj)) return ((PyDictObject *)obj)->ma_keys;
    if (PyType_Check(obj) && (((PyTypeObject *)obj)->tp_flags & Py_TPFLAGS_HEAPTYPE))
        return ((PyHeapTypeObject *)obj)->ht_cached_keys;
    return NULL;
}

PyDoc_STRVAR(keys_refcount_doc,
"keys_refcount($module, obj, /)\n--\n\n"
"The reference count of a dict's key table, or of the key table a heap type's instances share\n"
"(ht_cached_keys); None when obj has none or this build cannot read it. keys_refcount({}) is that of\n"
"the interpreter's static empty table: its immortal value.");

static PyObject *cp_keys_refcount(PyObject *self, PyObject *obj) {
    Py_ssize_t *refcnt = cp_keys_refcnt(keys_of(obj));
    if (refcnt == NULL) Py_RETURN_NONE;
    return PyLong_FromSsize_t(*refcnt);
}

PyDoc_STRVAR(keys_version_doc,
"keys_version($module, obj, /)\n--\n\n"
"The version of a dict's key table or of a heap type's shared one (0: none yet), or None.");

static PyObject *cp_keys_version_fn(PyObject *self, PyObject *obj) {
    uint32_t *version = cp_keys_version(keys_of(obj));
    if (version == NULL) Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(*version);
}

PyDoc_STRVAR(keys_version_counter_doc,
"keys_version_counter($module, /)\n--\n\n"
"The interpreter's next key-table version (dict_state.next_keys_version), or None.");

static PyObject *cp_keys_version_counter_fn(PyObject *self, PyObject *unused) {
    uint32_t *next = cp_keys_version_counter();
    if (next == NULL) Py_RETURN_NONE;
    return PyLong_FromUnsignedLong(*next);
}

PyDoc_STRVAR(immortalize_shared_keys_doc,
"immortalize_shared_keys($module, cls, refcnt, /)\n--\n\n"
"Sets the reference count of the key table the instances of cls share to refcnt (what walk's\n"
"shared_keys_refcnt does for every heap type), for cowprof.key_tables's run-time check. Returns\n"
"False when cls has no such table.");

static PyObject *cp_immortalize_shared_keys(PyObject *self, PyObject *args) {
    PyObject *tp;
    Py_ssize_t value;
    if (!PyArg_ParseTuple(args, "O!n:immortalize_shared_keys", &PyType_Type, &tp, &value)) return NULL;
    Py_ssize_t *refcnt = cp_keys_refcnt(keys_of(tp));
    if (refcnt == NULL) Py_RETURN_FALSE;
    *refcnt = value;
    Py_RETURN_TRUE;
}

#endif /* CP_CAN_WALK */

PyDoc_STRVAR(trim_doc, "trim($module, /)\n--\n\nmalloc_trim(0): give free heap memory back to the OS (glibc only).\n"
                       "Returns True if memory was released, False if not or unavailable.");

static PyObject *cp_trim(PyObject *self, PyObject *unused) {
#ifdef __GLIBC__
    int r = malloc_trim(0);
    return PyBool_FromLong(r);
#else
    Py_RETURN_FALSE;
#endif
}

PyDoc_STRVAR(clear_type_cache_doc,
             "clear_type_cache($module, /)\n--\n\nPyType_ClearCache(): empty the type attribute cache, dropping the\n"
             "references it holds to attribute names (types keep their version tags). Returns the\n"
             "interpreter's latest version tag.");

static PyObject *cp_clear_type_cache(PyObject *self, PyObject *unused) {
    return PyLong_FromUnsignedLong(PyType_ClearCache());
}

PyDoc_STRVAR(info_doc, "info($module, /)\n--\n\nWhat this build can do: can_walk, reason (why not), scheme, untested,\n"
                       "compiled_for, debug_build, has_malloc_trim, immortal_refcnt (what the walk writes, or\n"
                       "None), and the object layout of the headers it was compiled against: refcount_offset,\n"
                       "refcount_size (the word holding the count, and on 3.14+ ob_overflow and ob_flags),\n"
                       "type_offset, str_hash_offset (the cached hash of an exact str).");

static PyObject *cp_info(PyObject *self, PyObject *unused) {
    char compiled[16];
    snprintf(compiled, sizeof(compiled), "%d.%d", PY_MAJOR_VERSION, PY_MINOR_VERSION);
#ifdef __GLIBC__
    int has_trim = 1;
#else
    int has_trim = 0;
#endif
#ifdef Py_DEBUG
    int debug = 1;
#else
    int debug = 0;
#endif
#if CP_CAN_WALK
    PyObject *immortal = PyLong_FromUnsignedLongLong(CP_IMMORTAL_VALUE);
    PyObject *reason = Py_NewRef(Py_None), *scheme = PyUnicode_FromString(CP_SCHEME);
    int can_walk = 1, untested = CP_UNTESTED;
#else
    PyObject *immortal = Py_NewRef(Py_None);
    PyObject *reason = PyUnicode_FromString(CP_REASON), *scheme = Py_NewRef(Py_None);
    int can_walk = 0, untested = 0;
#endif
    PyObject *r = NULL;
    if (immortal && reason && scheme) {
        r = Py_BuildValue("{s:O,s:O,s:O,s:O,s:s,s:O,s:O,s:O,s:n,s:n,s:n,s:n}", "can_walk", can_walk ? Py_True : Py_False,
                          "reason", reason, "scheme", scheme, "untested", untested ? Py_True : Py_False,
                          "compiled_for", compiled, "debug_build", debug ? Py_True : Py_False,
                          "has_malloc_trim", has_trim ? Py_True : Py_False, "immortal_refcnt", immortal,
                          "refcount_offset", (Py_ssize_t)offsetof(PyObject, ob_refcnt),
                          "refcount_size", (Py_ssize_t)sizeof(Py_ssize_t),
                          "type_offset", (Py_ssize_t)offsetof(PyObject, ob_type),
                          "str_hash_offset", (Py_ssize_t)offsetof(PyASCIIObject, hash));
    }
    Py_XDECREF(immortal);
    Py_XDECREF(reason);
    Py_XDECREF(scheme);
    return r;
}

static PyMethodDef cp_methods[] = {
#if CP_CAN_WALK
    {"walk", (PyCFunction)(void (*)(void))cp_walk_fn, METH_VARARGS | METH_KEYWORDS, walk_doc},
    {"is_immortal", cp_is_immortal, METH_O, is_immortal_doc},
    {"unfinalized", cp_unfinalized, METH_O, unfinalized_doc},
    {"call_finalizer", cp_call_finalizer, METH_O, call_finalizer_doc},
    {"functions", cp_functions, METH_NOARGS, functions_doc},
    {"function_version", cp_function_version, METH_O, function_version_doc},
    {"function_version_counter", cp_function_version_counter_fn, METH_NOARGS, function_version_counter_doc},
    {"version_functions", cp_version_functions, METH_NOARGS, version_functions_doc},
    {"keys_refcount", cp_keys_refcount, METH_O, keys_refcount_doc},
    {"keys_version", cp_keys_version_fn, METH_O, keys_version_doc},
    {"keys_version_counter", cp_keys_version_counter_fn, METH_NOARGS, keys_version_counter_doc},
    {"immortalize_shared_keys", cp_immortalize_shared_keys, METH_VARARGS, immortalize_shared_keys_doc},
#endif
    {"trim", cp_trim, METH_NOARGS, trim_doc},
    {"clear_type_cache", cp_clear_type_cache, METH_NOARGS, clear_type_cache_doc},
    {"info", cp_info, METH_NOARGS, info_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef cp_module = {
    PyModuleDef_HEAD_INIT, "cowprof._native",
    "Native helpers of cowprof: the heap walk (immortalize, hash, type tags, heap map) and malloc_trim.",
    -1, cp_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    return PyModule_Create(&cp_module);
}
