/*
 * A small harness for libnacre's C tests: CHECK records a failure with its line and goes on,
 * so that one run reports every broken call; main returns the failure count.
 */
#ifndef NACRE_TEST_API_H
#define NACRE_TEST_API_H

#include <nacre.h>

#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: CHECK(%s) failed (last error: %s)\n", __FILE__,       \
                    __LINE__, #cond, nacre_last_error());                                 \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

/* A call that must succeed: its result is >= 0. */
#define OK(call)                                                                          \
    do {                                                                                  \
        int64_t rc_ = (int64_t)(call);                                                    \
        if (rc_ < 0) {                                                                    \
            fprintf(stderr, "%s:%d: %s returned %lld, %s (%s)\n", __FILE__, __LINE__,     \
                    #call, (long long)rc_, nacre_strerror((int)rc_), nacre_last_error()); \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

/* A call that must fail with -err. */
#define FAILS(call, err)                                                                  \
    do {                                                                                  \
        int64_t rc_ = (int64_t)(call);                                                    \
        if (rc_ != -(err)) {                                                              \
            fprintf(stderr, "%s:%d: %s returned %lld, expected -%s (%d)\n", __FILE__,     \
                    __LINE__, #call, (long long)rc_, #err, (err));                        \
            failures++;                                                                   \
        }                                                                                 \
    } while (0)

/* Byte `i` of the test pattern for a file written with `seed`. */
static inline unsigned char pattern_byte(unsigned seed, uint64_t i)
{
    return (unsigned char)(i * 131 + (i >> 12) * 7 + seed);
}

static inline void fill_pattern(unsigned char *buf, size_t len, unsigned seed, uint64_t offset)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pattern_byte(seed, offset + i);
}

/* Whether `buf` holds the pattern of [offset, offset + len). */
static inline int is_pattern(const unsigned char *buf, size_t len, unsigned seed, uint64_t offset)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i] != pattern_byte(seed, offset + i))
            return 0;
    return 1;
}

#endif
