/*
 * A first libnacre program: connect, create a file striped over every target, write it,
 * read it back, and print its layout.
 *
 *   cc striped.c -o striped $(pkg-config --cflags --libs nacre)
 *   ./striped HOST:PORT [/path]        (the metadata service's address, as nacre serve says)
 */
#include <nacre.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FILE_BYTES (8u << 20)   /* 8 MiB: several stripes on every target */
#define STRIPE_BYTES (1u << 20) /* 1 MiB stripes */

/* Prints what failed and exits: the errno's text and this thread's message. */
static void check(int64_t rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "%s: %s (%s)\n", what, nacre_strerror((int)rc), nacre_last_error());
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s HOST:PORT [/path]\n", argv[0]);
        return 2;
    }
    const char *path = argc > 2 ? argv[2] : "/striped-example";

    nacre_client *client;
    check(nacre_connect(argv[1], &client), "connect");

    /* 1 MiB stripes over every target, as `nacre setstripe -c -1 -S 1M` */
    nacre_layout *layout;
    check(nacre_layout_new(&layout), "layout");
    check(nacre_layout_stripe_count_set(layout, NACRE_STRIPE_COUNT_ALL), "stripe count");
    check(nacre_layout_stripe_size_set(layout, STRIPE_BYTES), "stripe size");

    nacre_file *file;
    check(nacre_create(client, path, 0644, layout, &file), "create");
    nacre_layout_free(layout);

    unsigned char *out = malloc(FILE_BYTES), *in = malloc(FILE_BYTES);
    if (!out || !in) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < FILE_BYTES; i++)
        out[i] = (unsigned char)(i * 7 + i / 4096);

    check(nacre_pwrite(file, out, FILE_BYTES, 0), "write");
    check(nacre_fsync(file), "fsync");
    int64_t got = nacre_pread(file, in, FILE_BYTES, 0);
    check(got, "read");
    if (got != FILE_BYTES || memcmp(in, out, FILE_BYTES) != 0) {
        fprintf(stderr, "read back %lld bytes that differ from what was written\n", (long long)got);
        return 1;
    }
    printf("wrote and read back %u bytes of %s\n", FILE_BYTES, path);

    /* The file's layout, as `nacre getstripe` prints it */
    nacre_layout *actual;
    check(nacre_file_layout(file, &actual), "file layout");
    char text[4096];
    check(nacre_layout_to_string(actual, text, sizeof text), "layout text");
    printf("%s", text);
    nacre_layout_free(actual);

    free(out);
    free(in);
    nacre_close(file);
    nacre_disconnect(client);
    return 0;
}
