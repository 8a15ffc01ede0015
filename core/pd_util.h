/*  pd_util — small value types and helpers every role uses: string views, wall-clock time
 *  in milliseconds, the Appwrite date format, a stable 64-bit hash, a growable byte buffer.
 *  No allocation except in pd_buf. */
#ifndef PD_UTIL_H
#define PD_UTIL_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

//  A borrowed, not NUL-terminated string view.
typedef struct {
    const char *ptr;
    size_t len;
} pd_str_t;

#define PD_STR(lit) ((pd_str_t){(lit), sizeof(lit) - 1})
#define PD_STR_NULL ((pd_str_t){NULL, 0})

static inline pd_str_t
pd_str(const char *s)
{
    return (pd_str_t){s, s ? strlen(s) : 0};
}

static inline bool
pd_str_eq(pd_str_t a, pd_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static inline bool
pd_str_eqc(pd_str_t a, const char *lit)
{
    return pd_str_eq(a, pd_str(lit));
}

//  Three-way byte comparison, shorter prefix first (matches strcmp order for NUL-free strings).
int pd_str_cmp(pd_str_t a, pd_str_t b);

//  Wall-clock time in milliseconds since the epoch, and monotonic milliseconds.
int64_t pd_now_ms(void);
int64_t pd_mono_ms(void);
//  calloc / realloc that abort when memory is out (a zero size allocates one byte).
void *pd_xcalloc(size_t n, size_t size);
void *pd_xrealloc(void *p, size_t size);

//  A token bucket: bursts of `burst` events, refilled at `rate` per second (limits on what a
//  client may send). pd_rate_init fills it; pd_rate_take takes one token at now_ms (monotonic)
//  if there is one.
typedef struct {
    int64_t ms;        //  when it was last refilled
    int64_t milli;     //  tokens, in thousandths
} pd_rate_t;
void pd_rate_init(pd_rate_t *r, int burst, int64_t now_ms);
bool pd_rate_take(pd_rate_t *r, int rate, int burst, int64_t now_ms);
int64_t pd_mono_us(void);

//  Appwrite date format "2024-01-01T00:00:00.000+00:00" (29 chars). buf needs 32 bytes.
//  Returns the length written (at most 31, not counting the NUL written after it).
size_t pd_time_format(int64_t ms, char *buf);
//  The length pd_time_format writes for ms (29 for years 0..9999), without writing it.
size_t pd_time_len(int64_t ms);

//  Parses a date the way a client sends expiresAt: ISO 8601 / RFC 3339 with 'T' or a space,
//  optional fraction, and 'Z', "+hh:mm", "+hhmm" or no zone (UTC). Returns 0 and sets *ms,
//  or -1 when the text is not a date.
int pd_time_parse(const char *s, size_t len, int64_t *ms);

//  Stable 64-bit hash (FNV-1a folded with a final mix); the same on every machine and build.
uint64_t pd_hash64(const void *data, size_t len, uint64_t seed);
//  Hash of two strings with a separator, e.g. (project, presenceId).
uint64_t pd_hash2(pd_str_t a, pd_str_t b);

/*  Opens the POSIX shared-memory object name, creating it (mode 0600, O_EXCL) when absent; *made
 *  says which. An existing one is used only if it is a regular file of this user that nobody
 *  else may read or write (shm_open does not follow symlinks): another local user could have
 *  made it first, world-writable, to read or change what we keep in it. Returns the fd, or -1
 *  (logged, with what to do). */
int pd_shm_open(const char *name, bool *made);
/*  Maps len bytes of segment fd, shared, for reading and writing, asking for transparent huge
 *  pages: where the segments' file system gives them (/dev/shm mounted with huge=within_size
 *  or huge=advise), pages are mapped 2 MB at a time. A store restarted on a host where mapping
 *  a page costs 5-11 us spends most of its restart mapping pages (README, "Store node restart
 *  at scale"). Returns MAP_FAILED (errno) on failure, as mmap. */
void *pd_shm_map(int fd, size_t len);
//  Removes the segment name if it is one pd_shm_open would use (a segment someone else made
//  is left alone). Returns 0, or -1.
int pd_shm_unlink(const char *name);
//  Renames segment `from` to `to` (replacing it) in one step: a process that opens `to` sees the
//  old file or the new one. Returns 0 or -1 (errno).
int pd_shm_rename(const char *from, const char *to);

/*  Keyed hash of two strings (SipHash-2-4 under key, libsodium's crypto_shorthash) for tables
 *  whose keys clients choose: without the key nobody can craft keys that collide. A table draws
 *  its key once (randombytes_buf; kept beside the table where the table outlives a process). */
#define PD_HASH_KEYBYTES 16
uint64_t pd_hash2_keyed(const unsigned char key[PD_HASH_KEYBYTES], pd_str_t a, pd_str_t b);

//  Rendezvous (highest random weight) hashing: the node 1..nnodes that owns (project, key).
//  Stable: adding a node moves only the keys the new node wins; removing none moves nothing.
int pd_shard_owner(pd_str_t project, pd_str_t key, int nnodes);

//  True if s is a valid Appwrite UID: 1..36 chars of [A-Za-z0-9_.-], not starting with _ . -
bool pd_uid_valid(pd_str_t s);

//  Grows the allocation p of *cap bytes to hold need, doubling from init (or *cap); aborts on
//  OOM. One of 4 MB and more asks for transparent huge pages. Returns the (moved) allocation.
void *pd_grow(void *p, size_t *cap, size_t need, size_t init);

//  A growable byte buffer. pd_buf_reset keeps the allocation (no per-use malloc on hot paths).
typedef struct {
    char *data;
    size_t len;
    size_t cap;
} pd_buf_t;

void pd_buf_init(pd_buf_t *b);
void pd_buf_free(pd_buf_t *b);
static inline void
pd_buf_reset(pd_buf_t *b)
{
    b->len = 0;
}
//  Makes room for n more bytes; aborts on OOM (like h2o's allocator).
void pd_buf_reserve(pd_buf_t *b, size_t n);
void pd_buf_add(pd_buf_t *b, const void *p, size_t n);
static inline void
pd_buf_adds(pd_buf_t *b, const char *s)
{
    pd_buf_add(b, s, strlen(s));
}
void pd_buf_addf(pd_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

//  Formats a message into err (when err is not NULL) and returns code: the one way a function
//  reports "what went wrong" to a caller that logs or answers it.
int pd_errf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
//  Appends s as a JSON string literal (with quotes), escaping as RFC 8259 requires.
void pd_buf_add_json_str(pd_buf_t *b, const char *s, size_t len);

//  Iterates a list of NUL-terminated strings packed back to back ("any\0user:u1\0"; the last
//  NUL may be missing: a store node reads a list of one role out of a record's JSON).
//  for (pd_str_t it = pd_list_first(l); it.ptr; it = pd_list_next(l, it)) ...
pd_str_t pd_list_first(pd_str_t list);
pd_str_t pd_list_next(pd_str_t list, pd_str_t cur);
//  True if the packed list contains s.
bool pd_list_has(pd_str_t list, pd_str_t s);
//  True if the two lists hold the same strings in the same order (with or without the last NUL).
bool pd_list_eq(pd_str_t a, pd_str_t b);

void pd_util_test(bool verbose);

//  A self-test check: on in every build type. assert() vanishes under NDEBUG (RelWithDebInfo,
//  the default build), and self tests often make the very call they check.
#define PD_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__, __func__, #cond); \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#endif
