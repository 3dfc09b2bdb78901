/*
 * libnacre past its defaults, one check for each bug outside testing found (issue 20):
 *   - one read of many pieces on one target (64 KiB stripes, one stripe: an 8 MiB read is
 *     128 pieces, 4 MiB + 64 KiB is 65), which lost completions and timed out;
 *   - queues of depth 128, 1024 and 4096 full of operations on one target;
 *   - a loop that only polls (with the client's timeout at an hour, so that an operation
 *     completed only by its timeout fails the check's own deadline);
 *   - several processes reading one object at once;
 * and what the header promises: the rest of a buffer zeroed after a short read, every failed
 * completion of a wait described by nacre_last_error, and a component boundary that must be
 * a multiple of the stripe sizes of the components it separates. Run under valgrind by
 * scripts/c-test.sh (the forked readers are checked too).
 *
 *   sweep HOST:PORT
 */
#include "test_api.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KIB (1u << 10)
#define MIB (1u << 20)
#define WAIT_MS 60000
/* How long the poll-only loop may take before its operations count as lost. */
#define POLL_DEADLINE_S 120
#define READERS 4
#define SHARED_PATH "/sweep-shared"
#define SHARED_BYTES (8u * MIB)

/* A file of one 64 KiB stripe: every piece of every request lands on one target. */
static nacre_file *one_stripe(nacre_client *client, const char *path)
{
    nacre_layout *l;
    nacre_file *f = NULL;
    OK(nacre_layout_new(&l));
    OK(nacre_layout_stripe_count_set(l, 1));
    OK(nacre_layout_stripe_size_set(l, 64 * KIB));
    OK(nacre_create(client, path, 0644, l, &f));
    OK(nacre_layout_free(l));
    return f;
}

/* Reads of 128 and 65 pieces on one target, and the zeros after a short read. */
static void many_pieces(nacre_client *client)
{
    nacre_file *f = one_stripe(client, "/sweep-pieces");
    size_t written = 5 * MIB + 123;
    unsigned char *out = malloc(written), *in = malloc(8 * MIB);
    fill_pattern(out, written, 11, 0);
    CHECK(nacre_pwrite(f, out, written, 0) == (int64_t)written);
    memset(in, 0xaa, 8 * MIB);
    CHECK(nacre_pread(f, in, 8 * MIB, 0) == (int64_t)written);
    CHECK(memcmp(in, out, written) == 0);
    int zeros = 1;
    for (size_t i = written; i < 8 * MIB; i++)
        zeros &= in[i] == 0;
    CHECK(zeros); /* the header's promise: the rest of the buffer is zeroed */
    memset(in, 0xaa, 8 * MIB);
    CHECK(nacre_pread(f, in, 4 * MIB + 64 * KIB, 64 * KIB) == (int64_t)(4 * MIB + 64 * KIB));
    CHECK(memcmp(in, out + 64 * KIB, 4 * MIB + 64 * KIB) == 0);
    OK(nacre_close(f));
    OK(nacre_unlink(client, "/sweep-pieces"));
    free(out);
    free(in);
}

/* Takes `n` completions from `q`, polling only when `poll_only`; checks each result is
 * `expect` and each tag is seen once. Returns how many came. */
static unsigned reap(nacre_queue *q, unsigned n, int64_t expect, int poll_only, unsigned char *seen)
{
    nacre_completion done[256];
    unsigned got = 0;
    time_t start = time(NULL);
    while (got < n && time(NULL) - start < POLL_DEADLINE_S) {
        int k = poll_only ? nacre_queue_poll(q, done, 256) : nacre_queue_wait(q, done, 256, 1, WAIT_MS);
        CHECK(k >= 0);
        if (k < 0)
            break;
        for (int i = 0; i < k; i++) {
            CHECK(done[i].tag < n && !seen[done[i].tag]);
            if (done[i].tag < n)
                seen[done[i].tag] = 1;
            CHECK(done[i].result == expect);
        }
        got += (unsigned)k;
    }
    CHECK(got == n);
    return got;
}

/* A full queue of 4 KiB writes, then of reads, on one target, at `depth`. */
static void deep_queue(nacre_client *client, unsigned depth, int poll_only)
{
    nacre_file *f = one_stripe(client, "/sweep-queue");
    nacre_queue *q;
    OK(nacre_queue_create(client, depth, &q));
    size_t bytes = (size_t)depth * 4096;
    unsigned char *out = malloc(bytes), *in = calloc(1, bytes), *seen = calloc(1, depth);
    fill_pattern(out, bytes, depth, 0);
    for (unsigned i = 0; i < depth; i++)
        OK(nacre_prep_write(q, f, out + (size_t)i * 4096, 4096, (uint64_t)i * 4096, i));
    CHECK(nacre_queue_submit(q) == (int)depth);
    /* A queue whose completions did not all come cannot take the reads. */
    if (reap(q, depth, 4096, poll_only, seen) == depth) {
        memset(seen, 0, depth);
        for (unsigned i = 0; i < depth; i++)
            OK(nacre_prep_read(q, f, in + (size_t)i * 4096, 4096, (uint64_t)i * 4096, i));
        CHECK(nacre_queue_submit(q) == (int)depth);
        reap(q, depth, 4096, poll_only, seen);
        CHECK(memcmp(in, out, bytes) == 0);
    }
    OK(nacre_queue_destroy(q));
    OK(nacre_close(f));
    OK(nacre_unlink(client, "/sweep-queue"));
    free(out);
    free(in);
    free(seen);
}

/* Every failed completion of one wait is described, each naming its tag. */
static void every_failure_described(nacre_client *client)
{
    nacre_file *f = one_stripe(client, "/sweep-failures");
    unsigned char buf[3][100];
    CHECK(nacre_pwrite(f, "x", 1, 0) == 1);
    OK(nacre_close(f));
    nacre_file *wo;
    OK(nacre_open(client, "/sweep-failures", O_WRONLY, 0, NULL, &wo));
    nacre_queue *q;
    OK(nacre_queue_create(client, 3, &q));
    for (unsigned i = 0; i < 3; i++)
        OK(nacre_prep_read(q, wo, buf[i], sizeof buf[i], 0, 11 + i));
    CHECK(nacre_queue_submit(q) == 3);
    nacre_completion done[3];
    int k = 0;
    char message[1024] = "";
    while (k < 3) {
        int n = nacre_queue_wait(q, done + k, 3 - (uint32_t)k, 3 - (uint32_t)k, WAIT_MS);
        CHECK(n > 0);
        if (n <= 0)
            break;
        /* this wait's failures, all of them */
        size_t at = strlen(message);
        snprintf(message + at, sizeof message - at, "%s|", nacre_last_error());
        k += n;
    }
    for (int i = 0; i < k; i++)
        CHECK(done[i].result == -EBADF);
    CHECK(strstr(message, "tagged 11") != NULL);
    CHECK(strstr(message, "tagged 12") != NULL);
    CHECK(strstr(message, "tagged 13") != NULL);
    OK(nacre_queue_destroy(q));
    OK(nacre_close(wo));
    OK(nacre_unlink(client, "/sweep-failures"));
}

/* A boundary that is a multiple of 64 KiB but not of a component's stripe size is refused
 * when the layout is used, naming why. */
static void boundaries_follow_stripe_sizes(nacre_client *client)
{
    nacre_layout *l;
    OK(nacre_layout_new(&l));
    OK(nacre_layout_stripe_size_set(l, 4 * MIB));
    OK(nacre_layout_comp_extent_set(l, 0, 1 * MIB)); /* 64 KiB-aligned: taken here */
    OK(nacre_layout_comp_add(l));
    nacre_file *f = NULL;
    FAILS(nacre_create(client, "/sweep-boundary", 0644, l, &f), EINVAL);
    CHECK(strstr(nacre_last_error(), "not a multiple of the stripe size") != NULL);
    OK(nacre_layout_comp_use(l, 0));
    OK(nacre_layout_comp_extent_set(l, 0, 4 * MIB));
    OK(nacre_layout_comp_use(l, 1));
    OK(nacre_layout_comp_extent_set(l, 4 * MIB, NACRE_EXTENT_EOF));
    OK(nacre_create(client, "/sweep-boundary", 0644, l, &f));
    OK(nacre_close(f));
    OK(nacre_unlink(client, "/sweep-boundary"));
    OK(nacre_layout_free(l));
}

/* A forked reader: waits for the parent's word on `go`, then reads the shared file in 4 MiB
 * reads with its own client. Exits 0 when every byte was right. */
static int reader(int go, const char *address, unsigned rank)
{
    char word;
    if (read(go, &word, 1) != 1)
        return 3;
    nacre_client *client;
    if (nacre_connect(address, &client) < 0)
        return 4;
    nacre_file *f;
    if (nacre_open(client, SHARED_PATH, O_RDONLY, 0, NULL, &f) < 0)
        return 5;
    unsigned char *in = malloc(4 * MIB);
    int bad = 0;
    for (unsigned round = 0; round < 4; round++) {
        uint64_t at = (uint64_t)((rank + round) % 2) * 4 * MIB;
        if (nacre_pread(f, in, 4 * MIB, at) != (int64_t)(4 * MIB) || !is_pattern(in, 4 * MIB, 21, at))
            bad = 1;
    }
    free(in);
    nacre_close(f);
    nacre_disconnect(client);
    return bad ? 6 : 0;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]);
        return 2;
    }
    /* The readers fork first, while this process has no threads of libnacre's. */
    int go[2];
    CHECK(pipe(go) == 0);
    pid_t readers[READERS];
    for (unsigned r = 0; r < READERS; r++) {
        readers[r] = fork();
        if (readers[r] == 0) {
            close(go[1]);
            int code = reader(go[0], argv[1], r);
            close(go[0]);
            exit(code);
        }
    }
    close(go[0]);

    nacre_client *client;
    OK(nacre_connect(argv[1], &client));
    many_pieces(client);
    for (unsigned depth = 128; depth <= 4096; depth *= 8)
        deep_queue(client, depth, 0);
    every_failure_described(client);
    boundaries_follow_stripe_sizes(client);

    /* Poll only, with an hour's timeout: progress must come from the polls. */
    nacre_options options = {.timeout_ms = 3600000};
    nacre_client *patient;
    OK(nacre_connect_ex(argv[1], &options, &patient));
    deep_queue(patient, 256, 1);
    OK(nacre_disconnect(patient));

    /* Several processes reading one object at once: 4 x 64 pieces on one store. */
    nacre_file *shared = one_stripe(client, SHARED_PATH);
    unsigned char *out = malloc(SHARED_BYTES);
    fill_pattern(out, SHARED_BYTES, 21, 0);
    CHECK(nacre_pwrite(shared, out, SHARED_BYTES, 0) == (int64_t)SHARED_BYTES);
    free(out);
    OK(nacre_close(shared));
    for (unsigned r = 0; r < READERS; r++)
        CHECK(write(go[1], "g", 1) == 1);
    close(go[1]);
    for (unsigned r = 0; r < READERS; r++) {
        int status = 0;
        CHECK(waitpid(readers[r], &status, 0) == readers[r]);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            fprintf(stderr, "reader %u: status %#x\n", r, status);
    }
    OK(nacre_unlink(client, SHARED_PATH));
    OK(nacre_disconnect(client));
    if (failures)
        fprintf(stderr, "sweep: %d check(s) failed\n", failures);
    else
        printf("sweep: every check passed\n");
    return failures ? 1 : 0;
}
