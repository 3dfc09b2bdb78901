/*
 * nacre-ior: the MPI mode of `nacre bench`. IOR's test of a parallel file system, in IOR's
 * flags, with MPI ranks as its tasks, through libnacre's C ABI. Rank r is task r.
 *
 * It follows the threads mode (cli/src/bench.rs and cli/src/bench/) byte for byte: the same
 * offsets and file names (bench/plan.rs), the same data and check (bench/pattern.rs), the
 * same latency histogram (bench/latency.rs) and the same reduction, text report and JSON
 * (bench/report.rs, with "driver":"mpi"). So a file one driver writes with -k verifies
 * under the other with -r, and the two reports read the same.
 *
 * Build (against an installed libnacre; see scripts/install.sh):
 *
 *   mpicc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O2 benches/mpi/nacre-ior.c \
 *       -o nacre-ior $(pkg-config --cflags --libs nacre) -Wl,-rpath,PREFIX/lib
 *
 * Run (tasks are the ranks mpirun starts; -N, if given, must equal them):
 *
 *   mpirun -np 4 nacre-ior --meta HOST:PORT -t 1m -b 4m -s 2 -C -e -i 2
 *   mpirun -np 4 nacre-ior --preset ior-hard -s 64 --json
 *
 *   -o, --path PATH          the test file [/nacre-bench]; with -F each task's PATH.NNNNNNNN
 *   --preset ior-easy|ior-hard  IO500's shapes (-F -t 2M -b 256M -e -C; -t 47008 -b 47008
 *                            -s 2048 -e -C); -t, -b and -s given with one replace its sizes
 *   -N, --tasks N            tasks: must equal the ranks (mpirun -np)
 *   -t, --transfer-size SIZE bytes per transfer [4M]
 *   -b, --block-size SIZE    bytes per task per segment, a multiple of -t [256M]
 *   -s, --segments N         segments [1]
 *   --size SIZE              total bytes: -b equal to -t, as many segments as make SIZE, -e
 *   -F, --file-per-process   a file per task instead of one shared file
 *   -w, --write / -r, --read the phases (neither: both)
 *   -C, --reorder-tasks      task r reads what task (r + 1) mod N wrote
 *   -e, --fsync              fsync at the end of the write phase (timed, in close)
 *   -z, --random             each task visits its transfers in a random order
 *   -i, --repetitions N      repetitions [1]
 *   -c, --stripe-count N     stripes of created files (-1: every target) [-1]
 *   -S, --stripe-size SIZE   bytes per stripe of created files [1M]
 *   --queue-depth N          transfers in flight per rank [1]; above 1 through a nacre_queue
 *   --rand4k-ops N           random 4 KiB reads after the read phase, over all tasks
 *   -k, --keep               keep the files at the end
 *   --json                   also print the results as one JSON object, the last line
 *   --meta HOST:PORT         the metadata service [$NACRE_META, else 127.0.0.1:7400]
 *
 * Sizes take K, M, G and T (powers of 1024). Every byte read is checked. Exit status: 0; 1
 * when a byte read back is wrong or a file has the wrong size after writing (each rank
 * names the file, offset and bytes); 2 for bad arguments (rank 0 names the flag). A failed
 * libnacre call stops every rank (MPI_Abort) after the failing rank says what failed.
 *
 * Where it differs from the threads mode, because tasks are processes: each rank has its
 * own connection to the cluster; the threads mode's bounds on what one process holds
 * (queue depth times transfer size, transfers to shuffle) hold per rank, and tasks are not
 * capped at 1024; times are seconds since each rank's exit from the phase's barrier, so
 * ranks on hosts with unsynchronised clocks reduce correctly; there is no progress bar.
 */
#include <nacre.h>

#include <mpi.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- Defaults and bounds: the threads mode's (cli/src/bench.rs, bench/plan.rs) ---- */

#define PROGRAM "nacre-ior"
#define DRIVER "mpi"
#define JSON_FORMAT 1
#define DEFAULT_META "127.0.0.1:7400"
#define META_ENV "NACRE_META"
#define DEFAULT_PATH "/nacre-bench"
#define DEFAULT_TRANSFER_BYTES (UINT64_C(4) << 20)
#define DEFAULT_BLOCK_BYTES (UINT64_C(256) << 20)
#define DEFAULT_SEGMENTS UINT64_C(1)
#define DEFAULT_STRIPE_COUNT (-1)
#define DEFAULT_STRIPE_SIZE_BYTES (UINT64_C(1) << 20)
/* ior-easy: IO500's 2 MiB transfers, a file per task, 256 MiB per task. */
#define EASY_TRANSFER_BYTES (UINT64_C(2) << 20)
#define EASY_BLOCK_BYTES (UINT64_C(256) << 20)
/* ior-hard: IO500's 47,008-byte transfers, one per block, 2048 segments, one shared file. */
#define HARD_TRANSFER_BYTES UINT64_C(47008)
#define HARD_SEGMENTS UINT64_C(2048)
/* Tasks are ranks; the bound keeps rank 0's loops over files and the 8-digit names sane. */
#define MAX_TASKS (UINT32_C(1) << 20)
#define MAX_QUEUE_DEPTH 256
#define MAX_TRANSFER_BYTES (UINT64_C(1) << 30)
/* The threads mode's per-process bounds, per rank here. */
#define MAX_BUFFER_BYTES_PER_RANK (UINT64_C(4) << 30)
#define MAX_SHUFFLED_TRANSFERS_PER_RANK (UINT64_C(1) << 25)
#define MAX_REPETITIONS 10000
#define RAND4K_BYTES UINT64_C(4096)
/* How far -C moves a reading task (IOR's shift for one task per node). */
#define READ_TASK_SHIFT 1
#define FILE_MODE 0644
/* Longest wait for one queued transfer; each request has its own, shorter, timeout. */
#define QUEUE_WAIT_TIMEOUT_MS 600000
/* Test file names: PATH, a dot and eight digits. */
#define PATH_BYTES (NACRE_PATH_MAX + 16)
/* Verification failures a rank describes per phase (the rest are counted). */
#define MAX_MISMATCH_MESSAGES 1

/* ---- The pattern (bench/pattern.rs) and the random order (bench/plan.rs) ---- */

#define PATTERN_SEED UINT64_C(0x6e6163726562656e)
#define PATTERN_STEP UINT64_C(0x9E3779B97F4A7C15)
#define WORD_MARK (UINT64_C(1) << 63)
#define WORD_BYTES 8
#define VERIFY_RUN_WORDS 64
#define ORDER_SEED UINT64_C(0x7a5f0ff5e7a50001)
#define SPLITMIX_STEP UINT64_C(0x9E3779B97F4A7C15)
/* The phase code mixed into the random 4 KiB reads' seed. */
#define RAND4K_SEED_CODE UINT64_C(0xff)

/* ---- The latency histogram (bench/latency.rs) ---- */

#define SUB_BUCKET_BITS 5
#define SUB_BUCKETS (UINT64_C(1) << SUB_BUCKET_BITS)
#define LATENCY_BUCKETS ((64 - SUB_BUCKET_BITS + 1) * (1 << SUB_BUCKET_BITS))

/* ---- The report (bench/report.rs) ---- */

#define MIB 1048576.0
#define KIB 1024.0
#define MB 1e6
#define MIN_SECONDS 1e-9

static int rank, ranks;

/* ---------------------------------------------------------------------------------------- */
/* Failing                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* Says what failed, from this rank, and stops every rank. */
static _Noreturn void fail(const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    fprintf(stderr, PROGRAM ": task %d: ", rank);
    vfprintf(stderr, format, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
    exit(1);
}

/* The text of a failed call: its errno's and the library's message. */
static const char *call_error(int64_t rc)
{
    static char text[1024];
    snprintf(text, sizeof text, "%s (%s)", nacre_strerror((int)rc), nacre_last_error());
    return text;
}

/* A usage error: the flag, as the threads mode names it, and what is wrong. */
struct usage_error {
    const char *flag;
    char message[512];
};

static bool usage_fail(struct usage_error *e, const char *flag, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    e->flag = flag;
    vsnprintf(e->message, sizeof e->message, format, ap);
    va_end(ap);
    return false;
}

/* ---------------------------------------------------------------------------------------- */
/* Pattern                                                                                  */
/* ---------------------------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t x)
{
    uint64_t z = x + UINT64_C(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static uint64_t file_seed(uint32_t file_index)
{
    return splitmix64(PATTERN_SEED ^ (uint64_t)file_index);
}

static uint64_t pattern_word(uint64_t index, uint64_t seed)
{
    return (index * PATTERN_STEP + seed) | WORD_MARK;
}

static unsigned char pattern_byte(uint64_t at, uint64_t seed)
{
    return (unsigned char)(pattern_word(at / WORD_BYTES, seed) >> (8 * (at % WORD_BYTES)));
}

/* Words are little-endian whatever the host. */
static void store_le64(unsigned char *p, uint64_t word)
{
    for (int i = 0; i < WORD_BYTES; i++)
        p[i] = (unsigned char)(word >> (8 * i));
}

static uint64_t load_le64(const unsigned char *p)
{
    uint64_t word = 0;
    for (int i = 0; i < WORD_BYTES; i++)
        word |= (uint64_t)p[i] << (8 * i);
    return word;
}

/* Bytes from `at` to the next word boundary, at most `len`. */
static size_t head_len(uint64_t at, size_t len)
{
    size_t misalign = (size_t)(at % WORD_BYTES);
    if (misalign == 0)
        return 0;
    size_t head = WORD_BYTES - misalign;
    return head < len ? head : len;
}

/* Fills `buf` with the pattern of the file bytes at `offset`. */
static void pattern_fill(unsigned char *buf, size_t len, uint64_t offset, uint64_t seed)
{
    size_t i = head_len(offset, len);
    for (size_t h = 0; h < i; h++)
        buf[h] = pattern_byte(offset + h, seed);
    for (; i + WORD_BYTES <= len; i += WORD_BYTES)
        store_le64(buf + i, pattern_word((offset + i) / WORD_BYTES, seed));
    for (; i < len; i++)
        buf[i] = pattern_byte(offset + i, seed);
}

/* The first byte that differs from the pattern. */
struct mismatch {
    uint64_t offset;
    unsigned char expected, found;
};

static bool first_mismatch(const unsigned char *buf, size_t len, uint64_t offset, uint64_t seed,
                           struct mismatch *m)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char expected = pattern_byte(offset + i, seed);
        if (buf[i] != expected) {
            *m = (struct mismatch){ .offset = offset + i, .expected = expected, .found = buf[i] };
            return true;
        }
    }
    return false;
}

/* True when `buf` holds the pattern of the file bytes at `offset`; else `*m` says where not. */
static bool pattern_verify(const unsigned char *buf, size_t len, uint64_t offset, uint64_t seed,
                           struct mismatch *m)
{
    size_t head = head_len(offset, len);
    if (first_mismatch(buf, head, offset, seed, m))
        return false;
    size_t body_words = (len - head) / WORD_BYTES;
    uint64_t first_word = (offset + head) / WORD_BYTES;
    /* Or the differences of a run of words together (this vectorises), then look closer
     * only where something differs. */
    for (size_t run = 0; run < body_words; run += VERIFY_RUN_WORDS) {
        size_t words = body_words - run < VERIFY_RUN_WORDS ? body_words - run : VERIFY_RUN_WORDS;
        const unsigned char *at = buf + head + run * WORD_BYTES;
        uint64_t diff = 0;
        for (size_t k = 0; k < words; k++)
            diff |= load_le64(at + k * WORD_BYTES) ^ pattern_word(first_word + run + k, seed);
        if (diff != 0 && first_mismatch(at, words * WORD_BYTES,
                                         offset + head + run * WORD_BYTES, seed, m))
            return false;
    }
    size_t tail_start = head + body_words * WORD_BYTES;
    return !first_mismatch(buf + tail_start, len - tail_start, offset + tail_start, seed, m);
}

/* ---------------------------------------------------------------------------------------- */
/* Latency histogram                                                                        */
/* ---------------------------------------------------------------------------------------- */

struct latencies {
    uint64_t counts[LATENCY_BUCKETS];
    uint64_t count, sum_ns, min_ns, max_ns;
};

struct latency_summary {
    uint64_t count;
    double mean_s, min_s, p50_s, p99_s, max_s;
};

static size_t bucket_of(uint64_t ns)
{
    if (ns < 2 * SUB_BUCKETS)
        return (size_t)ns;
    uint64_t e = 63 - (uint64_t)__builtin_clzll(ns);
    uint64_t sub = (ns >> (e - SUB_BUCKET_BITS)) - SUB_BUCKETS;
    return (size_t)((e - SUB_BUCKET_BITS + 1) * SUB_BUCKETS + sub);
}

/* The smallest value of bucket `b` and its width. */
static void bucket_range(size_t b, uint64_t *low, uint64_t *width)
{
    if (b < 2 * SUB_BUCKETS) {
        *low = b;
        *width = 1;
        return;
    }
    uint64_t e = b / SUB_BUCKETS + SUB_BUCKET_BITS - 1;
    uint64_t shift = e - SUB_BUCKET_BITS;
    *low = (SUB_BUCKETS + b % SUB_BUCKETS) << shift;
    *width = UINT64_C(1) << shift;
}

static void latencies_reset(struct latencies *l)
{
    memset(l->counts, 0, sizeof l->counts);
    l->count = l->sum_ns = l->max_ns = 0;
    l->min_ns = UINT64_MAX;
}

static void latencies_record(struct latencies *l, uint64_t ns)
{
    l->counts[bucket_of(ns)]++;
    l->count++;
    l->sum_ns += ns;
    if (ns < l->min_ns)
        l->min_ns = ns;
    if (ns > l->max_ns)
        l->max_ns = ns;
}

/* The middle of the bucket holding the ceil(p * count)-th smallest, within min and max. */
static uint64_t percentile_ns(const struct latencies *l, double p)
{
    if (l->count == 0)
        return 0;
    double want = p * (double)l->count;
    uint64_t nth = (uint64_t)want;
    if ((double)nth < want)
        nth++;
    if (nth < 1)
        nth = 1;
    if (nth > l->count)
        nth = l->count;
    uint64_t seen = 0;
    for (size_t b = 0; b < LATENCY_BUCKETS; b++) {
        seen += l->counts[b];
        if (seen >= nth) {
            uint64_t low, width;
            bucket_range(b, &low, &width);
            uint64_t mid = low + width / 2;
            return mid < l->min_ns ? l->min_ns : mid > l->max_ns ? l->max_ns : mid;
        }
    }
    return l->max_ns;
}

static struct latency_summary latencies_summary(const struct latencies *l)
{
    struct latency_summary s = { 0 };
    if (l->count == 0)
        return s;
    s.count = l->count;
    s.mean_s = (double)l->sum_ns / (double)l->count / 1e9;
    s.min_s = (double)l->min_ns / 1e9;
    s.p50_s = (double)percentile_ns(l, 0.50) / 1e9;
    s.p99_s = (double)percentile_ns(l, 0.99) / 1e9;
    s.max_s = (double)l->max_ns / 1e9;
    return s;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * UINT64_C(1000000000) + (uint64_t)t.tv_nsec;
}

/* ---------------------------------------------------------------------------------------- */
/* Plan (bench/plan.rs)                                                                     */
/* ---------------------------------------------------------------------------------------- */

enum access { ACCESS_WRITE, ACCESS_READ, ACCESS_RAND4K };
#define ACCESSES 3

static const char *access_name(enum access a)
{
    return a == ACCESS_WRITE ? "write" : a == ACCESS_READ ? "read" : "rand4k";
}

/* The phase code of a random order's seed. */
static uint64_t order_code(enum access a)
{
    return a == ACCESS_WRITE ? 0 : a == ACCESS_READ ? 1 : 2;
}

struct plan {
    const char *path;
    uint32_t tasks;
    uint64_t transfer_bytes, block_bytes, segments;
    bool file_per_process, reorder_tasks, random_offsets, fsync, write, read, keep;
    uint32_t repetitions, queue_depth;
    int32_t stripe_count;
    uint64_t stripe_size_bytes, rand4k_ops;
};

static uint64_t transfers_per_block(const struct plan *p)
{
    return p->block_bytes / p->transfer_bytes;
}

static uint64_t transfers_per_task(const struct plan *p)
{
    return transfers_per_block(p) * p->segments;
}

static uint64_t bytes_per_task(const struct plan *p)
{
    return p->block_bytes * p->segments;
}

static uint64_t aggregate_bytes(const struct plan *p)
{
    return bytes_per_task(p) * p->tasks;
}

static uint64_t file_bytes(const struct plan *p)
{
    return p->file_per_process ? bytes_per_task(p) : aggregate_bytes(p);
}

static uint32_t files(const struct plan *p)
{
    return p->file_per_process ? p->tasks : 1;
}

/* The task whose data `task` moves in a phase of `access`. */
static uint32_t pretend_rank(const struct plan *p, uint32_t task, enum access access)
{
    if (access != ACCESS_WRITE && p->reorder_tasks)
        return (task + READ_TASK_SHIFT) % p->tasks;
    return task;
}

static uint32_t file_index_of(const struct plan *p, uint32_t pretend)
{
    return p->file_per_process ? pretend : 0;
}

/* The test file, or with -F the test file, a dot and the index in eight digits (IOR's). */
static void file_path(const struct plan *p, uint32_t index, char *out)
{
    if (p->file_per_process)
        snprintf(out, PATH_BYTES, "%s.%08" PRIu32, p->path, index);
    else
        snprintf(out, PATH_BYTES, "%s", p->path);
}

/* The file offset of transfer `n` (in sequential order) of `pretend`'s data. */
static uint64_t plan_offset(const struct plan *p, uint32_t pretend, uint64_t n)
{
    uint64_t segment = n / transfers_per_block(p);
    uint64_t within_block = (n % transfers_per_block(p)) * p->transfer_bytes;
    if (p->file_per_process)
        return segment * p->block_bytes + within_block;
    return segment * p->tasks * p->block_bytes + (uint64_t)pretend * p->block_bytes + within_block;
}

/* The task that wrote the byte at `offset` of file `file_index`. */
static uint32_t writer_of(const struct plan *p, uint32_t file_index, uint64_t offset)
{
    if (p->file_per_process)
        return file_index;
    return (uint32_t)((offset / p->block_bytes) % p->tasks);
}

/* A Fisher-Yates shuffle of 0..count, drawn from splitmix64 as plan.rs draws it. */
static void shuffle(uint64_t *order, uint64_t count, uint64_t seed)
{
    for (uint64_t i = 0; i < count; i++)
        order[i] = i;
    uint64_t state = seed;
    for (uint64_t i = count > 0 ? count - 1 : 0; i >= 1; i--) {
        state += SPLITMIX_STEP;
        uint64_t j = splitmix64(state) % (i + 1);
        uint64_t swap = order[i];
        order[i] = order[j];
        order[j] = swap;
    }
}

static uint64_t order_seed(uint32_t pretend, uint32_t rep, enum access access)
{
    return splitmix64(ORDER_SEED ^ ((uint64_t)rep << 32) ^ (order_code(access) << 24) ^
                      (uint64_t)pretend);
}

/* Every parameter and the relations between them; the error names the flag. */
static bool plan_check(const struct plan *p, struct usage_error *e)
{
    if (p->tasks == 0 || p->tasks > MAX_TASKS)
        return usage_fail(e, "-N/--tasks", "%" PRIu32 " tasks; allowed 1 to %" PRIu32, p->tasks,
                          MAX_TASKS);
    if (p->transfer_bytes == 0 || p->transfer_bytes > MAX_TRANSFER_BYTES)
        return usage_fail(e, "-t/--transfer-size",
                          "transfer size %" PRIu64 "; allowed 1 byte to %" PRIu64 " bytes",
                          p->transfer_bytes, MAX_TRANSFER_BYTES);
    if (p->block_bytes == 0 || p->block_bytes % p->transfer_bytes != 0)
        return usage_fail(e, "-b/--block-size",
                          "block size %" PRIu64 " must be a non-zero multiple of the transfer "
                          "size (-t %" PRIu64 ")",
                          p->block_bytes, p->transfer_bytes);
    if (p->segments == 0)
        return usage_fail(e, "-s/--segments", "0 segments; at least 1");
    uint64_t per_task, aggregate;
    if (__builtin_mul_overflow(p->block_bytes, p->segments, &per_task) ||
        __builtin_mul_overflow(per_task, (uint64_t)p->tasks, &aggregate))
        return usage_fail(e, "-s/--segments",
                          "%" PRIu32 " tasks x %" PRIu64 " segments x %" PRIu64
                          "-byte blocks is more bytes than a file can hold",
                          p->tasks, p->segments, p->block_bytes);
    if (p->repetitions == 0 || p->repetitions > MAX_REPETITIONS)
        return usage_fail(e, "-i/--repetitions", "%" PRIu32 " repetitions; allowed 1 to %d",
                          p->repetitions, MAX_REPETITIONS);
    if (p->queue_depth == 0 || p->queue_depth > MAX_QUEUE_DEPTH)
        return usage_fail(e, "--queue-depth", "%" PRIu32 "; allowed 1 to %d", p->queue_depth,
                          MAX_QUEUE_DEPTH);
    if ((uint64_t)p->queue_depth * p->transfer_bytes > MAX_BUFFER_BYTES_PER_RANK)
        return usage_fail(e, "-t/--transfer-size",
                          "%" PRIu32 " transfers in flight of %" PRIu64
                          " bytes need more than %" PRIu64 " bytes of buffers per rank",
                          p->queue_depth, p->transfer_bytes, MAX_BUFFER_BYTES_PER_RANK);
    if (p->random_offsets && transfers_per_task(p) > MAX_SHUFFLED_TRANSFERS_PER_RANK)
        return usage_fail(e, "-z/--random",
                          "%" PRIu64 " transfers per task to shuffle; at most %" PRIu64
                          " (use a larger -t or fewer segments)",
                          transfers_per_task(p), MAX_SHUFFLED_TRANSFERS_PER_RANK);
    if (p->rand4k_ops > 0 && file_bytes(p) < RAND4K_BYTES)
        return usage_fail(e, "--rand4k-ops",
                          "files of %" PRIu64 " bytes are too small for %" PRIu64 "-byte reads",
                          file_bytes(p), RAND4K_BYTES);
    if (!p->write && !p->read && p->rand4k_ops == 0)
        return usage_fail(e, "-w/--write", "no phase to run (-w, -r or --rand4k-ops)");
    return true;
}

/* ---------------------------------------------------------------------------------------- */
/* Arguments (cli/src/bench.rs's BenchArgs)                                                 */
/* ---------------------------------------------------------------------------------------- */

enum preset { PRESET_NONE, PRESET_IOR_EASY, PRESET_IOR_HARD };

struct args {
    const char *meta, *path;
    enum preset preset;
    bool tasks_given, transfer_given, block_given, segments_given, size_given;
    uint32_t tasks;
    uint64_t transfer_bytes, block_bytes, segments, size_bytes;
    bool file_per_process, write, read, reorder_tasks, fsync, random, keep, json;
    uint32_t repetitions, queue_depth;
    int32_t stripe_count;
    uint64_t stripe_size_bytes, rand4k_ops;
};

enum { OPT_PRESET = 256, OPT_SIZE, OPT_QUEUE_DEPTH, OPT_RAND4K_OPS, OPT_JSON, OPT_META };

#define SHORT_OPTIONS ":o:N:t:b:s:FwrCezi:c:S:kh"

static const struct option LONG_OPTIONS[] = {
    { "path", required_argument, NULL, 'o' },
    { "preset", required_argument, NULL, OPT_PRESET },
    { "tasks", required_argument, NULL, 'N' },
    { "threads", required_argument, NULL, 'N' },
    { "transfer-size", required_argument, NULL, 't' },
    { "transfer", required_argument, NULL, 't' },
    { "block-size", required_argument, NULL, 'b' },
    { "segments", required_argument, NULL, 's' },
    { "size", required_argument, NULL, OPT_SIZE },
    { "file-per-process", no_argument, NULL, 'F' },
    { "write", no_argument, NULL, 'w' },
    { "read", no_argument, NULL, 'r' },
    { "reorder-tasks", no_argument, NULL, 'C' },
    { "fsync", no_argument, NULL, 'e' },
    { "random", no_argument, NULL, 'z' },
    { "repetitions", required_argument, NULL, 'i' },
    { "stripe-count", required_argument, NULL, 'c' },
    { "stripe-size", required_argument, NULL, 'S' },
    { "queue-depth", required_argument, NULL, OPT_QUEUE_DEPTH },
    { "rand4k-ops", required_argument, NULL, OPT_RAND4K_OPS },
    { "keep", no_argument, NULL, 'k' },
    { "json", no_argument, NULL, OPT_JSON },
    { "meta", required_argument, NULL, OPT_META },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 },
};

/* The flag of an option, as messages name it. */
static const char *flag_name(int option)
{
    switch (option) {
    case 'o': return "-o/--path";
    case 'N': return "-N/--tasks";
    case 't': return "-t/--transfer-size";
    case 'b': return "-b/--block-size";
    case 's': return "-s/--segments";
    case 'i': return "-i/--repetitions";
    case 'c': return "-c/--stripe-count";
    case 'S': return "-S/--stripe-size";
    case OPT_PRESET: return "--preset";
    case OPT_SIZE: return "--size";
    case OPT_QUEUE_DEPTH: return "--queue-depth";
    case OPT_RAND4K_OPS: return "--rand4k-ops";
    case OPT_META: return "--meta";
    default: return "an option";
    }
}

static bool all_digits(const char *text)
{
    if (*text == '\0')
        return false;
    for (const char *c = text; *c; c++)
        if (*c < '0' || *c > '9')
            return false;
    return true;
}

/* A decimal number; false if it is not one or does not fit 64 bits. */
static bool parse_u64(const char *text, uint64_t *out)
{
    if (!all_digits(text))
        return false;
    uint64_t value = 0;
    for (const char *c = text; *c; c++)
        if (__builtin_mul_overflow(value, UINT64_C(10), &value) ||
            __builtin_add_overflow(value, (uint64_t)(*c - '0'), &value))
            return false;
    *out = value;
    return true;
}

/* A size as `nacre::units::parse_size` reads it: a number with an optional K, M, G or T. */
static bool parse_size(const char *text, uint64_t *out)
{
    char digits[32];
    size_t len = strlen(text);
    if (len == 0 || len >= sizeof digits)
        return false;
    memcpy(digits, text, len + 1);
    unsigned shift = 0;
    switch (digits[len - 1]) {
    case 'k': case 'K': shift = 10; break;
    case 'm': case 'M': shift = 20; break;
    case 'g': case 'G': shift = 30; break;
    case 't': case 'T': shift = 40; break;
    default: break;
    }
    if (shift)
        digits[len - 1] = '\0';
    uint64_t n;
    if (!parse_u64(digits, &n) || (shift && n > (UINT64_MAX >> shift)))
        return false;
    *out = n << shift;
    return true;
}

static bool parse_u32(const char *text, uint32_t *out)
{
    uint64_t n;
    if (!parse_u64(text, &n) || n > UINT32_MAX)
        return false;
    *out = (uint32_t)n;
    return true;
}

static bool parse_i32(const char *text, int32_t *out)
{
    bool negative = text[0] == '-';
    uint64_t n;
    if (!parse_u64(text + negative, &n) || n > (uint64_t)INT32_MAX + negative)
        return false;
    *out = negative ? (int32_t)(-(int64_t)n) : (int32_t)n;
    return true;
}

static void print_usage(void)
{
    printf("The MPI mode of `nacre bench`: IOR's test of Nacre, tasks are MPI ranks.\n\n"
           "Usage: mpirun -np N " PROGRAM " [OPTIONS]\n\n"
           "Options:\n"
           "      --meta <META>            The metadata service [env: " META_ENV
           "] [default: " DEFAULT_META "]\n"
           "  -o, --path <PATH>            The test file (replaced); with -F each task's file is "
           "PATH.NNNNNNNN [default: " DEFAULT_PATH "]\n"
           "      --preset <PRESET>        An IO500 shape (ior-easy, ior-hard); -t, -b and -s "
           "given with it replace its sizes\n"
           "  -N, --tasks <TASKS>          Tasks: must be the number of ranks\n"
           "  -t, --transfer-size <SIZE>   Bytes per transfer [default: 4M, or the preset's]\n"
           "  -b, --block-size <SIZE>      Bytes per task per segment, a multiple of -t "
           "[default: 256M, or the preset's]\n"
           "  -s, --segments <SEGMENTS>    Segments [default: 1, or the preset's]\n"
           "      --size <SIZE>            Total bytes: sets -b and -s from -t and the ranks, "
           "implies -e\n"
           "  -F, --file-per-process       A file per task instead of one shared file\n"
           "  -w, --write                  Run the write phase\n"
           "  -r, --read                   Run the read phase (every byte checked)\n"
           "  -C, --reorder-tasks          Each task reads what the next task wrote\n"
           "  -e, --fsync                  fsync at the end of the write phase\n"
           "  -z, --random                 Random transfer order within each task's blocks\n"
           "  -i, --repetitions <N>        Repetitions of the whole test [default: 1]\n"
           "  -c, --stripe-count <N>       Stripes of created files (-1: every target) "
           "[default: -1]\n"
           "  -S, --stripe-size <SIZE>     Bytes per stripe of created files [default: 1M]\n"
           "      --queue-depth <N>        Transfers each task keeps in flight [default: 1]\n"
           "      --rand4k-ops <N>         Random 4 KiB reads after the read phase, over all "
           "tasks (0: none); checked [default: 0]\n"
           "  -k, --keep                   Keep the files at the end\n"
           "      --json                   Also print the results as one JSON object, the last "
           "line of standard output\n"
           "  -h, --help                   Print help\n\n"
           "Sizes take K, M, G and T (powers of 1024). Without -w or -r both phases run. Every "
           "byte read is checked; a wrong byte fails the run (exit status 1).\n");
}

enum parsed { PARSED_RUN, PARSED_HELP, PARSED_BAD };

static enum parsed parse_args(int argc, char **argv, struct args *a, struct usage_error *e)
{
    const char *meta_env = getenv(META_ENV);
    *a = (struct args){
        .meta = meta_env && *meta_env ? meta_env : DEFAULT_META,
        .path = DEFAULT_PATH,
        .repetitions = 1,
        .queue_depth = 1,
        .stripe_count = DEFAULT_STRIPE_COUNT,
        .stripe_size_bytes = DEFAULT_STRIPE_SIZE_BYTES,
    };
    opterr = 0;
    int option;
    while ((option = getopt_long(argc, argv, SHORT_OPTIONS, LONG_OPTIONS, NULL)) != -1) {
        bool ok = true;
        const char *value = optarg;
        switch (option) {
        case 'o': a->path = value; ok = strlen(value) <= NACRE_PATH_MAX - 9; break;
        case 'N': a->tasks_given = ok = parse_u32(value, &a->tasks); break;
        case 't': a->transfer_given = ok = parse_size(value, &a->transfer_bytes); break;
        case 'b': a->block_given = ok = parse_size(value, &a->block_bytes); break;
        case 's': a->segments_given = ok = parse_u64(value, &a->segments); break;
        case OPT_SIZE: a->size_given = ok = parse_size(value, &a->size_bytes); break;
        case 'F': a->file_per_process = true; break;
        case 'w': a->write = true; break;
        case 'r': a->read = true; break;
        case 'C': a->reorder_tasks = true; break;
        case 'e': a->fsync = true; break;
        case 'z': a->random = true; break;
        case 'k': a->keep = true; break;
        case OPT_JSON: a->json = true; break;
        case 'i': ok = parse_u32(value, &a->repetitions); break;
        case 'c': ok = parse_i32(value, &a->stripe_count); break;
        case 'S': ok = parse_size(value, &a->stripe_size_bytes); break;
        case OPT_QUEUE_DEPTH: ok = parse_u32(value, &a->queue_depth); break;
        case OPT_RAND4K_OPS: ok = parse_u64(value, &a->rand4k_ops); break;
        case OPT_META: a->meta = value; ok = *value != '\0'; break;
        case OPT_PRESET:
            if (strcmp(value, "ior-easy") == 0)
                a->preset = PRESET_IOR_EASY;
            else if (strcmp(value, "ior-hard") == 0)
                a->preset = PRESET_IOR_HARD;
            else
                ok = false;
            break;
        case 'h': return PARSED_HELP;
        case ':':
            usage_fail(e, strcmp(flag_name(optopt), "an option") ? flag_name(optopt)
                                                                 : argv[optind - 1],
                       "a value is required");
            return PARSED_BAD;
        default:
            if (optopt > 0 && optopt < 256) {
                static char unknown[3] = "-?";
                unknown[1] = (char)optopt;
                usage_fail(e, unknown, "unexpected argument");
            } else {
                usage_fail(e, argv[optind - 1], "unexpected argument");
            }
            return PARSED_BAD;
        }
        if (!ok) {
            const char *what = "not a number";
            switch (option) {
            case 't': case 'b': case 'S': case OPT_SIZE:
                what = "not a size (a number with an optional K, M, G or T)";
                break;
            case 'c': what = "not a number (-1 for every target)"; break;
            case 'o': what = "too long a path to leave room for -F's suffix"; break;
            case OPT_PRESET: what = "not a preset (ior-easy, ior-hard)"; break;
            case OPT_META: what = "not an address (HOST:PORT)"; break;
            default: break;
            }
            usage_fail(e, flag_name(option), "invalid value '%s': %s", value, what);
            return PARSED_BAD;
        }
    }
    if (optind < argc) {
        usage_fail(e, argv[optind], "unexpected argument");
        return PARSED_BAD;
    }
    return PARSED_RUN;
}

/* Presets, defaults and --size resolved into a checked plan (BenchArgs::plan). */
static bool make_plan(const struct args *a, struct plan *p, struct usage_error *e)
{
    uint64_t preset_transfer = 0, preset_block = 0, preset_segments = 0;
    if (a->preset == PRESET_IOR_EASY) {
        preset_transfer = EASY_TRANSFER_BYTES;
        preset_block = EASY_BLOCK_BYTES;
    } else if (a->preset == PRESET_IOR_HARD) {
        preset_transfer = HARD_TRANSFER_BYTES;
        preset_block = HARD_TRANSFER_BYTES;
        preset_segments = HARD_SEGMENTS;
    }
    bool preset_on = a->preset != PRESET_NONE;
    if (a->tasks_given && a->tasks != (uint32_t)ranks)
        return usage_fail(e, "-N/--tasks",
                          "%" PRIu32 " tasks, but mpirun started %d ranks (tasks are the ranks: "
                          "use mpirun -np %" PRIu32 ")",
                          a->tasks, ranks, a->tasks);
    uint32_t tasks = (uint32_t)ranks;
    uint64_t transfer = a->transfer_given ? a->transfer_bytes
                        : preset_transfer ? preset_transfer
                                          : DEFAULT_TRANSFER_BYTES;
    uint64_t block, segments;
    if (a->size_given) {
        if (a->block_given || a->segments_given)
            return usage_fail(e, "--size", "cannot be used with -b/--block-size or -s/--segments");
        if (transfer > 0) {
            if (a->size_bytes == 0 || a->size_bytes % transfer != 0)
                return usage_fail(e, "--size",
                                  "%" PRIu64 " bytes: must be a non-zero multiple of the "
                                  "transfer size (-t %" PRIu64 ")",
                                  a->size_bytes, transfer);
            uint64_t transfers = a->size_bytes / transfer;
            if (transfers % tasks != 0)
                return usage_fail(e, "--size",
                                  "%" PRIu64 " bytes are %" PRIu64 " transfers of %" PRIu64
                                  ", which %" PRIu32 " tasks (mpirun -np) cannot share evenly",
                                  a->size_bytes, transfers, transfer, tasks);
            block = transfer;
            segments = transfers / tasks;
        } else {
            block = transfer;
            segments = DEFAULT_SEGMENTS;
        }
    } else {
        uint64_t per_transfer = transfer > 0 ? transfer : 1;
        uint64_t default_block = DEFAULT_BLOCK_BYTES / per_transfer;
        default_block = (default_block > 0 ? default_block : 1) * transfer;
        block = a->block_given ? a->block_bytes : preset_block ? preset_block : default_block;
        segments = a->segments_given ? a->segments
                   : preset_segments ? preset_segments
                                     : DEFAULT_SEGMENTS;
    }
    bool neither_phase = !a->write && !a->read;
    *p = (struct plan){
        .path = a->path,
        .tasks = tasks,
        .transfer_bytes = transfer,
        .block_bytes = block,
        .segments = segments,
        .file_per_process = a->file_per_process || a->preset == PRESET_IOR_EASY,
        .reorder_tasks = a->reorder_tasks || preset_on,
        .random_offsets = a->random,
        .fsync = a->fsync || preset_on || a->size_given,
        .write = a->write || neither_phase,
        .read = a->read || neither_phase,
        .repetitions = a->repetitions,
        .queue_depth = a->queue_depth,
        .stripe_count = a->stripe_count,
        .stripe_size_bytes = a->stripe_size_bytes,
        .rand4k_ops = a->rand4k_ops,
        .keep = a->keep,
    };
    return plan_check(p, e);
}

/* The layout of created files, checked by the library (bench.rs's layout_spec). */
static bool make_layout(const struct plan *p, nacre_layout **out, struct usage_error *e)
{
    int rc = nacre_layout_new(out);
    if (rc < 0)
        fail("cannot make a layout: %s", call_error(rc));
    rc = nacre_layout_stripe_count_set(*out, p->stripe_count);
    if (rc < 0)
        return usage_fail(e, "-c/--stripe-count", "invalid layout: %s", nacre_last_error());
    rc = nacre_layout_stripe_size_set(*out, p->stripe_size_bytes);
    if (rc < 0)
        return usage_fail(e, "-S/--stripe-size", "invalid layout: %s", nacre_last_error());
    return true;
}

/* ---------------------------------------------------------------------------------------- */
/* Report (bench/report.rs)                                                                 */
/* ---------------------------------------------------------------------------------------- */

struct phase_result {
    enum access access;
    uint32_t iter;
    uint64_t bytes, ops;
    double open_s, rdwr_s, close_s, total_s, bw_mib_s, iops;
    struct latency_summary latency;
};

struct column {
    const char *name;
    int width;
};

static const struct column RESULT_COLUMNS[] = {
    { "access", 9 },    { "bw(MiB/s)", 11 }, { "IOPS", 11 },     { "Latency(s)", 11 },
    { "p50(s)", 11 },   { "p99(s)", 11 },    { "max(s)", 11 },   { "block(KiB)", 11 },
    { "xfer(KiB)", 10 }, { "open(s)", 9 },   { "wr/rd(s)", 9 },  { "close(s)", 9 },
    { "total(s)", 9 },  { "iter", 4 },
};
#define RESULT_COLUMN_COUNT (sizeof RESULT_COLUMNS / sizeof RESULT_COLUMNS[0])

static const struct column SUMMARY_COLUMNS[] = {
    { "Operation", 9 }, { "Max(MiB)", 10 }, { "Min(MiB)", 10 }, { "Mean(MiB)", 10 },
    { "StdDev", 10 },   { "Max(OPs)", 11 }, { "Min(OPs)", 11 }, { "Mean(OPs)", 11 },
    { "StdDev", 10 },   { "Mean(s)", 9 },   { "Lat(s)", 10 },   { "p99(s)", 10 },
    { "#Tasks", 6 },    { "QD", 4 },        { "reps", 4 },      { "fPP", 3 },
    { "reord", 5 },     { "segcnt", 8 },    { "blksiz", 10 },   { "xsize", 9 },
    { "aggs(MiB)", 10 }, { "API", 3 },
};
#define SUMMARY_COLUMN_COUNT (sizeof SUMMARY_COLUMNS / sizeof SUMMARY_COLUMNS[0])

#define CELL_BYTES 64

/* Prints cells padded to their columns (left-aligned, or right-aligned after the first),
 * without trailing blanks, and a newline. */
static void print_row(char cells[][CELL_BYTES], const struct column *columns, size_t count,
                      bool right)
{
    char line[1024];
    size_t used = 0;
    for (size_t i = 0; i < count && used < sizeof line; i++) {
        int n;
        if (right && i > 0)
            n = snprintf(line + used, sizeof line - used, " %*s", columns[i].width, cells[i]);
        else
            n = snprintf(line + used, sizeof line - used, i > 0 ? " %-*s" : "%-*s",
                         columns[i].width, cells[i]);
        used += n > 0 ? (size_t)n : 0;
    }
    if (used >= sizeof line)
        used = sizeof line - 1;
    while (used > 0 && line[used - 1] == ' ')
        used--;
    line[used] = '\0';
    puts(line);
}

static void print_heading(const struct column *columns, size_t count, bool right)
{
    char cells[SUMMARY_COLUMN_COUNT][CELL_BYTES];
    for (size_t i = 0; i < count; i++)
        snprintf(cells[i], CELL_BYTES, "%s", columns[i].name);
    print_row(cells, columns, count, right);
}

/* A size as IOR's option block shows it: whole units where exact, else bytes. */
static void size_text(uint64_t bytes, char *out, size_t len)
{
    static const struct {
        unsigned shift;
        const char *name;
    } units[] = { { 40, "TiB" }, { 30, "GiB" }, { 20, "MiB" }, { 10, "KiB" } };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        uint64_t unit = UINT64_C(1) << units[i].shift;
        if (bytes >= unit && bytes % unit == 0) {
            snprintf(out, len, "%" PRIu64 " %s", bytes / unit, units[i].name);
            return;
        }
    }
    snprintf(out, len, "%" PRIu64 " bytes", bytes);
}

static void option_line(const char *name, const char *value)
{
    printf("%-20s: %s\n", name, value);
}

static void print_header(const struct plan *p, const char *meta, const char *command)
{
    char text[256], size[64];
    option_line("nacre bench", "IOR-shaped test of the Nacre data path");
    option_line("Command line", command);
    option_line("Metadata service", meta);
    printf("\nOptions:\n");
    option_line("api", "nacre (tasks are " DRIVER ")");
    option_line("test filename", p->path);
    option_line("access", p->file_per_process ? "file-per-process" : "single-shared-file");
    option_line("ordering in a file", p->random_offsets ? "random" : "sequential");
    option_line("ordering inter file",
                p->reorder_tasks ? "constant task offset (1)" : "no tasks offsets");
    snprintf(text, sizeof text, "%" PRIu32, p->tasks);
    option_line("tasks", text);
    snprintf(text, sizeof text, "%" PRIu32 " per task", p->queue_depth);
    option_line("queue depth", text);
    snprintf(text, sizeof text, "%" PRIu32, p->repetitions);
    option_line("repetitions", text);
    size_text(p->transfer_bytes, text, sizeof text);
    option_line("xfersize", text);
    size_text(p->block_bytes, text, sizeof text);
    option_line("blocksize", text);
    snprintf(text, sizeof text, "%" PRIu64, p->segments);
    option_line("segments", text);
    size_text(aggregate_bytes(p), text, sizeof text);
    option_line("aggregate filesize", text);
    size_text(p->stripe_size_bytes, size, sizeof size);
    snprintf(text, sizeof text, "count %" PRId32 ", size %s", p->stripe_count, size);
    option_line("stripes", text);
    option_line("fsync", p->fsync ? "yes" : "no");
    option_line("verification", "every byte read");
    if (p->rand4k_ops > 0) {
        snprintf(text, sizeof text, "%" PRIu64, p->rand4k_ops);
        option_line("rand4k ops", text);
    }
    printf("\nResults:\n\n");
    print_heading(RESULT_COLUMNS, RESULT_COLUMN_COUNT, false);
    char rule[RESULT_COLUMN_COUNT][CELL_BYTES];
    for (size_t i = 0; i < RESULT_COLUMN_COUNT; i++) {
        size_t dashes = strlen(RESULT_COLUMNS[i].name);
        memset(rule[i], '-', dashes);
        rule[i][dashes] = '\0';
    }
    print_row(rule, RESULT_COLUMNS, RESULT_COLUMN_COUNT, false);
    fflush(stdout);
}

static void block_and_transfer(const struct plan *p, enum access a, uint64_t *block,
                               uint64_t *transfer)
{
    *block = a == ACCESS_RAND4K ? RAND4K_BYTES : p->block_bytes;
    *transfer = a == ACCESS_RAND4K ? RAND4K_BYTES : p->transfer_bytes;
}

static void print_result(const struct plan *p, const struct phase_result *r)
{
    uint64_t block, transfer;
    block_and_transfer(p, r->access, &block, &transfer);
    char c[RESULT_COLUMN_COUNT][CELL_BYTES];
    snprintf(c[0], CELL_BYTES, "%s", access_name(r->access));
    snprintf(c[1], CELL_BYTES, "%.2f", r->bw_mib_s);
    snprintf(c[2], CELL_BYTES, "%.2f", r->iops);
    snprintf(c[3], CELL_BYTES, "%.6f", r->latency.mean_s);
    snprintf(c[4], CELL_BYTES, "%.6f", r->latency.p50_s);
    snprintf(c[5], CELL_BYTES, "%.6f", r->latency.p99_s);
    snprintf(c[6], CELL_BYTES, "%.6f", r->latency.max_s);
    snprintf(c[7], CELL_BYTES, "%.2f", (double)block / KIB);
    snprintf(c[8], CELL_BYTES, "%.2f", (double)transfer / KIB);
    snprintf(c[9], CELL_BYTES, "%.4f", r->open_s);
    snprintf(c[10], CELL_BYTES, "%.4f", r->rdwr_s);
    snprintf(c[11], CELL_BYTES, "%.4f", r->close_s);
    snprintf(c[12], CELL_BYTES, "%.4f", r->total_s);
    snprintf(c[13], CELL_BYTES, "%" PRIu32, r->iter);
    print_row(c, RESULT_COLUMNS, RESULT_COLUMN_COUNT, false);
    fflush(stdout);
}

/* Max, min, mean and population standard deviation. */
struct spread {
    double max, min, mean, stddev;
};

/* Newton's square root, so that the program needs no libm. */
static double square_root(double x)
{
    if (!(x > 0.0))
        return 0.0;
    double r = x > 1.0 ? x : 1.0;
    for (int i = 0; i < 200; i++) {
        double next = 0.5 * (r + x / r);
        if (next >= r)
            break;
        r = next;
    }
    return r;
}

static struct spread spread_of(const double *values, size_t n)
{
    struct spread s = { 0 };
    if (n == 0)
        return s;
    double sum = 0.0, variance = 0.0;
    s.max = values[0];
    s.min = values[0];
    for (size_t i = 0; i < n; i++) {
        sum += values[i];
        s.max = values[i] > s.max ? values[i] : s.max;
        s.min = values[i] < s.min ? values[i] : s.min;
    }
    s.mean = sum / (double)n;
    for (size_t i = 0; i < n; i++)
        variance += (values[i] - s.mean) * (values[i] - s.mean);
    s.stddev = square_root(variance / (double)n);
    return s;
}

/* One access's figures over its repetitions. */
struct access_summary {
    enum access access;
    struct spread bw, iops, latency_mean, latency_p99;
    double total_s_mean;
};

/* The summaries of the accesses that ran, in write, read, rand4k order; returns how many.
 * `scratch` holds at least `count` values. */
static size_t summarise(const struct phase_result *results, size_t count, double *scratch,
                        struct access_summary *out)
{
    size_t made = 0;
    for (int a = 0; a < ACCESSES; a++) {
        size_t n = 0;
        struct access_summary s = { .access = (enum access)a };
        for (int figure = 0; figure < 5; figure++) {
            n = 0;
            for (size_t i = 0; i < count; i++) {
                const struct phase_result *r = &results[i];
                if (r->access != (enum access)a)
                    continue;
                scratch[n++] = figure == 0 ? r->bw_mib_s
                               : figure == 1 ? r->iops
                               : figure == 2 ? r->latency.mean_s
                               : figure == 3 ? r->latency.p99_s
                                             : r->total_s;
            }
            struct spread sp = spread_of(scratch, n);
            switch (figure) {
            case 0: s.bw = sp; break;
            case 1: s.iops = sp; break;
            case 2: s.latency_mean = sp; break;
            case 3: s.latency_p99 = sp; break;
            default: s.total_s_mean = sp.mean; break;
            }
        }
        if (n > 0)
            out[made++] = s;
    }
    return made;
}

static void print_summary(const struct plan *p, const struct access_summary *all, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (all[i].access == ACCESS_RAND4K)
            continue;
        printf("%s %.2f MiB/sec (%.2f MB/sec)\n",
               all[i].access == ACCESS_WRITE ? "Max Write:" : "Max Read: ", all[i].bw.max,
               all[i].bw.max * MIB / MB);
    }
    printf("\nSummary of all tests:\n");
    print_heading(SUMMARY_COLUMNS, SUMMARY_COLUMN_COUNT, true);
    for (size_t i = 0; i < count; i++) {
        const struct access_summary *s = &all[i];
        uint64_t block, transfer;
        block_and_transfer(p, s->access, &block, &transfer);
        char c[SUMMARY_COLUMN_COUNT][CELL_BYTES];
        snprintf(c[0], CELL_BYTES, "%s", access_name(s->access));
        snprintf(c[1], CELL_BYTES, "%.2f", s->bw.max);
        snprintf(c[2], CELL_BYTES, "%.2f", s->bw.min);
        snprintf(c[3], CELL_BYTES, "%.2f", s->bw.mean);
        snprintf(c[4], CELL_BYTES, "%.2f", s->bw.stddev);
        snprintf(c[5], CELL_BYTES, "%.2f", s->iops.max);
        snprintf(c[6], CELL_BYTES, "%.2f", s->iops.min);
        snprintf(c[7], CELL_BYTES, "%.2f", s->iops.mean);
        snprintf(c[8], CELL_BYTES, "%.2f", s->iops.stddev);
        snprintf(c[9], CELL_BYTES, "%.5f", s->total_s_mean);
        snprintf(c[10], CELL_BYTES, "%.6f", s->latency_mean.mean);
        snprintf(c[11], CELL_BYTES, "%.6f", s->latency_p99.mean);
        snprintf(c[12], CELL_BYTES, "%" PRIu32, p->tasks);
        snprintf(c[13], CELL_BYTES, "%" PRIu32, p->queue_depth);
        snprintf(c[14], CELL_BYTES, "%" PRIu32, p->repetitions);
        snprintf(c[15], CELL_BYTES, "%d", p->file_per_process ? 1 : 0);
        snprintf(c[16], CELL_BYTES, "%d", p->reorder_tasks ? 1 : 0);
        snprintf(c[17], CELL_BYTES, "%" PRIu64, p->segments);
        snprintf(c[18], CELL_BYTES, "%" PRIu64, block);
        snprintf(c[19], CELL_BYTES, "%" PRIu64, transfer);
        snprintf(c[20], CELL_BYTES, "%.2f", (double)aggregate_bytes(p) / MIB);
        snprintf(c[21], CELL_BYTES, "nacre");
        print_row(c, SUMMARY_COLUMNS, SUMMARY_COLUMN_COUNT, true);
    }
}

/* `text` as a JSON string. */
static void json_string(const char *text)
{
    putchar('"');
    for (const unsigned char *c = (const unsigned char *)text; *c; c++) {
        switch (*c) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (*c < 0x20)
                printf("\\u%04x", *c);
            else
                putchar(*c);
        }
    }
    putchar('"');
}

/* A number as JSON (nine decimals, trailing zeros cut; no infinities in JSON). */
static void json_number(double x)
{
    if (x != x || x - x != 0.0) {
        fputs("null", stdout);
        return;
    }
    char text[512];
    snprintf(text, sizeof text, "%.9f", x);
    size_t len = strlen(text);
    while (len > 0 && text[len - 1] == '0')
        len--;
    if (len > 0 && text[len - 1] == '.')
        len--;
    text[len] = '\0';
    fputs(text, stdout);
}

static void json_spread(const struct spread *s, bool with_stddev)
{
    fputs("{\"max\":", stdout);
    json_number(s->max);
    fputs(",\"min\":", stdout);
    json_number(s->min);
    fputs(",\"mean\":", stdout);
    json_number(s->mean);
    if (with_stddev) {
        fputs(",\"stddev\":", stdout);
        json_number(s->stddev);
    }
    putchar('}');
}

static void json_key_number(const char *key, double x)
{
    printf(",\"%s\":", key);
    json_number(x);
}

static void print_json(const struct plan *p, const char *command, const struct phase_result *results,
                       size_t count, const struct access_summary *all, size_t summaries)
{
    printf("{\"tool\":\"nacre bench\",\"format\":%d,\"driver\":\"" DRIVER "\",\"command\":",
           JSON_FORMAT);
    json_string(command);
    fputs(",\"params\":{\"path\":", stdout);
    json_string(p->path);
    printf(",\"tasks\":%" PRIu32 ",\"queue_depth\":%" PRIu32 ",\"transfer_bytes\":%" PRIu64
           ",\"block_bytes\":%" PRIu64 ",\"segments\":%" PRIu64
           ",\"file_per_process\":%s,\"reorder_tasks\":%s,\"random_offsets\":%s,\"fsync\":%s"
           ",\"repetitions\":%" PRIu32 ",\"stripe_count\":%" PRId32
           ",\"stripe_size_bytes\":%" PRIu64 ",\"aggregate_bytes\":%" PRIu64
           ",\"rand4k_ops\":%" PRIu64 "}",
           p->tasks, p->queue_depth, p->transfer_bytes, p->block_bytes, p->segments,
           p->file_per_process ? "true" : "false", p->reorder_tasks ? "true" : "false",
           p->random_offsets ? "true" : "false", p->fsync ? "true" : "false", p->repetitions,
           p->stripe_count, p->stripe_size_bytes, aggregate_bytes(p), p->rand4k_ops);
    fputs(",\"results\":[", stdout);
    for (size_t i = 0; i < count; i++) {
        const struct phase_result *r = &results[i];
        printf("%s{\"access\":\"%s\",\"iter\":%" PRIu32 ",\"bytes\":%" PRIu64 ",\"ops\":%" PRIu64,
               i > 0 ? "," : "", access_name(r->access), r->iter, r->bytes, r->ops);
        json_key_number("bw_mib_s", r->bw_mib_s);
        json_key_number("iops", r->iops);
        json_key_number("open_s", r->open_s);
        json_key_number("rdwr_s", r->rdwr_s);
        json_key_number("close_s", r->close_s);
        json_key_number("total_s", r->total_s);
        printf(",\"latency_s\":{\"count\":%" PRIu64, r->latency.count);
        json_key_number("mean", r->latency.mean_s);
        json_key_number("min", r->latency.min_s);
        json_key_number("p50", r->latency.p50_s);
        json_key_number("p99", r->latency.p99_s);
        json_key_number("max", r->latency.max_s);
        fputs("}}", stdout);
    }
    fputs("],\"summary\":{", stdout);
    for (size_t i = 0; i < summaries; i++) {
        const struct access_summary *s = &all[i];
        printf("%s\"%s\":{\"bw_mib_s\":", i > 0 ? "," : "", access_name(s->access));
        json_spread(&s->bw, true);
        fputs(",\"iops\":", stdout);
        json_spread(&s->iops, true);
        fputs(",\"latency_mean_s\":", stdout);
        json_spread(&s->latency_mean, false);
        fputs(",\"latency_p99_s\":", stdout);
        json_spread(&s->latency_p99, false);
        json_key_number("total_s_mean", s->total_s_mean);
        putchar('}');
    }
    putchar('}');
    /* The keys scripts written for the first `nacre bench` read. */
    printf(",\"size_bytes\":%" PRIu64 ",\"transfer_bytes\":%" PRIu64 ",\"threads\":%" PRIu32,
           aggregate_bytes(p), p->transfer_bytes, p->tasks);
    for (size_t i = 0; i < summaries; i++) {
        const struct access_summary *s = &all[i];
        if (s->access == ACCESS_WRITE)
            json_key_number("write_mib_s", s->bw.mean);
        else if (s->access == ACCESS_READ)
            json_key_number("read_mib_s", s->bw.mean);
        else
            json_key_number("rand4k_iops", s->iops.mean);
    }
    puts("}");
    fflush(stdout);
}

/* ---------------------------------------------------------------------------------------- */
/* Running                                                                                  */
/* ---------------------------------------------------------------------------------------- */

/* When this rank did what in one phase, in seconds since it left the phase's barrier. */
struct task_times {
    double open_start, open_end, io_start, io_end, close_start, close_end;
};

/* Everything a run needs, allocated before the first phase. */
struct bench {
    const struct plan *plan;
    nacre_client *client;
    nacre_layout *layout;
    nacre_queue *queue;           /* NULL at queue depth 1 */
    unsigned char **buffers;      /* queue_depth buffers of buffer_bytes */
    uint64_t *slot_offset;        /* the file offset of each buffer's transfer in flight */
    uint32_t *free_slots;         /* buffers not in flight */
    uint32_t *round_slots;        /* buffers prepared since the last submit */
    nacre_completion *completions;
    uint64_t *order;              /* a task's transfers in -z's order, else NULL */
    struct latencies latencies;   /* this rank's, in the phase running */
    struct latencies merged;      /* rank 0: every rank's, after the phase */
    struct phase_result *results; /* rank 0: every phase of every repetition */
    size_t result_count;
    double *scratch;              /* rank 0: for the summary */
};

/* One phase, as this rank runs it. */
struct phase {
    enum access access;
    uint32_t rep, pretend, file_index;
    uint64_t seed, count, len, rand_seed, rand_blocks;
    const uint64_t *order; /* NULL: sequential */
    char path[PATH_BYTES];
    nacre_file *file;
    uint64_t bytes, ops, bad, reported;
};

/* The file offset of the k-th transfer this rank makes in the phase. */
static uint64_t transfer_offset(const struct bench *b, const struct phase *ph, uint64_t k)
{
    if (ph->access == ACCESS_RAND4K)
        return (splitmix64(ph->rand_seed ^ k) % ph->rand_blocks) * RAND4K_BYTES;
    return plan_offset(b->plan, ph->pretend, ph->order ? ph->order[k] : k);
}

/* Checks what a read returned: a short read or a wrong byte is counted, and described. */
static void check_read(const struct bench *b, struct phase *ph, const unsigned char *buf,
                       int64_t got, uint64_t offset)
{
    if ((uint64_t)got != ph->len) {
        if (ph->reported++ < MAX_MISMATCH_MESSAGES)
            fprintf(stderr,
                    PROGRAM ": task %d: short read at offset %" PRIu64 " of %s: %" PRId64
                    " of %" PRIu64 " bytes\n",
                    rank, offset, ph->path, got, ph->len);
        ph->bad++;
        return;
    }
    struct mismatch m;
    if (pattern_verify(buf, (size_t)ph->len, offset, ph->seed, &m))
        return;
    if (ph->reported++ < MAX_MISMATCH_MESSAGES)
        fprintf(stderr,
                PROGRAM ": task %d: verification failed: %s at offset %" PRIu64
                " holds 0x%02x, expected 0x%02x (written by task %" PRIu32 ")\n",
                rank, ph->path, m.offset, m.found, m.expected,
                writer_of(b->plan, ph->file_index, m.offset));
    ph->bad++;
}

static void transfer_failed(const struct phase *ph, uint64_t offset, int64_t rc)
{
    if (rc >= 0)
        fail("%s of %" PRIu64 " bytes at offset %" PRIu64 " of %s moved %" PRId64 " bytes",
             ph->access == ACCESS_WRITE ? "write" : "read", ph->len, offset, ph->path, rc);
    fail("%s of %" PRIu64 " bytes at offset %" PRIu64 " of %s failed: %s",
         ph->access == ACCESS_WRITE ? "write" : "read", ph->len, offset, ph->path,
         call_error(rc));
}

/* Queue depth 1: one call per transfer. */
static void transfer_each(struct bench *b, struct phase *ph)
{
    unsigned char *buf = b->buffers[0];
    for (uint64_t k = 0; k < ph->count; k++) {
        uint64_t offset = transfer_offset(b, ph, k);
        int64_t rc;
        if (ph->access == ACCESS_WRITE) {
            pattern_fill(buf, (size_t)ph->len, offset, ph->seed);
            uint64_t started = now_ns();
            rc = nacre_pwrite(ph->file, buf, (size_t)ph->len, offset);
            latencies_record(&b->latencies, now_ns() - started);
            if (rc != (int64_t)ph->len)
                transfer_failed(ph, offset, rc);
        } else {
            uint64_t started = now_ns();
            rc = nacre_pread(ph->file, buf, (size_t)ph->len, offset);
            latencies_record(&b->latencies, now_ns() - started);
            if (rc < 0)
                transfer_failed(ph, offset, rc);
            check_read(b, ph, buf, rc, offset);
        }
        ph->bytes += ph->len;
        ph->ops++;
    }
}

/* Queue depth above 1: up to that many transfers in flight through the queue, each with
 * its own buffer; a transfer's latency runs from its submission to the wait that returns
 * its completion. */
static void transfer_queued(struct bench *b, struct phase *ph)
{
    const uint32_t depth = b->plan->queue_depth;
    uint32_t free_count = depth;
    for (uint32_t i = 0; i < depth; i++)
        b->free_slots[i] = i;
    uint64_t next = 0, in_flight = 0, submitted_at[MAX_QUEUE_DEPTH];
    while (next < ph->count || in_flight > 0) {
        uint32_t prepared = 0;
        while (free_count > 0 && next < ph->count) {
            uint32_t slot = b->free_slots[--free_count];
            uint64_t offset = transfer_offset(b, ph, next++);
            unsigned char *buf = b->buffers[slot];
            int rc;
            if (ph->access == ACCESS_WRITE) {
                pattern_fill(buf, (size_t)ph->len, offset, ph->seed);
                rc = nacre_prep_write(b->queue, ph->file, buf, (size_t)ph->len, offset, slot);
            } else {
                rc = nacre_prep_read(b->queue, ph->file, buf, (size_t)ph->len, offset, slot);
            }
            if (rc < 0)
                transfer_failed(ph, offset, rc);
            b->slot_offset[slot] = offset;
            b->round_slots[prepared++] = slot;
        }
        if (prepared > 0) {
            uint64_t now = now_ns();
            for (uint32_t i = 0; i < prepared; i++)
                submitted_at[b->round_slots[i]] = now;
            int rc = nacre_queue_submit(b->queue);
            if (rc < 0)
                fail("submitting %" PRIu32 " transfers to %s failed: %s", prepared, ph->path,
                     call_error(rc));
            in_flight += prepared;
        }
        int n = nacre_queue_wait(b->queue, b->completions, depth, 1, QUEUE_WAIT_TIMEOUT_MS);
        uint64_t done = now_ns();
        if (n < 0)
            fail("waiting for transfers of %s failed: %s", ph->path, call_error(n));
        if (n == 0)
            fail("none of %" PRIu64 " transfers in flight to %s completed within %d ms",
                 in_flight, ph->path, QUEUE_WAIT_TIMEOUT_MS);
        for (int i = 0; i < n; i++) {
            const nacre_completion *c = &b->completions[i];
            if (c->tag >= depth)
                fail("a completion of %s carries tag %" PRIu64 ", not a buffer", ph->path, c->tag);
            uint32_t slot = (uint32_t)c->tag;
            latencies_record(&b->latencies, done - submitted_at[slot]);
            if (ph->access == ACCESS_WRITE) {
                if (c->result != (int64_t)ph->len)
                    transfer_failed(ph, b->slot_offset[slot], c->result);
            } else {
                if (c->result < 0)
                    transfer_failed(ph, b->slot_offset[slot], c->result);
                check_read(b, ph, b->buffers[slot], c->result, b->slot_offset[slot]);
            }
            ph->bytes += ph->len;
            ph->ops++;
            b->free_slots[free_count++] = slot;
            in_flight--;
        }
    }
}

/* IOR's reduction of every rank's record (report.rs's PhaseResult::reduce), on rank 0;
 * returns the transfers that failed verification on all ranks, on every rank. */
static uint64_t reduce_phase(struct bench *b, const struct phase *ph, const struct task_times *t)
{
    double starts[3] = { t->open_start, t->io_start, t->close_start };
    double ends[3] = { t->open_end, t->io_end, t->close_end };
    double first[3] = { 0 }, last[3] = { 0 };
    uint64_t sums[4] = { ph->bytes, ph->ops, b->latencies.count, b->latencies.sum_ns };
    uint64_t totals[4] = { 0 };
    MPI_Reduce(starts, first, 3, MPI_DOUBLE, MPI_MIN, 0, MPI_COMM_WORLD);
    MPI_Reduce(ends, last, 3, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    MPI_Reduce(sums, totals, 4, MPI_UINT64_T, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Reduce(b->latencies.counts, b->merged.counts, LATENCY_BUCKETS, MPI_UINT64_T, MPI_SUM, 0,
               MPI_COMM_WORLD);
    MPI_Reduce(&b->latencies.min_ns, &b->merged.min_ns, 1, MPI_UINT64_T, MPI_MIN, 0,
               MPI_COMM_WORLD);
    MPI_Reduce(&b->latencies.max_ns, &b->merged.max_ns, 1, MPI_UINT64_T, MPI_MAX, 0,
               MPI_COMM_WORLD);
    uint64_t bad = 0;
    /* Also the end of the phase for every rank: no rank goes on (to remove a file another
     * still reads) before all are done. */
    MPI_Allreduce(&ph->bad, &bad, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    if (rank != 0)
        return bad;
    b->merged.count = totals[2];
    b->merged.sum_ns = totals[3];
    struct phase_result *r = &b->results[b->result_count++];
    double span[4];
    for (int i = 0; i < 3; i++)
        span[i] = last[i] - first[i] > 0.0 ? last[i] - first[i] : 0.0;
    span[3] = last[2] - first[0] > 0.0 ? last[2] - first[0] : 0.0;
    *r = (struct phase_result){
        .access = ph->access,
        .iter = ph->rep,
        .bytes = totals[0],
        .ops = totals[1],
        .open_s = span[0],
        .rdwr_s = span[1],
        .close_s = span[2],
        .total_s = span[3],
        .bw_mib_s = (double)totals[0] / MIB / (span[3] > MIN_SECONDS ? span[3] : MIN_SECONDS),
        .iops = (double)totals[1] / (span[1] > MIN_SECONDS ? span[1] : MIN_SECONDS),
        .latency = latencies_summary(&b->merged),
    };
    print_result(b->plan, r);
    return bad;
}

/* Runs one phase on this rank: barrier, open, transfer, (fsync,) close, reduce. Returns the
 * transfers that failed verification on all ranks. */
static uint64_t run_phase(struct bench *b, enum access access, uint32_t rep)
{
    const struct plan *p = b->plan;
    uint32_t task = (uint32_t)rank;
    struct phase *ph = &(struct phase){ .access = access, .rep = rep };
    ph->pretend = pretend_rank(p, task, access);
    ph->file_index = file_index_of(p, ph->pretend);
    file_path(p, ph->file_index, ph->path);
    ph->seed = file_seed(ph->file_index);
    if (access == ACCESS_RAND4K) {
        ph->len = RAND4K_BYTES;
        ph->count = p->rand4k_ops / p->tasks + (task < p->rand4k_ops % p->tasks ? 1 : 0);
        ph->rand_seed = splitmix64(ORDER_SEED ^ ((uint64_t)rep << 32) ^ (RAND4K_SEED_CODE << 24) ^
                                   (uint64_t)task);
        ph->rand_blocks = file_bytes(p) / RAND4K_BYTES;
    } else {
        ph->len = p->transfer_bytes;
        ph->count = transfers_per_task(p);
        if (p->random_offsets) {
            shuffle(b->order, ph->count, order_seed(ph->pretend, rep, access));
            ph->order = b->order;
        }
    }
    latencies_reset(&b->latencies);
    struct task_times t;

    MPI_Barrier(MPI_COMM_WORLD);
    double epoch = MPI_Wtime();
    t.open_start = MPI_Wtime() - epoch;
    int rc = access == ACCESS_WRITE
                 ? nacre_open(b->client, ph->path, O_WRONLY | O_CREAT, FILE_MODE, b->layout, &ph->file)
                 : nacre_open(b->client, ph->path, O_RDONLY, 0, NULL, &ph->file);
    if (rc < 0)
        fail("cannot open %s: %s", ph->path, call_error(rc));
    t.open_end = MPI_Wtime() - epoch;
    t.io_start = MPI_Wtime() - epoch;
    if (b->queue)
        transfer_queued(b, ph);
    else
        transfer_each(b, ph);
    t.io_end = MPI_Wtime() - epoch;
    t.close_start = MPI_Wtime() - epoch;
    if (access == ACCESS_WRITE && p->fsync) {
        rc = nacre_fsync(ph->file);
        if (rc < 0)
            fail("fsync of %s failed: %s", ph->path, call_error(rc));
    }
    rc = nacre_close(ph->file);
    if (rc < 0)
        fail("close of %s failed: %s", ph->path, call_error(rc));
    t.close_end = MPI_Wtime() - epoch;

    if (ph->bad > 0)
        fprintf(stderr,
                PROGRAM ": task %d: %" PRIu64 " of %" PRIu64
                " transfers of the %s phase (iteration %" PRIu32 ") of %s failed verification\n",
                rank, ph->bad, ph->ops, access_name(access), rep, ph->path);
    return reduce_phase(b, ph, &t);
}

/* Removes the run's files (each rank some of them), a missing one being no error. */
static void remove_files(const struct bench *b)
{
    char path[PATH_BYTES];
    for (uint32_t i = (uint32_t)rank; i < files(b->plan); i += (uint32_t)ranks) {
        file_path(b->plan, i, path);
        int rc = nacre_unlink(b->client, path);
        if (rc < 0 && rc != -ENOENT)
            fail("cannot remove %s: %s", path, call_error(rc));
    }
}

/* After a write phase every file holds exactly what was written: a lost or misplaced write
 * shows here before any read. Returns the files of the wrong size, on every rank. */
static uint64_t check_sizes(const struct bench *b)
{
    char path[PATH_BYTES];
    uint64_t wrong = 0, all_wrong = 0;
    for (uint32_t i = (uint32_t)rank; i < files(b->plan); i += (uint32_t)ranks) {
        file_path(b->plan, i, path);
        nacre_attr attr;
        int rc = nacre_stat(b->client, path, &attr);
        if (rc < 0)
            fail("cannot stat %s: %s", path, call_error(rc));
        if (attr.size != file_bytes(b->plan)) {
            fprintf(stderr,
                    PROGRAM ": task %d: after the write phase %s is %" PRIu64 " bytes; %" PRIu64
                    " were written\n",
                    rank, path, attr.size, file_bytes(b->plan));
            wrong++;
        }
    }
    MPI_Allreduce(&wrong, &all_wrong, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
    return all_wrong;
}

static void *allocate(size_t bytes, const char *what)
{
    void *p = calloc(1, bytes > 0 ? bytes : 1);
    if (!p)
        fail("cannot allocate %zu bytes for %s", bytes, what);
    return p;
}

/* Connects and allocates everything the phases use. */
static void bench_start(struct bench *b, const struct plan *p, const char *meta,
                        nacre_layout *layout)
{
    *b = (struct bench){ .plan = p, .layout = layout };
    /* A queue runs as many transfers at once as it has progress threads. */
    nacre_options options = { .progress_threads = p->queue_depth > 1 ? p->queue_depth : 0 };
    int rc = nacre_connect_ex(meta, &options, &b->client);
    if (rc < 0)
        fail("cannot connect to %s: %s", meta, call_error(rc));
    if (p->queue_depth > 1) {
        rc = nacre_queue_create(b->client, p->queue_depth, &b->queue);
        if (rc < 0)
            fail("cannot create a queue of depth %" PRIu32 ": %s", p->queue_depth, call_error(rc));
    }
    uint64_t buffer_bytes = p->transfer_bytes;
    if (p->rand4k_ops > 0 && buffer_bytes < RAND4K_BYTES)
        buffer_bytes = RAND4K_BYTES;
    b->buffers = allocate(p->queue_depth * sizeof *b->buffers, "buffer pointers");
    for (uint32_t i = 0; i < p->queue_depth; i++)
        b->buffers[i] = allocate((size_t)buffer_bytes, "a transfer buffer");
    b->slot_offset = allocate(p->queue_depth * sizeof *b->slot_offset, "offsets");
    b->free_slots = allocate(p->queue_depth * sizeof *b->free_slots, "free buffers");
    b->round_slots = allocate(p->queue_depth * sizeof *b->round_slots, "prepared buffers");
    b->completions = allocate(p->queue_depth * sizeof *b->completions, "completions");
    if (p->random_offsets)
        b->order = allocate((size_t)transfers_per_task(p) * sizeof *b->order, "the -z order");
    if (rank == 0) {
        size_t phases = (size_t)p->repetitions * ACCESSES;
        b->results = allocate(phases * sizeof *b->results, "results");
        b->scratch = allocate(phases * sizeof *b->scratch, "the summary");
    }
}

static void bench_stop(struct bench *b)
{
    if (b->queue)
        nacre_queue_destroy(b->queue);
    for (uint32_t i = 0; i < b->plan->queue_depth; i++)
        free(b->buffers[i]);
    free(b->buffers);
    free(b->slot_offset);
    free(b->free_slots);
    free(b->round_slots);
    free(b->completions);
    free(b->order);
    free(b->results);
    free(b->scratch);
    nacre_disconnect(b->client);
}

/* The whole run (bench.rs's `bench`); returns the exit status. */
static int run(struct bench *b, const char *meta, const char *command, bool json)
{
    const struct plan *p = b->plan;
    if (rank == 0)
        print_header(p, meta, command);
    for (uint32_t rep = 0; rep < p->repetitions; rep++) {
        enum access phases[ACCESSES];
        int count = 0;
        if (p->write) {
            remove_files(b);
            phases[count++] = ACCESS_WRITE;
        }
        if (p->read)
            phases[count++] = ACCESS_READ;
        if (p->rand4k_ops > 0)
            phases[count++] = ACCESS_RAND4K;
        for (int i = 0; i < count; i++) {
            uint64_t bad = run_phase(b, phases[i], rep);
            if (bad > 0) {
                if (rank == 0)
                    fprintf(stderr,
                            PROGRAM ": verification failed: %" PRIu64 " transfers of the %s phase "
                            "(iteration %" PRIu32 ") did not read back what was written (the "
                            "tasks' messages above say where); the files are kept\n",
                            bad, access_name(phases[i]), rep);
                return 1;
            }
            if (phases[i] == ACCESS_WRITE && check_sizes(b) > 0) {
                if (rank == 0)
                    fprintf(stderr, PROGRAM ": the write phase (iteration %" PRIu32 ") left "
                                    "files of the wrong size (the tasks' messages above say "
                                    "which); the files are kept\n",
                            rep);
                return 1;
            }
        }
        if (p->write && !p->keep)
            remove_files(b);
    }
    if (rank == 0) {
        struct access_summary all[ACCESSES];
        size_t summaries = summarise(b->results, b->result_count, b->scratch, all);
        putchar('\n');
        print_summary(p, all, summaries);
        if (json)
            print_json(p, command, b->results, b->result_count, all, summaries);
        fflush(stdout);
    }
    return 0;
}

/* The command line as the report shows it: the program's name and its arguments. */
static char *command_line(int argc, char **argv)
{
    size_t len = 1;
    for (int i = 0; i < argc; i++)
        len += strlen(argv[i]) + 1;
    char *out = allocate(len, "the command line");
    const char *name = strrchr(argv[0], '/');
    strcat(out, name ? name + 1 : argv[0]);
    for (int i = 1; i < argc; i++) {
        strcat(out, " ");
        strcat(out, argv[i]);
    }
    return out;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    /* Before getopt_long reorders argv. */
    char *command = command_line(argc, argv);

    /* Every rank parses the same arguments to the same plan; only rank 0 speaks. */
    struct args args;
    struct plan plan;
    struct usage_error error = { 0 };
    nacre_layout *layout = NULL;
    enum parsed parsed = parse_args(argc, argv, &args, &error);
    if (parsed == PARSED_HELP) {
        if (rank == 0)
            print_usage();
        free(command);
        MPI_Finalize();
        return 0;
    }
    if (parsed == PARSED_BAD || !make_plan(&args, &plan, &error) ||
        !make_layout(&plan, &layout, &error)) {
        if (rank == 0)
            fprintf(stderr,
                    "error: %s: %s\n\nUsage: mpirun -np N " PROGRAM " [OPTIONS]\n\n"
                    "For more information, try '--help'.\n",
                    error.flag, error.message);
        if (layout)
            nacre_layout_free(layout);
        free(command);
        MPI_Finalize();
        return 2;
    }

    struct bench bench;
    bench_start(&bench, &plan, args.meta, layout);
    int status = run(&bench, args.meta, command, args.json);
    bench_stop(&bench);
    nacre_layout_free(layout);
    free(command);
    MPI_Finalize();
    return status;
}
