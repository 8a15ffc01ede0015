/*  pd_util — see pd_util.h. */
#include "pd_util.h"

#include <sodium.h>

#include "pd_log.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <limits.h>

int
pd_str_cmp(pd_str_t a, pd_str_t b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c)
        return c < 0 ? -1 : 1;
    return a.len < b.len ? -1 : a.len > b.len ? 1 : 0;
}

int64_t
pd_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
pd_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void *
pd_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        abort();
    return p;
}

void *
pd_xrealloc(void *p, size_t size)
{
    p = realloc(p, size ? size : 1);
    if (!p)
        abort();
    return p;
}

int64_t
pd_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*  Days from civil date, after Howard Hinnant's algorithm: exact for the proleptic Gregorian
 *  calendar, no timezone database, no locale. */
static int64_t
s_days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

//  Two digits of v (< 100), from a table: eight per date, three dates per rendered record.
static inline void
s_put2(char *p, unsigned v)
{
    static const char digits[] = "00010203040506070809101112131415161718192021222324252627282930"
                                 "31323334353637383940414243444546474849505152535455565758596061"
                                 "62636465666768697071727374757677787980818283848586878889909192"
                                 "93949596979899";
    memcpy(p, digits + 2 * v, 2);
}

size_t
pd_time_len(int64_t ms)
{
    /* 0000-01-01T00:00:00.000 and 10000-01-01T00:00:00.000, in ms */
    if (ms >= -62167219200000LL && ms < 253402300800000LL)
        return 29;
    char buf[32];
    return pd_time_format(ms, buf);
}

/*  Every record carries three dates and is rendered on each write, so this is on the hot path:
 *  civil date from days (Hinnant, the inverse of the above) and digits by hand, no gmtime_r,
 *  no printf. Years outside 0..9999 take the slow path. */
size_t
pd_time_format(int64_t ms, char *buf)
{
    int64_t secs = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
    unsigned msec = (unsigned)(ms - secs * 1000);
    int64_t days = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
    unsigned sod = (unsigned)(secs - days * 86400);
    int64_t z = days + 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    int64_t y = (int64_t)yoe + era * 400 + (m <= 2);
    if (y < 0 || y > 9999) {
        int n = snprintf(buf, 32, "%04lld-%02u-%02uT%02u:%02u:%02u.%03u+00:00", (long long)y, m, d,
                         sod / 3600, sod / 60 % 60, sod % 60, msec);
        /* snprintf returns what it would have written: a year of seven or more characters
         * (no real date) is cut to fit, and the length returned is what is in buf. */
        return n <= 0 ? 0 : n < 32 ? (size_t)n : 31;
    }
    s_put2(buf, (unsigned)(y / 100));
    s_put2(buf + 2, (unsigned)(y % 100));
    buf[4] = '-';
    s_put2(buf + 5, m);
    buf[7] = '-';
    s_put2(buf + 8, d);
    buf[10] = 'T';
    s_put2(buf + 11, sod / 3600);
    buf[13] = ':';
    s_put2(buf + 14, sod / 60 % 60);
    buf[16] = ':';
    s_put2(buf + 17, sod % 60);
    buf[19] = '.';
    buf[20] = (char)('0' + msec / 100);
    s_put2(buf + 21, msec % 100);
    memcpy(buf + 23, "+00:00", 7); //  with its NUL
    return 29;
}

static int
s_digits(const char *s, size_t len, size_t *i, int n, int *out)
{
    int v = 0;
    for (int k = 0; k < n; k++) {
        if (*i >= len || s[*i] < '0' || s[*i] > '9')
            return -1;
        v = v * 10 + (s[(*i)++] - '0');
    }
    *out = v;
    return 0;
}

int
pd_time_parse(const char *s, size_t len, int64_t *ms)
{
    size_t i = 0;
    int y, mo, d, h = 0, mi = 0, se = 0, frac = 0;
    while (i < len && s[i] == ' ')
        i++;
    while (len > i && s[len - 1] == ' ')
        len--;
    if (s_digits(s, len, &i, 4, &y) || i >= len || s[i++] != '-' || s_digits(s, len, &i, 2, &mo) ||
        i >= len || s[i++] != '-' || s_digits(s, len, &i, 2, &d))
        return -1;
    if (i < len && (s[i] == 'T' || s[i] == 't' || s[i] == ' ')) {
        i++;
        if (s_digits(s, len, &i, 2, &h) || i >= len || s[i++] != ':' ||
            s_digits(s, len, &i, 2, &mi))
            return -1;
        if (i < len && s[i] == ':') {
            i++;
            if (s_digits(s, len, &i, 2, &se))
                return -1;
            if (i < len && (s[i] == '.' || s[i] == ',')) {
                i++;
                int nd = 0;
                while (i < len && s[i] >= '0' && s[i] <= '9') {
                    if (nd < 3)
                        frac = frac * 10 + (s[i] - '0');
                    nd++;
                    i++;
                }
                if (nd == 0)
                    return -1;
                for (; nd < 3; nd++)
                    frac *= 10;
            }
        }
    }
    int off_min = 0;
    if (i < len) {
        if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == len) {
            i++;
        } else if (s[i] == '+' || s[i] == '-') {
            int sign = s[i++] == '-' ? -1 : 1, oh, om = 0;
            if (s_digits(s, len, &i, 2, &oh))
                return -1;
            if (i < len && s[i] == ':')
                i++;
            if (i < len && s_digits(s, len, &i, 2, &om))
                return -1;
            if (oh > 23 || om > 59)
                return -1;
            off_min = sign * (oh * 60 + om);
        } else {
            return -1;
        }
    }
    if (i != len)
        return -1;
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || se > 60)
        return -1;
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo == 2 && d == 29 && !leap)
        return -1;
    int64_t days = s_days_from_civil(y, (unsigned)mo, (unsigned)d);
    int64_t secs = days * 86400 + h * 3600 + mi * 60 + se - (int64_t)off_min * 60;
    *ms = secs * 1000 + frac;
    return 0;
}

uint64_t
pd_hash64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL ^ seed;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    /* splitmix64 finaliser: FNV alone clusters badly in the low bits. */
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    h ^= h >> 31;
    return h;
}

uint64_t
pd_hash2(pd_str_t a, pd_str_t b)
{
    uint64_t h = pd_hash64(a.ptr, a.len, 0x9e3779b97f4a7c15ULL);
    return pd_hash64(b.ptr, b.len, h);
}

//  Whether fd is a private regular file of this user. (glibc's shm_open adds O_NOFOLLOW, so a
//  symlink planted in /dev/shm is not followed either.)
static bool
s_shm_private(int fd, struct stat *st)
{
    return fstat(fd, st) == 0 && S_ISREG(st->st_mode) && st->st_uid == geteuid() &&
           !(st->st_mode & 077);
}

int
pd_shm_open(const char *name, bool *made)
{
    *made = false;
    int fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd >= 0) {
        *made = true;
        return fd;
    }
    if (errno == EEXIST)
        fd = shm_open(name, O_RDWR, 0600);
    if (fd < 0 && (errno == ELOOP || errno == EACCES)) { //  a symlink, or someone else's
        pd_log_warn("refusing the shared-memory segment %s: %s; someone else may have made it. "
                    "Remove /dev/shm%s if it is not yours to keep",
                    name, errno == ELOOP ? "it is a symbolic link" : strerror(errno), name);
        return -1;
    }
    if (fd < 0) {
        pd_log_warn("shm_open %s: %s", name, strerror(errno));
        return -1;
    }
    struct stat st = {0};
    if (!s_shm_private(fd, &st)) {
        pd_log_warn("refusing the shared-memory segment %s: not a private file of this user "
                    "(owner uid %d, mode %03o); someone else may have made it. Remove "
                    "/dev/shm%s if it is not yours to keep",
                    name, (int)st.st_uid, (unsigned)(st.st_mode & 0777), name);
        close(fd);
        errno = EPERM;
        return -1;
    }
    return fd;
}

int
pd_shm_rename(const char *from, const char *to)
{
    char a[PATH_MAX], b[PATH_MAX]; /* glibc's shm_open names files in /dev/shm */
    if (from[0] != '/' || to[0] != '/' || strchr(from + 1, '/') || strchr(to + 1, '/') ||
        snprintf(a, sizeof a, "/dev/shm%s", from) >= (int)sizeof a ||
        snprintf(b, sizeof b, "/dev/shm%s", to) >= (int)sizeof b) {
        errno = EINVAL;
        return -1;
    }
    return rename(a, b);
}

void *
pd_shm_map(int fd, size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
#ifdef MADV_HUGEPAGE
    if (p != MAP_FAILED)
        (void)madvise(p, len, MADV_HUGEPAGE); /* a file system without them ignores it */
#endif
    return p;
}

int
pd_shm_unlink(const char *name)
{
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0)
        return -1;
    struct stat st;
    bool ours = s_shm_private(fd, &st);
    close(fd);
    return ours ? shm_unlink(name) : -1;
}

uint64_t
pd_hash2_keyed(const unsigned char key[PD_HASH_KEYBYTES], pd_str_t a, pd_str_t b)
{
    unsigned char buf[256], out[crypto_shorthash_BYTES];
    uint64_t h;
    if (a.len + 1 + b.len <= sizeof buf) {
        if (a.len)
            memcpy(buf, a.ptr, a.len);
        buf[a.len] = 0x1f;
        if (b.len)
            memcpy(buf + a.len + 1, b.ptr, b.len);
        crypto_shorthash(out, buf, a.len + 1 + b.len, key);
    } else { /* long keys (rare): BLAKE2b, keyed and incremental */
        crypto_generichash_state st;
        crypto_generichash_init(&st, key, PD_HASH_KEYBYTES, sizeof out);
        crypto_generichash_update(&st, (const unsigned char *)a.ptr, a.len);
        crypto_generichash_update(&st, (const unsigned char *)"\x1f", 1);
        crypto_generichash_update(&st, (const unsigned char *)b.ptr, b.len);
        crypto_generichash_final(&st, out, sizeof out);
    }
    memcpy(&h, out, sizeof h);
    return h;
}

int
pd_shard_owner(pd_str_t project, pd_str_t key, int nnodes)
{
    uint64_t h = pd_hash2(project, key), best = 0;
    int owner = 1;
    for (int n = 1; n <= nnodes; n++) {
        uint64_t w = pd_hash64(&n, sizeof n, h);
        if (w > best) {
            best = w;
            owner = n;
        }
    }
    return owner;
}

bool
pd_uid_valid(pd_str_t s)
{
    if (s.len == 0 || s.len > 36)
        return false;
    if (s.ptr[0] == '_' || s.ptr[0] == '.' || s.ptr[0] == '-')
        return false;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return false;
    }
    return true;
}

void
pd_buf_init(pd_buf_t *b)
{
    b->data = NULL;
    b->len = b->cap = 0;
}

void
pd_buf_free(pd_buf_t *b)
{
    free(b->data);
    pd_buf_init(b);
}

/*  A buffer of megabytes (a list's reply, a SYNC answer, a restarted store's replay) is
 *  written once, page after page (every growable buffer grows by pd_grow). Each fresh page
 *  costs a fault, and on paravirtualised hosts a fault on fresh anonymous memory costs 11 us and
 *  more: 16 MB took 47 ms. Where the host gives transparent huge pages on request (the common
 *  "madvise" setting) the same 16 MB take about 1 ms. So a large buffer asks for them; a host
 *  without them ignores it. */
#define S_BUF_HUGE (4u << 20)
#define S_HUGE_PAGE (2u << 20)

static void
s_buf_huge(char *p, size_t cap)
{
#ifdef MADV_HUGEPAGE
    uintptr_t a = ((uintptr_t)p + S_HUGE_PAGE - 1) & ~(uintptr_t)(S_HUGE_PAGE - 1);
    uintptr_t e = ((uintptr_t)p + cap) & ~(uintptr_t)(S_HUGE_PAGE - 1);
    if (e > a)
        (void)madvise((void *)a, e - a, MADV_HUGEPAGE);
#else
    (void)p;
    (void)cap;
#endif
}

void *
pd_grow(void *p, size_t *cap, size_t need, size_t init)
{
    if (need <= *cap)
        return p;
    size_t n = *cap ? *cap : init;
    while (n < need)
        n *= 2;
    char *q = realloc(p, n);
    if (!q)
        abort();
    if (n >= S_BUF_HUGE)
        s_buf_huge(q, n);
    *cap = n;
    return q;
}

void
pd_buf_reserve(pd_buf_t *b, size_t n)
{
    b->data = pd_grow(b->data, &b->cap, b->len + n, 256);
}

void
pd_buf_add(pd_buf_t *b, const void *p, size_t n)
{
    pd_buf_reserve(b, n);
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
}

int
pd_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

void
pd_buf_addf(pd_buf_t *b, const char *fmt, ...)
{
    pd_buf_reserve(b, 128);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= b->cap - b->len) {
        pd_buf_reserve(b, (size_t)n + 1);
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

void
pd_buf_add_json_str(pd_buf_t *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    pd_buf_reserve(b, len + 2);
    b->data[b->len++] = '"';
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        pd_buf_add(b, s + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0};
        size_t n = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        pd_buf_add(b, esc, n);
    }
    pd_buf_add(b, s + run, len - run);
    pd_buf_add(b, "\"", 1);
}

pd_str_t
pd_list_first(pd_str_t list)
{
    if (!list.ptr || list.len == 0)
        return PD_STR_NULL;
    const char *end = memchr(list.ptr, 0, list.len);
    size_t n = end ? (size_t)(end - list.ptr) : list.len;
    return (pd_str_t){list.ptr, n};
}

pd_str_t
pd_list_next(pd_str_t list, pd_str_t cur)
{
    const char *p = cur.ptr + cur.len + 1;
    const char *lend = list.ptr + list.len;
    if (p >= lend)
        return PD_STR_NULL;
    const char *end = memchr(p, 0, (size_t)(lend - p));
    size_t n = end ? (size_t)(end - p) : (size_t)(lend - p);
    return (pd_str_t){p, n};
}

bool
pd_list_has(pd_str_t list, pd_str_t s)
{
    for (pd_str_t it = pd_list_first(list); it.ptr; it = pd_list_next(list, it))
        if (pd_str_eq(it, s))
            return true;
    return false;
}

//  The list without its last NUL.
static inline pd_str_t
s_list_bare(pd_str_t l)
{
    return l.len && !l.ptr[l.len - 1] ? (pd_str_t){l.ptr, l.len - 1} : l;
}

bool
pd_list_eq(pd_str_t a, pd_str_t b)
{
    return pd_str_eq(s_list_bare(a), s_list_bare(b));
}

void
pd_util_test(bool verbose)
{
    (void)verbose;
    /* token bucket: a burst of 3, then one per 100 ms at 10/s */
    pd_rate_t rate;
    pd_rate_init(&rate, 3, 1000);
    for (int i = 0; i < 3; i++)
        PD_CHECK(pd_rate_take(&rate, 10, 3, 1000));
    PD_CHECK(!pd_rate_take(&rate, 10, 3, 1000) && !pd_rate_take(&rate, 10, 3, 1099));
    PD_CHECK(pd_rate_take(&rate, 10, 3, 1100) && !pd_rate_take(&rate, 10, 3, 1100));
    PD_CHECK(pd_rate_take(&rate, 10, 3, 100000) && pd_rate_take(&rate, 10, 3, 100000));
    char buf[32];
    int64_t ms;
    PD_CHECK(pd_time_format(0, buf) == 29);
    PD_CHECK(strcmp(buf, "1970-01-01T00:00:00.000+00:00") == 0);
    PD_CHECK(pd_time_parse(PD_STR("2024-01-01T00:00:00.000+00:00").ptr, 29, &ms) == 0);
    pd_time_format(ms, buf);
    PD_CHECK(strcmp(buf, "2024-01-01T00:00:00.000+00:00") == 0);
    /* the hand-rolled formatter against gmtime_r, across leap years, centuries, before 1970 */
    for (int64_t t = -62135596800000LL; t < 253402300799000LL; t += 86399999LL * 37 + 123) {
        char want[64];
        int64_t secs = t >= 0 ? t / 1000 : (t - 999) / 1000;
        time_t tt = (time_t)secs;
        struct tm tm;
        gmtime_r(&tt, &tm);
        snprintf(want, sizeof want, "%04d-%02d-%02dT%02d:%02d:%02d.%03d+00:00", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(t - secs * 1000));
        PD_CHECK(pd_time_format(t, buf) == 29);
        PD_CHECK(strcmp(buf, want) == 0);
        PD_CHECK(pd_time_parse(buf, 29, &ms) == 0 && ms == t);
    }
    const char *ok[] = {"2026-05-25 10:00:00.000", "2026-05-25T10:00:00Z", "2026-05-25T12:00:00+02:00",
                        "2026-05-25T10:00:00.000000Z", "2026-05-25T10:00", "2026-05-25"};
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        PD_CHECK(pd_time_parse(ok[i], strlen(ok[i]), &ms) == 0);
        if (i < 5) {
            pd_time_format(ms, buf);
            PD_CHECK(strcmp(buf, "2026-05-25T10:00:00.000+00:00") == 0);
        }
    }
    const char *bad[] = {"", "tomorrow", "2026-13-01", "2026-02-30T00:00:00Z", "2026-05-25T25:00",
                         "2026-05-25T10:00:00Q", "2026-05-25T10:00:00.Z", "20260525"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        PD_CHECK(pd_time_parse(bad[i], strlen(bad[i]), &ms) == -1);
    PD_CHECK(pd_uid_valid(PD_STR("abc-1.2_3")));
    PD_CHECK(!pd_uid_valid(PD_STR("_abc")));
    PD_CHECK(!pd_uid_valid(PD_STR("unique()")));
    PD_CHECK(!pd_uid_valid(PD_STR("0123456789012345678901234567890123456")));
    pd_buf_t b;
    pd_buf_init(&b);
    pd_buf_add_json_str(&b, "a\"b\\\n\x01", 6);
    PD_CHECK(b.len == 16 && memcmp(b.data, "\"a\\\"b\\\\\\n\\u0001\"", 16) == 0);
    pd_buf_free(&b);
    pd_str_t l = {"any\0user:u1\0", 12};
    PD_CHECK(pd_list_has(l, PD_STR("user:u1")) && pd_list_has(l, PD_STR("any")));
    PD_CHECK(!pd_list_has(l, PD_STR("users")));
    /* a list without its last NUL holds the same roles */
    pd_str_t bare = {"any\0user:u1", 11}, one = {"user:u1\0", 8}, one_bare = {"user:u1\\\"", 7};
    PD_CHECK(pd_list_has(bare, PD_STR("user:u1")) && pd_list_has(one_bare, PD_STR("user:u1")));
    PD_CHECK(pd_list_eq(l, bare) && pd_list_eq(bare, l) && pd_list_eq(one, one_bare));
    PD_CHECK(!pd_list_eq(l, one) && !pd_list_eq(one, PD_STR("user:u1\0\0")));
    PD_CHECK(pd_list_eq(PD_STR_NULL, PD_STR("")) && !pd_list_eq(one, PD_STR("user:u2")));
    PD_CHECK(pd_hash2(PD_STR("p"), PD_STR("x")) == pd_hash2(PD_STR("p"), PD_STR("x")));
    {
        unsigned char k1[PD_HASH_KEYBYTES] = {1}, k2[PD_HASH_KEYBYTES] = {2};
        char big[300];
        memset(big, 'x', sizeof big);
        pd_str_t longs = {big, sizeof big};
        PD_CHECK(pd_hash2_keyed(k1, PD_STR("p"), PD_STR("x")) ==
                 pd_hash2_keyed(k1, PD_STR("p"), PD_STR("x")));
        PD_CHECK(pd_hash2_keyed(k1, PD_STR("p"), PD_STR("x")) !=
                 pd_hash2_keyed(k2, PD_STR("p"), PD_STR("x")));
        PD_CHECK(pd_hash2_keyed(k1, PD_STR("ab"), PD_STR("c")) !=
                 pd_hash2_keyed(k1, PD_STR("a"), PD_STR("bc")));
        PD_CHECK(pd_hash2_keyed(k1, longs, PD_STR("x")) == pd_hash2_keyed(k1, longs, PD_STR("x")));
        PD_CHECK(pd_hash2_keyed(k1, longs, PD_STR("x")) != pd_hash2_keyed(k2, longs, PD_STR("x")));
    }
}

void
pd_rate_init(pd_rate_t *r, int burst, int64_t now_ms)
{
    r->ms = now_ms;
    r->milli = (int64_t)burst * 1000;
}

bool
pd_rate_take(pd_rate_t *r, int rate, int burst, int64_t now_ms)
{
    int64_t t = r->milli + (now_ms - r->ms) * rate;
    if (t > (int64_t)burst * 1000)
        t = (int64_t)burst * 1000;
    r->ms = now_ms;
    if (t < 1000) {
        r->milli = t;
        return false;
    }
    r->milli = t - 1000;
    return true;
}
