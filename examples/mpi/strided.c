/*
 * MPI ranks writing through libnacre, in the two shapes HPC codes use:
 *
 *   N-to-1 strided: one shared file; rank r writes block (s * ranks + r) of every segment s.
 *   file per process: each rank writes its own file.
 *
 * After each write phase every rank reads back what its neighbour (rank + 1) wrote, verifies
 * every byte, and rank 0 reports the bandwidth of each phase (the bytes of all ranks over
 * the slowest rank's time, as IOR does).
 *
 *   mpicc strided.c -o strided $(pkg-config --cflags --libs nacre)
 *   mpirun -np 4 ./strided HOST:PORT [block-bytes [segments [transfer-bytes]]]
 */
#include <nacre.h>

#include <mpi.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_BLOCK (4u << 20)
#define DEFAULT_SEGMENTS 4
#define DEFAULT_TRANSFER (1u << 20)
#define DIRECTORY "/mpi-example"

static int rank, ranks;

/* Stops every rank when a call fails, saying which rank and why. */
static void check(int64_t rc, const char *what)
{
    if (rc < 0) {
        fprintf(stderr, "rank %d: %s: %s (%s)\n", rank, what, nacre_strerror((int)rc),
                nacre_last_error());
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
}

/* The byte at `offset` of what rank `writer` writes: differs per rank and per offset. */
static unsigned char byte_at(int writer, uint64_t offset)
{
    return (unsigned char)(offset * 29 + (offset >> 16) + (uint64_t)writer * 101 + 1);
}

static void fill(unsigned char *buf, size_t len, int writer, uint64_t offset)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = byte_at(writer, offset + i);
}

static size_t mismatches(const unsigned char *buf, size_t len, int writer, uint64_t offset)
{
    size_t bad = 0;
    for (size_t i = 0; i < len; i++)
        bad += buf[i] != byte_at(writer, offset + i);
    return bad;
}

struct shape {
    uint64_t block, transfer;
    unsigned segments;
    int shared; /* one shared file (N-to-1 strided) or one file per process */
};

/* Where transfer `t` of segment `s` written by rank `r` goes in its file. */
static uint64_t offset_of(const struct shape *sh, int r, unsigned s, uint64_t t)
{
    if (sh->shared)
        return ((uint64_t)s * ranks + r) * sh->block + t;
    return (uint64_t)s * sh->block + t;
}

/* Writes (or reads back and verifies) rank `r`'s part of `file`; returns mismatched bytes. */
static size_t pass(nacre_file *file, const struct shape *sh, int r, int writing, unsigned char *buf)
{
    size_t bad = 0;
    for (unsigned s = 0; s < sh->segments; s++)
        for (uint64_t t = 0; t < sh->block; t += sh->transfer) {
            uint64_t off = offset_of(sh, r, s, t);
            if (writing) {
                fill(buf, sh->transfer, r, off);
                check(nacre_pwrite(file, buf, sh->transfer, off), "pwrite");
            } else {
                int64_t got = nacre_pread(file, buf, sh->transfer, off);
                check(got, "pread");
                bad += (size_t)(sh->transfer - (uint64_t)got);
                bad += mismatches(buf, (size_t)got, r, off);
            }
        }
    return bad;
}

/* The slowest rank's time for `phase`, reported by rank 0 as bandwidth. */
static void report(const char *phase, double seconds, uint64_t bytes_per_rank)
{
    double slowest;
    MPI_Reduce(&seconds, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        double mib = (double)bytes_per_rank * ranks / (1 << 20);
        printf("%-26s %10.1f MiB/s  (%.0f MiB in %.3f s)\n", phase, mib / slowest, mib, slowest);
    }
}

/* One shape: write, sync, read back the neighbour's part; returns mismatched bytes here. */
static size_t run(nacre_client *client, const struct shape *sh, unsigned char *buf)
{
    char path[128], neighbour_path[128];
    int neighbour = (rank + 1) % ranks;
    if (sh->shared) {
        snprintf(path, sizeof path, DIRECTORY "/shared");
        snprintf(neighbour_path, sizeof neighbour_path, DIRECTORY "/shared");
    } else {
        snprintf(path, sizeof path, DIRECTORY "/file.%d", rank);
        snprintf(neighbour_path, sizeof neighbour_path, DIRECTORY "/file.%d", neighbour);
    }
    nacre_file *file;
    if (!sh->shared || rank == 0) {
        nacre_layout *layout;
        check(nacre_layout_new(&layout), "layout");
        check(nacre_layout_stripe_count_set(layout, NACRE_STRIPE_COUNT_ALL), "stripe count");
        check(nacre_create(client, path, 0644, layout, &file), "create");
        nacre_layout_free(layout);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    if (sh->shared && rank != 0)
        check(nacre_open(client, path, O_RDWR, 0, NULL, &file), "open");

    uint64_t bytes = sh->block * sh->segments;
    double start = MPI_Wtime();
    pass(file, sh, rank, 1, buf);
    check(nacre_fsync(file), "fsync");
    report(sh->shared ? "write, N-to-1 strided" : "write, file per process", MPI_Wtime() - start,
           bytes);
    MPI_Barrier(MPI_COMM_WORLD);

    nacre_file *reading = file;
    if (!sh->shared)
        check(nacre_open(client, neighbour_path, O_RDONLY, 0, NULL, &reading), "open neighbour's");
    start = MPI_Wtime();
    size_t bad = pass(reading, sh, neighbour, 0, buf);
    report(sh->shared ? "read, N-to-1 strided" : "read, file per process", MPI_Wtime() - start,
           bytes);
    if (reading != file)
        nacre_close(reading);
    nacre_close(file);
    MPI_Barrier(MPI_COMM_WORLD);
    if (!sh->shared || rank == 0)
        check(nacre_unlink(client, path), "unlink");
    return bad;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks);
    if (argc < 2) {
        if (rank == 0)
            fprintf(stderr, "usage: %s HOST:PORT [block-bytes [segments [transfer-bytes]]]\n", argv[0]);
        MPI_Finalize();
        return 2;
    }
    struct shape sh = {
        .block = argc > 2 ? strtoull(argv[2], NULL, 0) : DEFAULT_BLOCK,
        .segments = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 0) : DEFAULT_SEGMENTS,
        .transfer = argc > 4 ? strtoull(argv[4], NULL, 0) : DEFAULT_TRANSFER,
    };
    if (sh.transfer == 0 || sh.block == 0 || sh.block % sh.transfer != 0 || sh.segments == 0) {
        if (rank == 0)
            fprintf(stderr, "block, segments and transfer must be positive, block a multiple of transfer\n");
        MPI_Finalize();
        return 2;
    }

    nacre_client *client;
    check(nacre_connect(argv[1], &client), "connect");
    if (rank == 0) {
        int rc = nacre_mkdir(client, DIRECTORY, 0755);
        if (rc != -EEXIST)
            check(rc, "mkdir");
        printf("%d ranks, %u segments of %llu-byte blocks in %llu-byte transfers per rank\n", ranks,
               sh.segments, (unsigned long long)sh.block, (unsigned long long)sh.transfer);
    }
    unsigned char *buf = malloc(sh.transfer);
    if (!buf)
        check(-ENOMEM, "malloc");

    unsigned long long bad = 0, all_bad = 0;
    sh.shared = 1;
    bad += run(client, &sh, buf);
    sh.shared = 0;
    bad += run(client, &sh, buf);

    MPI_Allreduce(&bad, &all_bad, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) {
        nacre_rmdir(client, DIRECTORY);
        if (all_bad)
            printf("FAILED: %llu bytes read back differ from what was written\n", all_bad);
        else
            printf("verified: every byte read back is what its writer wrote\n");
    }
    free(buf);
    nacre_disconnect(client);
    MPI_Finalize();
    return all_bad ? 1 : 0;
}
