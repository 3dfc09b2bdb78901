/*
 * libnacre's blocking calls against a running cluster: every call with good input, and the
 * bad inputs the header promises to answer with an error (NULL, closed and made-up handles,
 * zero and absurd lengths, bad flags and layouts, overlong paths). Run under valgrind by
 * scripts/c-test.sh, so an invalid access or a leak fails it too.
 *
 *   api HOST:PORT
 */
#include "test_api.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/stat.h>

#define MIB (1u << 20)
#define THREADS 8
#define THREAD_CHUNK (64u << 10)
#define THREAD_ROUNDS 8

static const char *meta;

static void errors_and_strings(void)
{
    CHECK(strstr(nacre_strerror(-ENOENT), "No such file") != NULL);
    CHECK(strstr(nacre_strerror(ENOENT), "No such file") != NULL);
    CHECK(strcmp(nacre_strerror(INT_MIN), "Unknown error") == 0);
    CHECK(nacre_last_error() != NULL);

    /* The message's storage is the thread's for its life: the pointer stays valid. */
    FAILS(nacre_close(NULL), EBADF);
    const char *first = nacre_last_error();
    CHECK(strstr(first, "nacre_close") != NULL);
    FAILS(nacre_closedir(NULL), EBADF);
    CHECK(nacre_last_error() == first && strstr(first, "nacre_closedir") != NULL);
}

static pthread_key_t key;

/* A failing call from a pthread key destructor, when the thread's own state is being torn
 * down: it must return an error, not abort the process. */
static void destructor(void *value)
{
    int *rc = value;
    *rc = nacre_close(NULL);
    (void)nacre_last_error();
}

static void *thread_with_key(void *rc)
{
    pthread_setspecific(key, rc);
    return NULL;
}

static void calls_during_thread_teardown(void)
{
    int rc = 0;
    pthread_t t;
    CHECK(pthread_key_create(&key, destructor) == 0);
    CHECK(pthread_create(&t, NULL, thread_with_key, &rc) == 0);
    pthread_join(t, NULL);
    CHECK(rc == -EBADF);
    pthread_key_delete(key);
}

static void connecting(nacre_client **client)
{
    nacre_client *c = NULL;
    FAILS(nacre_connect(NULL, &c), EINVAL);
    FAILS(nacre_connect(meta, NULL), EINVAL);
    FAILS(nacre_connect("bogus://127.0.0.1:1", &c), EINVAL);
    CHECK(strstr(nacre_last_error(), "nacre_connect") != NULL);
    nacre_options reserved = {.reserved = {1}};
    FAILS(nacre_connect_ex(meta, &reserved, &c), EINVAL);
    CHECK(strstr(nacre_last_error(), "nacre_connect_ex") != NULL);
    nacre_options quick = {.timeout_ms = 2000};
    int rc = nacre_connect_ex("tcp://127.0.0.1:1", &quick, &c);
    CHECK(rc == -ECONNREFUSED || rc == -ETIMEDOUT);

    OK(nacre_connect_ex(meta, NULL, &c));
    OK(nacre_disconnect(c));
    FAILS(nacre_disconnect(c), EBADF);
    FAILS(nacre_mkdir(c, "/closed", 0755), EBADF);

    nacre_options options = {.timeout_ms = 30000, .connections_per_target = 8, .progress_threads = 4};
    OK(nacre_connect_ex(meta, &options, client));
}

static void bad_handles(nacre_client *client)
{
    nacre_attr attr;
    FAILS(nacre_mkdir(NULL, "/x", 0755), EBADF);
    FAILS(nacre_stat((nacre_client *)(uintptr_t)0x1234, "/", &attr), EBADF);
    FAILS(nacre_pread(NULL, &attr, sizeof attr, 0), EBADF);
    FAILS(nacre_close((nacre_file *)client), EBADF); /* a client is not a file */
    FAILS(nacre_layout_free((nacre_layout *)client), EBADF);
    FAILS(nacre_closedir(NULL), EBADF);
    FAILS(nacre_queue_destroy(NULL), EBADF);
    FAILS(nacre_mem_unregister(NULL), EBADF);
    /* the client survived all of that */
    OK(nacre_stat(client, "/", &attr));
}

static void namespace(nacre_client *client)
{
    nacre_attr attr;
    OK(nacre_mkdir(client, "/capi", 0755));
    FAILS(nacre_mkdir(client, "/capi", 0755), EEXIST);
    FAILS(nacre_mkdir(client, "/no/such/parent", 0755), ENOENT);
    OK(nacre_stat(client, "/capi", &attr));
    CHECK(S_ISDIR(attr.mode));
    CHECK((attr.mode & 0777) == 0755);
    CHECK(attr.size == 0);
    FAILS(nacre_stat(client, "/capi/missing", &attr), ENOENT);
    FAILS(nacre_stat(client, NULL, &attr), EINVAL);
    FAILS(nacre_stat(client, "/capi", NULL), EINVAL);
    /* Not imported from a data repository: no HSM flags. */
    uint32_t hsm = 99;
    OK(nacre_hsm_state(client, "/capi", &hsm));
    CHECK(hsm == 0);
    FAILS(nacre_hsm_state(client, "/capi/missing", &hsm), ENOENT);
    FAILS(nacre_hsm_state(client, "/capi", NULL), EINVAL);
    CHECK(NACRE_HS_RELEASED == 0x4 && NACRE_HS_ARCHIVED == 0x8 && NACRE_HS_EXISTS == 0x1);

    char *long_path = malloc(NACRE_PATH_MAX + 100);
    memset(long_path, 'a', NACRE_PATH_MAX + 99);
    long_path[0] = '/';
    long_path[NACRE_PATH_MAX + 99] = '\0';
    FAILS(nacre_mkdir(client, long_path, 0755), ENAMETOOLONG);
    free(long_path);

    nacre_file *f;
    OK(nacre_create(client, "/capi/a", 0640, NULL, &f));
    OK(nacre_close(f));
    FAILS(nacre_close(f), EBADF);
    OK(nacre_mkdir(client, "/capi/sub", 0700));
    OK(nacre_rename(client, "/capi/a", "/capi/b"));
    FAILS(nacre_stat(client, "/capi/a", &attr), ENOENT);
    OK(nacre_stat(client, "/capi/b", &attr));
    CHECK(S_ISREG(attr.mode) && (attr.mode & 0777) == 0640 && attr.nlink == 1);
    FAILS(nacre_rename(client, "/capi/b", NULL), EINVAL);
    OK(nacre_chmod(client, "/capi/b", 0604));
    OK(nacre_stat(client, "/capi/b", &attr));
    CHECK((attr.mode & 07777) == 0604);
    FAILS(nacre_chmod(client, "/capi/missing", 0604), ENOENT);
    uint32_t uid = attr.uid;
    OK(nacre_chown(client, "/capi/b", UINT32_MAX, 4242));
    OK(nacre_stat(client, "/capi/b", &attr));
    CHECK(attr.uid == uid && attr.gid == 4242);

    /* Symbolic links: stat follows, lstat does not, readlink never cuts. */
    char target[NACRE_PATH_MAX + 1];
    OK(nacre_symlink(client, "b", "/capi/ln"));
    FAILS(nacre_symlink(client, "b", "/capi/ln"), EEXIST);
    FAILS(nacre_symlink(client, "", "/capi/empty"), ENOENT);
    OK(nacre_lstat(client, "/capi/ln", &attr));
    CHECK(S_ISLNK(attr.mode) && attr.size == 1);
    OK(nacre_stat(client, "/capi/ln", &attr));
    CHECK(S_ISREG(attr.mode) && attr.gid == 4242);
    CHECK(nacre_readlink(client, "/capi/ln", target, sizeof target) == 1);
    CHECK(strcmp(target, "b") == 0);
    FAILS(nacre_readlink(client, "/capi/ln", target, 1), ERANGE);
    FAILS(nacre_readlink(client, "/capi/b", target, sizeof target), EINVAL);
    OK(nacre_link(client, "/capi/b", "/capi/hard"));
    OK(nacre_stat(client, "/capi/b", &attr));
    CHECK(attr.nlink == 2);
    FAILS(nacre_link(client, "/capi/sub", "/capi/sub2"), EPERM);
    FAILS(nacre_link(client, "/capi/b", "/capi/hard"), EEXIST);
    OK(nacre_unlink(client, "/capi/hard"));
    OK(nacre_stat(client, "/capi/b", &attr));
    CHECK(attr.nlink == 1);
    OK(nacre_utimens(client, "/capi/b", 1700000000000000001, NACRE_UTIME_OMIT, 0));
    OK(nacre_stat(client, "/capi/b", &attr));
    CHECK(attr.atime_ns == 1700000000000000001 && attr.mtime_ns != 1700000000000000001);
    OK(nacre_utimens(client, "/capi/ln", NACRE_UTIME_OMIT, 1700000000000000002,
                     NACRE_UTIME_NOFOLLOW));
    OK(nacre_lstat(client, "/capi/ln", &attr));
    CHECK(attr.mtime_ns == 1700000000000000002);
    OK(nacre_stat(client, "/capi/b", &attr));
    CHECK(attr.mtime_ns != 1700000000000000002);
    FAILS(nacre_utimens(client, "/capi/b", NACRE_UTIME_NOW, NACRE_UTIME_NOW, 2), EINVAL);
    OK(nacre_symlink(client, "/capi/loop", "/capi/loop"));
    FAILS(nacre_stat(client, "/capi/loop", &attr), ELOOP);
    OK(nacre_unlink(client, "/capi/loop"));

    nacre_dir *dir;
    nacre_dirent entry;
    OK(nacre_opendir(client, "/capi", &dir));
    int seen = 0, n;
    while ((n = nacre_readdir(dir, &entry)) == 1) {
        if (strcmp(entry.name, "b") == 0) {
            CHECK(entry.file_type == NACRE_DT_REG);
            seen |= 1;
        } else if (strcmp(entry.name, "sub") == 0) {
            CHECK(entry.file_type == NACRE_DT_DIR);
            seen |= 2;
        } else if (strcmp(entry.name, "ln") == 0) {
            CHECK(entry.file_type == NACRE_DT_LNK);
            seen |= 4;
        } else {
            CHECK(!"an entry nobody made");
        }
    }
    CHECK(n == 0);
    CHECK(seen == 7);
    FAILS(nacre_readdir(dir, NULL), EINVAL);
    OK(nacre_closedir(dir));
    FAILS(nacre_readdir(dir, &entry), EBADF);
    FAILS(nacre_opendir(client, "/capi/b", &dir), ENOTDIR);

    FAILS(nacre_rmdir(client, "/capi"), ENOTEMPTY);
    FAILS(nacre_unlink(client, "/capi/sub"), EISDIR);
    OK(nacre_unlink(client, "/capi/ln"));
    OK(nacre_unlink(client, "/capi/b"));
    FAILS(nacre_unlink(client, "/capi/b"), ENOENT);
    OK(nacre_rmdir(client, "/capi/sub"));
}

static void layouts(nacre_client *client)
{
    nacre_layout *l;
    uint64_t u;
    int64_t i;
    char text[1024];

    FAILS(nacre_layout_new(NULL), EINVAL);
    OK(nacre_layout_new(&l));
    OK(nacre_layout_stripe_size_get(l, &u));
    CHECK(u == MIB);
    OK(nacre_layout_stripe_count_get(l, &i));
    CHECK(i == 1);
    OK(nacre_layout_stripe_index_get(l, &i));
    CHECK(i == NACRE_STRIPE_INDEX_ANY);
    CHECK(nacre_layout_pool_get(l, text, sizeof text) == 0 && text[0] == '\0');

    FAILS(nacre_layout_stripe_size_set(l, 1000), EINVAL);
    FAILS(nacre_layout_stripe_size_set(l, 0), EINVAL);
    FAILS(nacre_layout_stripe_count_set(l, 5000), EINVAL);
    FAILS(nacre_layout_stripe_count_set(l, 0), EINVAL);
    FAILS(nacre_layout_stripe_count_set(l, INT64_MAX), EINVAL);
    FAILS(nacre_layout_stripe_index_set(l, -7), EINVAL);
    FAILS(nacre_layout_pool_set(l, "bad name!"), EINVAL);
    FAILS(nacre_layout_pool_set(l, "a-pool-name-that-is-too-long"), ENAMETOOLONG);
    OK(nacre_layout_stripe_size_get(l, &u));
    CHECK(u == MIB); /* refused changes left it alone */

    OK(nacre_layout_stripe_size_set(l, 2 * MIB));
    OK(nacre_layout_stripe_count_set(l, 2));
    OK(nacre_layout_stripe_index_set(l, 0));
    OK(nacre_layout_pool_set(l, "fast"));
    CHECK(nacre_layout_pool_get(l, text, sizeof text) == 4 && strcmp(text, "fast") == 0);
    FAILS(nacre_layout_pool_get(l, text, 4), ERANGE);
    OK(nacre_layout_pool_set(l, NULL));
    CHECK(nacre_layout_pool_get(l, text, sizeof text) == 0);
    int on = 0;
    OK(nacre_layout_overstriping_set(l, 1));
    OK(nacre_layout_overstriping_get(l, &on));
    CHECK(on == 1);
    OK(nacre_layout_overstriping_set(l, 0));
    OK(nacre_layout_overstriping_get(l, &on));
    CHECK(on == 0);
    FAILS(nacre_layout_target_get(l, 0, (uint32_t *)&u), ENODATA);

    /* A composite layout: [0, 4 MiB) on one stripe, the rest over every target */
    CHECK(nacre_layout_comp_count(l) == 1);
    FAILS(nacre_layout_comp_add(l), EINVAL); /* the only component ends at EOF */
    FAILS(nacre_layout_comp_extent_set(l, 8, 8), EINVAL);
    OK(nacre_layout_comp_extent_set(l, 0, 4 * MIB));
    OK(nacre_layout_stripe_count_set(l, 1));
    OK(nacre_layout_comp_add(l));
    CHECK(nacre_layout_comp_count(l) == 2);
    uint64_t start, end;
    OK(nacre_layout_comp_extent_get(l, &start, &end));
    CHECK(start == 4 * MIB && end == NACRE_EXTENT_EOF);
    OK(nacre_layout_stripe_count_set(l, NACRE_STRIPE_COUNT_ALL));
    FAILS(nacre_layout_comp_use(l, 2), EINVAL);
    OK(nacre_layout_comp_use(l, 0));
    OK(nacre_layout_stripe_count_get(l, &i));
    CHECK(i == 1);

    int len = nacre_layout_to_string(l, NULL, 0);
    CHECK(len > 0);
    CHECK(nacre_layout_to_string(l, text, sizeof text) == len);
    CHECK(strstr(text, "lcme_extent.e_end: EOF") != NULL);
    char small[8];
    CHECK(nacre_layout_to_string(l, small, sizeof small) == len && strlen(small) == sizeof small - 1);
    FAILS(nacre_layout_to_string(l, NULL, 10), EINVAL);

    /* setstripe on a directory: its files inherit the composite layout */
    OK(nacre_mkdir(client, "/capi/composite", 0755));
    OK(nacre_setstripe(client, "/capi/composite", l, 0));
    nacre_layout *got;
    OK(nacre_getstripe(client, "/capi/composite", &got));
    CHECK(nacre_layout_comp_count(got) == 2);
    FAILS(nacre_layout_target_get(got, 0, (uint32_t *)&u), ENODATA);
    OK(nacre_layout_free(got));
    FAILS(nacre_getstripe(client, "/capi", &got), ENODATA);

    nacre_file *f;
    OK(nacre_create(client, "/capi/composite/f", 0644, NULL, &f));
    OK(nacre_getstripe(client, "/capi/composite/f", &got));
    CHECK(nacre_layout_comp_count(got) == 2);
    OK(nacre_layout_comp_use(got, 1));
    OK(nacre_layout_stripe_count_get(got, &i));
    CHECK(i >= 1); /* resolved: the real number of targets */
    uint32_t target;
    OK(nacre_layout_target_get(got, 0, &target));
    FAILS(nacre_layout_target_get(got, (uint32_t)i, &target), EINVAL);
    OK(nacre_layout_free(got));
    OK(nacre_close(f));

    /* setstripe on a new path makes an empty file; on an existing file it is refused */
    OK(nacre_setstripe(client, "/capi/preset", l, 0600));
    FAILS(nacre_setstripe(client, "/capi/preset", l, 0600), EEXIST);
    OK(nacre_layout_free(l));
    FAILS(nacre_layout_free(l), EBADF);
    FAILS(nacre_layout_stripe_count_get(l, &i), EBADF);
}

static void file_io(nacre_client *client)
{
    const size_t len = 6 * MIB + 12345; /* unaligned, over several stripes */
    unsigned char *out = malloc(len), *in = malloc(len);
    fill_pattern(out, len, 1, 0);

    nacre_layout *l;
    OK(nacre_layout_new(&l));
    OK(nacre_layout_stripe_count_set(l, NACRE_STRIPE_COUNT_ALL));
    nacre_file *f;
    FAILS(nacre_open(client, "/capi/io", O_RDWR, 0644, l, &f), ENOENT);
    FAILS(nacre_open(client, "/capi/io", O_RDWR | O_CREAT | O_APPEND, 0644, l, &f), EINVAL);
    FAILS(nacre_open(client, "/capi/io", O_RDWR | O_CREAT, 0644, l, NULL), EINVAL);
    OK(nacre_open(client, "/capi/io", O_RDWR | O_CREAT | O_EXCL, 0644, l, &f));
    OK(nacre_layout_free(l));
    nacre_file *again;
    FAILS(nacre_open(client, "/capi/io", O_RDWR | O_CREAT | O_EXCL, 0644, NULL, &again), EEXIST);

    CHECK(nacre_pwrite(f, out, len, 0) == (int64_t)len);
    CHECK(nacre_pread(f, in, len, 0) == (int64_t)len);
    CHECK(is_pattern(in, len, 1, 0));

    /* bad buffers and lengths */
    FAILS(nacre_pread(f, NULL, 10, 0), EINVAL);
    FAILS(nacre_pread(f, in, 0, 0), EINVAL);
    FAILS(nacre_pwrite(f, out, SIZE_MAX, 0), EINVAL);
    FAILS(nacre_pwrite(f, out, (size_t)NACRE_IO_MAX + 1, 0), EINVAL);

    /* short reads at the end, nothing past it, holes read as zeros */
    CHECK(nacre_pread(f, in, 100, len - 10) == 10);
    CHECK(nacre_pread(f, in, 100, len + 5) == 0);
    const uint64_t far = 20 * MIB;
    CHECK(nacre_pwrite(f, out, 4096, far) == 4096);
    memset(in, 0xff, MIB);
    CHECK(nacre_pread(f, in, MIB, far - MIB) == MIB);
    int zeros = 1;
    for (size_t i = 0; i < MIB; i++)
        zeros &= in[i] == 0;
    CHECK(zeros);

    nacre_attr attr;
    OK(nacre_fstat(f, &attr));
    CHECK(attr.size == far + 4096);
    FAILS(nacre_fstat(f, NULL), EINVAL);
    OK(nacre_ftruncate(f, 1000));
    OK(nacre_stat(client, "/capi/io", &attr));
    CHECK(attr.size == 1000);
    OK(nacre_ftruncate(f, 3 * MIB));
    CHECK(nacre_pread(f, in, MIB, 2 * MIB) == MIB && in[0] == 0 && in[MIB - 1] == 0);
    OK(nacre_fsync(f));

    /* vectors: three buffers written at one offset, read back into three others */
    unsigned char a[5000], b[70000], c[3];
    struct iovec wv[3] = {{out, sizeof a}, {out + sizeof a, sizeof b}, {out + sizeof a + sizeof b, sizeof c}};
    CHECK(nacre_pwritev(f, wv, 3, MIB) == (int64_t)(sizeof a + sizeof b + sizeof c));
    struct iovec rv[4] = {{a, sizeof a}, {NULL, 0}, {b, sizeof b}, {c, sizeof c}};
    CHECK(nacre_preadv(f, rv, 4, MIB) == (int64_t)(sizeof a + sizeof b + sizeof c));
    CHECK(is_pattern(a, sizeof a, 1, 0) && is_pattern(b, sizeof b, 1, sizeof a) &&
          is_pattern(c, sizeof c, 1, sizeof a + sizeof b));
    FAILS(nacre_preadv(f, rv, 0, 0), EINVAL);
    FAILS(nacre_preadv(f, rv, NACRE_IOV_MAX + 1, 0), EINVAL);
    FAILS(nacre_preadv(f, NULL, 1, 0), EINVAL);
    struct iovec holes[2] = {{NULL, 0}, {NULL, 0}};
    FAILS(nacre_pwritev(f, holes, 2, 0), EINVAL);
    struct iovec null_base = {NULL, 10};
    FAILS(nacre_pwritev(f, &null_base, 1, 0), EINVAL);

    /* access modes */
    nacre_file *ro;
    OK(nacre_open(client, "/capi/io", O_RDONLY, 0, NULL, &ro));
    FAILS(nacre_pwrite(ro, out, 10, 0), EBADF);
    FAILS(nacre_ftruncate(ro, 0), EBADF);
    CHECK(nacre_pread(ro, in, 10, MIB) == 10 && is_pattern(in, 10, 1, 0));
    OK(nacre_close(ro));
    FAILS(nacre_open(client, "/capi/io", O_RDONLY | O_TRUNC, 0, NULL, &ro), EINVAL);
    FAILS(nacre_open(client, "/capi", O_RDONLY, 0, NULL, &ro), EISDIR);

    nacre_layout *got;
    OK(nacre_file_layout(f, &got));
    int64_t count;
    OK(nacre_layout_stripe_count_get(got, &count));
    CHECK(count >= 1);
    OK(nacre_layout_free(got));
    FAILS(nacre_file_layout(f, NULL), EINVAL);

    OK(nacre_close(f));
    FAILS(nacre_pread(f, in, 10, 0), EBADF);
    FAILS(nacre_fsync(f), EBADF);
    OK(nacre_unlink(client, "/capi/io"));
    free(out);
    free(in);
}

static void registered_memory(nacre_client *client)
{
    const size_t len = 2 * MIB;
    unsigned char *buf = malloc(len);
    nacre_mem *mem;
    FAILS(nacre_mem_register(client, NULL, len, &mem), EINVAL);
    FAILS(nacre_mem_register(client, buf, 0, &mem), EINVAL);
    FAILS(nacre_mem_register(client, buf, len, NULL), EINVAL);
    FAILS(nacre_mem_register(client, (void *)(uintptr_t)-16, len, &mem), EINVAL); /* wraps */
    OK(nacre_mem_register(client, buf, len, &mem));

    nacre_file *f;
    OK(nacre_create(client, "/capi/registered", 0644, NULL, &f));
    fill_pattern(buf, len, 5, 0);
    CHECK(nacre_pwrite(f, buf, len, 0) == (int64_t)len);
    memset(buf, 0, len);
    CHECK(nacre_pread(f, buf, len, 0) == (int64_t)len);
    CHECK(is_pattern(buf, len, 5, 0));
    OK(nacre_close(f));

    OK(nacre_mem_unregister(mem));
    FAILS(nacre_mem_unregister(mem), EBADF);
    free(buf);
    OK(nacre_unlink(client, "/capi/registered"));
}

struct writer {
    nacre_file *file;
    unsigned index;
    int failed;
};

/* Each thread writes chunk `round * THREADS + index` of every round through one shared
 * file handle. */
static void *write_strided(void *arg)
{
    struct writer *w = arg;
    unsigned char *chunk = malloc(THREAD_CHUNK);
    for (unsigned round = 0; round < THREAD_ROUNDS; round++) {
        uint64_t offset = ((uint64_t)round * THREADS + w->index) * THREAD_CHUNK;
        fill_pattern(chunk, THREAD_CHUNK, 9, offset);
        if (nacre_pwrite(w->file, chunk, THREAD_CHUNK, offset) != THREAD_CHUNK)
            w->failed = 1;
    }
    free(chunk);
    return NULL;
}

static void threads_share_a_file(nacre_client *client)
{
    nacre_layout *l;
    OK(nacre_layout_new(&l));
    OK(nacre_layout_stripe_count_set(l, NACRE_STRIPE_COUNT_ALL));
    OK(nacre_layout_stripe_size_set(l, THREAD_CHUNK));
    nacre_file *f;
    OK(nacre_create(client, "/capi/shared", 0644, l, &f));
    OK(nacre_layout_free(l));

    pthread_t threads[THREADS];
    struct writer writers[THREADS];
    for (unsigned t = 0; t < THREADS; t++) {
        writers[t] = (struct writer){.file = f, .index = t};
        CHECK(pthread_create(&threads[t], NULL, write_strided, &writers[t]) == 0);
    }
    for (unsigned t = 0; t < THREADS; t++) {
        pthread_join(threads[t], NULL);
        CHECK(!writers[t].failed);
    }
    const size_t total = (size_t)THREADS * THREAD_ROUNDS * THREAD_CHUNK;
    unsigned char *all = malloc(total);
    CHECK(nacre_pread(f, all, total, 0) == (int64_t)total);
    CHECK(is_pattern(all, total, 9, 0));
    free(all);
    OK(nacre_close(f));
    OK(nacre_unlink(client, "/capi/shared"));
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]);
        return 2;
    }
    meta = argv[1];
    nacre_client *client = NULL;
    errors_and_strings();
    calls_during_thread_teardown();
    connecting(&client);
    if (!client)
        return 1;
    bad_handles(client);
    namespace(client);
    layouts(client);
    file_io(client);
    registered_memory(client);
    threads_share_a_file(client);

    /* setstripe -d: the directory's files take the file system's default again */
    nacre_layout *none;
    OK(nacre_setstripe_delete(client, "/capi/composite"));
    FAILS(nacre_getstripe(client, "/capi/composite", &none), ENODATA);
    FAILS(nacre_setstripe_delete(client, "/capi/preset"), ENOTDIR);
    nacre_file *plain;
    OK(nacre_create(client, "/capi/composite/plain", 0644, NULL, &plain));
    OK(nacre_file_layout(plain, &none));
    CHECK(nacre_layout_comp_count(none) == 1);
    OK(nacre_layout_free(none));
    OK(nacre_close(plain));
    OK(nacre_unlink(client, "/capi/composite/plain"));
    OK(nacre_unlink(client, "/capi/composite/f"));
    OK(nacre_rmdir(client, "/capi/composite"));
    OK(nacre_unlink(client, "/capi/preset"));
    OK(nacre_rmdir(client, "/capi"));
    OK(nacre_disconnect(client));
    if (failures)
        fprintf(stderr, "api: %d check(s) failed\n", failures);
    else
        printf("api: every check passed\n");
    return failures ? 1 : 0;
}
