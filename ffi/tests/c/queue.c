/*
 * libnacre's asynchronous queue against a running cluster, at a depth of 128: a full
 * queue of writes, then of reads, every completion's tag and result checked; a queue that
 * is full; failed operations completing with their errno; bad arguments; and a queue
 * destroyed with operations in flight. Run under valgrind by scripts/c-test.sh.
 *
 *   queue HOST:PORT
 */
#include "test_api.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>

#define DEPTH 128
#define CHUNK (64u << 10)
#define WAIT_MS 60000

/* Waits for `n` completions, marking each tag in `seen` and checking its result. */
static void collect(nacre_queue *q, unsigned n, int64_t expect, unsigned char *seen)
{
    nacre_completion done[DEPTH];
    unsigned got = 0;
    while (got < n) {
        /* in two halves of the array, so that max < ready is exercised */
        int k = nacre_queue_wait(q, done, DEPTH / 2, 1, WAIT_MS);
        CHECK(k > 0);
        if (k <= 0)
            return;
        for (int i = 0; i < k; i++) {
            CHECK(done[i].tag < DEPTH && !seen[done[i].tag]);
            if (done[i].tag < DEPTH)
                seen[done[i].tag] = 1;
            CHECK(done[i].result == expect);
        }
        got += (unsigned)k;
    }
}

struct waiter {
    nacre_queue *queue;
    int got;
};

/* Waits on the queue from another thread, so that the queue is in use while it is destroyed. */
static void *wait_on(void *arg)
{
    struct waiter *w = arg;
    nacre_completion done[DEPTH];
    w->got = nacre_queue_wait(w->queue, done, DEPTH, 1, WAIT_MS);
    return NULL;
}

/* Destroying a queue another thread is waiting on still waits for every submitted read: when
 * destroy returns, every byte has landed and the buffer may be freed. */
static void destroy_while_another_thread_waits(nacre_client *client, nacre_file *f, const unsigned char *expect)
{
    const unsigned reads = 8;
    nacre_queue *q;
    OK(nacre_queue_create(client, reads, &q));
    unsigned char *in = calloc(reads, CHUNK * 8);
    for (unsigned i = 0; i < reads; i++)
        OK(nacre_prep_read(q, f, in + (size_t)i * CHUNK * 8, CHUNK * 8, (uint64_t)i * CHUNK * 8, i));
    struct waiter w = {.queue = q};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, wait_on, &w) == 0);
    CHECK(nacre_queue_submit(q) == (int)reads);
    OK(nacre_queue_destroy(q));
    CHECK(memcmp(in, expect, (size_t)reads * CHUNK * 8) == 0);
    free(in);
    pthread_join(t, NULL);
    CHECK(w.got >= 0 || w.got == -EBADF);
    FAILS(nacre_prep_read(q, f, NULL, 1, 0, 0), EBADF);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]);
        return 2;
    }
    nacre_client *client;
    OK(nacre_connect(argv[1], &client));

    nacre_queue *q;
    FAILS(nacre_queue_create(NULL, DEPTH, &q), EBADF);
    FAILS(nacre_queue_create(client, 0, &q), EINVAL);
    FAILS(nacre_queue_create(client, 100000, &q), EINVAL);
    FAILS(nacre_queue_create(client, DEPTH, NULL), EINVAL);
    OK(nacre_queue_create(client, DEPTH, &q));

    nacre_layout *l;
    OK(nacre_layout_new(&l));
    OK(nacre_layout_stripe_count_set(l, NACRE_STRIPE_COUNT_ALL));
    nacre_file *f;
    OK(nacre_create(client, "/queue-test", 0644, l, &f));
    OK(nacre_layout_free(l));

    unsigned char *out = malloc((size_t)DEPTH * CHUNK), *in = malloc((size_t)DEPTH * CHUNK);
    fill_pattern(out, (size_t)DEPTH * CHUNK, 3, 0);

    /* a full queue of writes, each tagged with its chunk */
    for (unsigned i = 0; i < DEPTH; i++)
        OK(nacre_prep_write(q, f, out + (size_t)i * CHUNK, CHUNK, (uint64_t)i * CHUNK, i));
    FAILS(nacre_prep_write(q, f, out, CHUNK, 0, DEPTH), EAGAIN);
    CHECK(nacre_queue_submit(q) == DEPTH);
    FAILS(nacre_prep_read(q, f, in, CHUNK, 0, 0), EAGAIN); /* still full until waited for */
    unsigned char seen[DEPTH] = {0};
    collect(q, DEPTH, CHUNK, seen);
    for (unsigned i = 0; i < DEPTH; i++)
        CHECK(seen[i]);
    CHECK(nacre_queue_submit(q) == 0);

    /* a sync, then a full queue of reads in reverse order */
    OK(nacre_prep_fsync(q, f, 0));
    CHECK(nacre_queue_submit(q) == 1);
    memset(seen, 0, sizeof seen);
    collect(q, 1, 0, seen);
    memset(seen, 0, sizeof seen);
    for (unsigned i = 0; i < DEPTH; i++) {
        unsigned chunk = DEPTH - 1 - i;
        OK(nacre_prep_read(q, f, in + (size_t)chunk * CHUNK, CHUNK, (uint64_t)chunk * CHUNK, chunk));
    }
    CHECK(nacre_queue_submit(q) == DEPTH);
    collect(q, DEPTH, CHUNK, seen);
    CHECK(is_pattern(in, (size_t)DEPTH * CHUNK, 3, 0));

    /* a read past the end completes short, one at the end reads nothing */
    OK(nacre_prep_read(q, f, in, CHUNK, (uint64_t)DEPTH * CHUNK - 100, 7));
    OK(nacre_prep_read(q, f, in + CHUNK, CHUNK, (uint64_t)DEPTH * CHUNK, 8));
    CHECK(nacre_queue_submit(q) == 2);
    nacre_completion done[4];
    int k = 0;
    while (k < 2) {
        int n = nacre_queue_wait(q, done + k, 2 - k, 1, WAIT_MS);
        CHECK(n > 0);
        if (n <= 0)
            break;
        k += n;
    }
    for (int i = 0; i < k; i++)
        CHECK((done[i].tag == 7 && done[i].result == 100) || (done[i].tag == 8 && done[i].result == 0));

    /* a failed operation completes with its errno: reading a write-only file */
    nacre_file *wo;
    OK(nacre_open(client, "/queue-test", O_WRONLY, 0, NULL, &wo));
    OK(nacre_prep_read(q, wo, in, CHUNK, 0, 42));
    CHECK(nacre_queue_submit(q) == 1);
    CHECK(nacre_queue_wait(q, done, 4, 1, WAIT_MS) == 1);
    CHECK(done[0].tag == 42 && done[0].result == -EBADF);
    CHECK(strstr(nacre_last_error(), "not open for reading") != NULL);
    OK(nacre_close(wo));

    /* nothing in flight: poll and a short wait return nothing */
    CHECK(nacre_queue_poll(q, done, 4) == 0);
    CHECK(nacre_queue_wait(q, done, 4, 1, 10) == 0);

    /* bad arguments */
    FAILS(nacre_queue_wait(q, NULL, 4, 1, 10), EINVAL);
    FAILS(nacre_queue_wait(q, done, 0, 0, 10), EINVAL);
    FAILS(nacre_queue_wait(q, done, 2, 3, 10), EINVAL);
    FAILS(nacre_queue_wait(q, done, 4, 1, -1), EINVAL);
    FAILS(nacre_queue_wait(q, done, 4, 1, NACRE_WAIT_MAX_MS + 1), EINVAL);
    FAILS(nacre_prep_read(q, f, NULL, CHUNK, 0, 0), EINVAL);
    FAILS(nacre_prep_read(q, f, in, 0, 0, 0), EINVAL);
    FAILS(nacre_prep_write(q, f, out, SIZE_MAX, 0, 0), EINVAL);
    FAILS(nacre_prep_write(q, NULL, out, CHUNK, 0, 0), EBADF);
    FAILS(nacre_prep_fsync(NULL, f, 0), EBADF);
    FAILS(nacre_queue_submit(NULL), EBADF);
    FAILS(nacre_queue_poll((nacre_queue *)f, done, 4), EBADF);

    destroy_while_another_thread_waits(client, f, out);

    /* destroyed with operations in flight: it waits for them, so the buffers may go after */
    for (unsigned i = 0; i < DEPTH / 2; i++)
        OK(nacre_prep_write(q, f, out + (size_t)i * CHUNK, CHUNK, (uint64_t)i * CHUNK, i));
    CHECK(nacre_queue_submit(q) == DEPTH / 2);
    OK(nacre_prep_read(q, f, in, CHUNK, 0, 0)); /* prepared, never submitted: dropped */
    OK(nacre_queue_destroy(q));
    FAILS(nacre_queue_destroy(q), EBADF);
    FAILS(nacre_queue_submit(q), EBADF);

    free(out);
    free(in);
    OK(nacre_close(f));
    OK(nacre_unlink(client, "/queue-test"));
    OK(nacre_disconnect(client));
    if (failures)
        fprintf(stderr, "queue: %d check(s) failed\n", failures);
    else
        printf("queue: every check passed\n");
    return failures ? 1 : 0;
}
