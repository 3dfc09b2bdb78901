/*
 * A model-based exerciser through the C ABI, in the style of fsx: a seeded random sequence
 * of nacre_pwrite at random offsets and lengths (unaligned, tiny, spanning many stripes,
 * past the end), nacre_pread of random ranges, nacre_ftruncate that shrinks and grows,
 * nacre_fsync, close and reopen, and nacre_fstat, each checked against an in-memory copy of
 * the file; then rounds of non-conflicting reads and writes through a queue at depths 1 to
 * 1024. On files of 64 KiB stripes over every target and over one. The seed is printed;
 * the same seed replays the same run.
 *
 *   fsx HOST:PORT [OPS [SEED]]      (default 400 operations per file, seed from the clock)
 */
#include "test_api.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define KIB (1u << 10)
#define MIB (1u << 20)
/* Writes and truncates stay below this offset. */
#define SPAN (6u * MIB)
/* The model's room: the span and the longest write past it. */
#define ROOM (SPAN + 3u * MIB)
#define WAIT_MS 60000

static uint64_t rng_state;

static uint64_t next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static uint64_t below(uint64_t n)
{
    return next() % n;
}

/* A length from 1 to `max`, spread over its powers of two. */
static uint64_t length(uint64_t max)
{
    unsigned bits = 64 - (unsigned)__builtin_clzll(max);
    uint64_t top = 1ull << below(bits);
    uint64_t len = top + below(top);
    return len < 1 ? 1 : len > max ? max : len;
}

struct model {
    unsigned char *bytes;
    uint64_t size;
};

static void model_write(struct model *m, uint64_t off, const unsigned char *data, uint64_t len)
{
    if (off > m->size)
        memset(m->bytes + m->size, 0, off - m->size);
    memcpy(m->bytes + off, data, len);
    if (off + len > m->size)
        m->size = off + len;
}

static void model_truncate(struct model *m, uint64_t size)
{
    if (size > m->size)
        memset(m->bytes + m->size, 0, size - m->size);
    m->size = size;
}

/* Checks what a read of `len` at `off` returned: the bytes the file holds there, then zeros. */
static int check_read(const struct model *m, uint64_t off, const unsigned char *buf, uint64_t len, int64_t n,
                      const char *what, unsigned op)
{
    int64_t want = off >= m->size ? 0 : (int64_t)(m->size - off < len ? m->size - off : len);
    if (n != want) {
        fprintf(stderr, "%s op %u: read of %" PRIu64 " at %" PRIu64 " returned %" PRId64 ", the file holds %" PRId64 " there\n",
                what, op, len, off, n, want);
        return 0;
    }
    if (n > 0 && memcmp(buf, m->bytes + off, (size_t)n) != 0) {
        fprintf(stderr, "%s op %u: read of %" PRIu64 " at %" PRIu64 ": bytes differ from the model\n", what, op, len, off);
        return 0;
    }
    for (uint64_t i = (uint64_t)n; i < len; i++)
        if (buf[i] != 0) {
            fprintf(stderr, "%s op %u: byte %" PRIu64 " past the end is not 0\n", what, op, i);
            return 0;
        }
    return 1;
}

static nacre_file *create(nacre_client *client, const char *path, int64_t count)
{
    nacre_layout *l;
    nacre_file *f = NULL;
    OK(nacre_layout_new(&l));
    OK(nacre_layout_stripe_count_set(l, count));
    OK(nacre_layout_stripe_size_set(l, 64 * KIB));
    OK(nacre_create(client, path, 0644, l, &f));
    OK(nacre_layout_free(l));
    return f;
}

/* The blocking calls, `ops` of them, on a new file at `path`. */
static void blocking(nacre_client *client, const char *path, int64_t count, unsigned ops, struct model *m)
{
    nacre_file *f = create(client, path, count);
    unsigned char *buf = malloc(3 * MIB);
    for (unsigned op = 0; op < ops && !failures; op++) {
        uint64_t r = below(100);
        if (r < 36) {
            uint64_t len = length(r < 2 ? 3 * MIB : 256 * KIB);
            uint64_t off = below(3) == 0 ? m->size : below(SPAN);
            if (off > SPAN)
                off = SPAN;
            for (uint64_t i = 0; i < len; i++)
                buf[i] = (unsigned char)next();
            CHECK(nacre_pwrite(f, buf, len, off) == (int64_t)len);
            model_write(m, off, buf, len);
        } else if (r < 72) {
            uint64_t len = length(r < 38 ? 3 * MIB : 256 * KIB);
            uint64_t off = below(m->size + MIB);
            memset(buf, 0xa5, len);
            int64_t n = nacre_pread(f, buf, len, off);
            CHECK(check_read(m, off, buf, len, n, path, op));
        } else if (r < 82) {
            uint64_t size = below(2) ? below(m->size + 1) : m->size + length(MIB);
            if (size > SPAN)
                size = SPAN;
            OK(nacre_ftruncate(f, size));
            model_truncate(m, size);
        } else if (r < 87) {
            OK(nacre_fsync(f));
        } else if (r < 92) {
            OK(nacre_close(f));
            OK(nacre_open(client, path, O_RDWR, 0, NULL, &f));
        } else {
            nacre_attr attr;
            OK(nacre_fstat(f, &attr));
            CHECK(attr.size == m->size);
            OK(nacre_stat(client, path, &attr));
            CHECK(attr.size == m->size);
        }
    }
    free(buf);
    OK(nacre_close(f));
}

/* Rounds of `depth` operations on disjoint slots of the file, in flight together. */
static void queued(nacre_client *client, const char *path, struct model *m)
{
    static const unsigned depths[] = {1, 2, 63, 64, 65, 128, 129, 1024};
    nacre_file *f;
    OK(nacre_open(client, path, O_RDWR, 0, NULL, &f));
    for (unsigned d = 0; d < sizeof depths / sizeof depths[0] && !failures; d++) {
        unsigned depth = depths[d];
        uint64_t slot = (4 * MIB) / depth;
        nacre_queue *q;
        OK(nacre_queue_create(client, depth, &q));
        unsigned char *bufs = malloc(4 * MIB);
        uint64_t *offs = malloc(depth * sizeof *offs), *lens = malloc(depth * sizeof *lens);
        unsigned char *writes = malloc(depth);
        for (unsigned t = 0; t < depth; t++) {
            uint64_t within = below(slot);
            offs[t] = t * slot + within;
            lens[t] = 1 + below(slot - within);
            writes[t] = (unsigned char)below(2);
            unsigned char *b = bufs + t * slot;
            if (writes[t]) {
                for (uint64_t i = 0; i < lens[t]; i++)
                    b[i] = (unsigned char)next();
                OK(nacre_prep_write(q, f, b, lens[t], offs[t], t));
            } else {
                memset(b, 0xa5, lens[t]);
                OK(nacre_prep_read(q, f, b, lens[t], offs[t], t));
            }
        }
        CHECK(nacre_queue_submit(q) == (int)depth);
        nacre_completion *done = malloc(depth * sizeof *done);
        unsigned got = 0;
        while (got < depth) {
            int k = nacre_queue_wait(q, done + got, depth - got, 1, WAIT_MS);
            CHECK(k > 0);
            if (k <= 0)
                break;
            got += (unsigned)k;
        }
        /* Writes may grow the file while reads past its old end run: those may see any size
         * between, so reads of this round are checked against the size before and after. */
        uint64_t old_size = m->size;
        for (unsigned i = 0; i < got; i++)
            if (writes[done[i].tag])
                model_write(m, offs[done[i].tag], bufs + done[i].tag * slot, lens[done[i].tag]);
        for (unsigned i = 0; i < got; i++) {
            unsigned t = (unsigned)done[i].tag;
            if (writes[t]) {
                CHECK(done[i].result == (int64_t)lens[t]);
                continue;
            }
            struct model before = {m->bytes, old_size};
            CHECK(check_read(&before, offs[t], bufs + t * slot, lens[t], done[i].result, "queued", d) ||
                  check_read(m, offs[t], bufs + t * slot, lens[t], done[i].result, "queued", d));
        }
        OK(nacre_queue_destroy(q));
        free(done);
        free(bufs);
        free(offs);
        free(lens);
        free(writes);
        nacre_attr attr;
        OK(nacre_fstat(f, &attr));
        CHECK(attr.size == m->size);
    }
    OK(nacre_close(f));
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s HOST:PORT [OPS [SEED]]\n", argv[0]);
        return 2;
    }
    unsigned ops = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 400;
    uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : (uint64_t)time(NULL);
    printf("fsx: seed %" PRIu64 " (replay: fsx HOST:PORT %u %" PRIu64 ")\n", seed, ops, seed);
    rng_state = seed | 1;
    nacre_client *client;
    OK(nacre_connect(argv[1], &client));
    struct model m = {malloc(ROOM), 0};
    const char *paths[] = {"/fsx-c-all", "/fsx-c-one"};
    const int64_t counts[] = {NACRE_STRIPE_COUNT_ALL, 1};
    for (unsigned i = 0; i < 2 && !failures; i++) {
        m.size = 0;
        blocking(client, paths[i], counts[i], ops, &m);
        queued(client, paths[i], &m);
        OK(nacre_unlink(client, paths[i]));
    }
    free(m.bytes);
    OK(nacre_disconnect(client));
    if (failures)
        fprintf(stderr, "fsx: %d check(s) failed (seed %" PRIu64 ")\n", failures, seed);
    else
        printf("fsx: every check passed\n");
    return failures ? 1 : 0;
}
