/*
 * daxtool: the test guest's helper for the DAX steps that busybox cannot do (statx
 * attributes, MAP_SHARED mappings, nanosecond read timings). Built statically by the test
 * (tests/src/guest/helper.rs) and packed into the initramfs as /bin/daxtool; never committed
 * as a binary.
 *
 *   daxtool dax FILE               print 1 if statx says the file is accessed through DAX
 *                                  (STATX_ATTR_DAX), else 0
 *   daxtool cat FILE               write the whole file to stdout through a MAP_SHARED mapping
 *   daxtool poke FILE OFFSET TEXT  store TEXT at OFFSET through a MAP_SHARED mapping, msync
 *   daxtool hold FILE OFFSET FLAG  map the file, print the 16 bytes at OFFSET
 *                                  ("MMAP <hex>"), print "VFSDAX WAIT <FLAG>", wait until the
 *                                  file FLAG exists (the host's go-ahead), print the bytes again
 *                                  through the same mapping; a SIGBUS on the access prints
 *                                  "MMAP SIGBUS" and exits 7
 *   daxtool seqread FILE LABEL     read the whole file with 1 MiB read(2) calls, print
 *                                  "BENCHNS LABEL <nanoseconds> <bytes>" (CLOCK_MONOTONIC)
 *   daxtool randread FILE LABEL COUNT
 *                                  COUNT pread(2) of 4 KiB at 4 KiB-aligned pseudo-random
 *                                  offsets inside the file (xorshift, fixed seed: the same
 *                                  offsets every run), print "BENCHNS LABEL <ns> <bytes>"
 *                                  (tests/guest/daxbench.sh, tests/src/bin/guest-dax-bench.rs)
 *
 * Exit status: 0 on success, 1 on a usage error, 2 on a failed call (with a message on
 * stderr naming it and the errno).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef STATX_ATTR_DAX
#define STATX_ATTR_DAX 0x00200000
#endif

static int fail(const char *what, const char *path)
{
    fprintf(stderr, "daxtool: %s %s: %s\n", what, path, strerror(errno));
    return 2;
}

static int cmd_dax(const char *path)
{
    struct statx stx;
    if (statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &stx) != 0)
        return fail("statx", path);
    if (!(stx.stx_attributes_mask & STATX_ATTR_DAX)) {
        fprintf(stderr, "daxtool: the kernel does not report STATX_ATTR_DAX\n");
        return 2;
    }
    printf("%d\n", (stx.stx_attributes & STATX_ATTR_DAX) ? 1 : 0);
    return 0;
}

/* Maps the whole of an open file; *len gets its size. */
static unsigned char *map_file(int fd, int prot, size_t *len, const char *path)
{
    struct stat st;
    if (fstat(fd, &st) != 0) {
        fail("fstat", path);
        return NULL;
    }
    *len = (size_t)st.st_size;
    if (*len == 0)
        return (unsigned char *)"";
    void *p = mmap(NULL, *len, prot, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        fail("mmap", path);
        return NULL;
    }
    return p;
}

static int cmd_cat(const char *path)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail("open", path);
    size_t len;
    unsigned char *p = map_file(fd, PROT_READ, &len, path);
    if (!p)
        return 2;
    size_t done = 0;
    while (done < len) {
        ssize_t n = write(1, p + done, len - done);
        if (n < 0)
            return fail("write", "stdout");
        done += (size_t)n;
    }
    return 0;
}

static int cmd_poke(const char *path, const char *off, const char *text)
{
    size_t offset = strtoull(off, NULL, 0), n = strlen(text);
    int fd = open(path, O_RDWR);
    if (fd < 0)
        return fail("open", path);
    size_t len;
    unsigned char *p = map_file(fd, PROT_READ | PROT_WRITE, &len, path);
    if (!p)
        return 2;
    if (offset > len || n > len - offset) {
        fprintf(stderr, "daxtool: %zu bytes at %zu do not fit in %zu\n", n, offset, len);
        return 1;
    }
    memcpy(p + offset, text, n);
    if (msync(p, len, MS_SYNC) != 0)
        return fail("msync", path);
    return 0;
}

static void on_sigbus(int sig)
{
    static const char msg[] = "MMAP SIGBUS\n";
    (void)sig;
    (void)!write(1, msg, sizeof msg - 1);
    _exit(7);
}

static void show(const unsigned char *p)
{
    char line[64] = "MMAP ";
    for (int i = 0; i < 16; i++)
        sprintf(line + 5 + 2 * i, "%02x", p[i]);
    strcat(line, "\n");
    (void)!write(1, line, strlen(line));
}

static int cmd_hold(const char *path, const char *off, const char *flag)
{
    size_t offset = strtoull(off, NULL, 0);
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail("open", path);
    size_t len;
    unsigned char *p = map_file(fd, PROT_READ, &len, path);
    if (!p)
        return 2;
    if (offset > len || len - offset < 16) {
        fprintf(stderr, "daxtool: 16 bytes at %zu do not fit in %zu\n", offset, len);
        return 1;
    }
    signal(SIGBUS, on_sigbus);
    show(p + offset);
    printf("VFSDAX WAIT %s\n", flag);
    fflush(stdout);
    struct stat st;
    for (int i = 0; stat(flag, &st) != 0; i++) {
        if (i > 1200) {
            fprintf(stderr, "daxtool: no %s after 120 s\n", flag);
            return 2;
        }
        usleep(100 * 1000);
    }
    show(p + offset);
    return 0;
}

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

static void bench_line(const char *label, unsigned long long ns, unsigned long long bytes)
{
    printf("BENCHNS %s %llu %llu\n", label, ns, bytes);
}

#define SEQ_CHUNK (1 << 20)
#define RAND_BLOCK 4096

static int cmd_seqread(const char *path, const char *label)
{
    static char buf[SEQ_CHUNK];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail("open", path);
    unsigned long long total = 0, t0 = now_ns();
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0)
            return fail("read", path);
        if (n == 0)
            break;
        total += (unsigned long long)n;
    }
    unsigned long long t1 = now_ns();
    close(fd);
    bench_line(label, t1 - t0, total);
    return 0;
}

static int cmd_randread(const char *path, const char *label, const char *count_arg)
{
    static char buf[RAND_BLOCK];
    char *end;
    unsigned long long count = strtoull(count_arg, &end, 0);
    if (*count_arg == '\0' || *end != '\0' || count == 0) {
        fprintf(stderr, "daxtool: COUNT must be a positive number, not %s\n", count_arg);
        return 1;
    }
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail("open", path);
    struct stat st;
    if (fstat(fd, &st) != 0)
        return fail("fstat", path);
    unsigned long long blocks = (unsigned long long)st.st_size / RAND_BLOCK;
    if (blocks == 0) {
        fprintf(stderr, "daxtool: %s is smaller than %d bytes\n", path, RAND_BLOCK);
        return 1;
    }
    unsigned long long x = 0x9E3779B97F4A7C15ULL, total = 0, t0 = now_ns();
    for (unsigned long long i = 0; i < count; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        off_t off = (off_t)((x % blocks) * RAND_BLOCK);
        ssize_t n = pread(fd, buf, RAND_BLOCK, off);
        if (n != RAND_BLOCK) {
            if (n >= 0)
                errno = EIO;
            return fail("pread", path);
        }
        total += RAND_BLOCK;
    }
    unsigned long long t1 = now_ns();
    close(fd);
    bench_line(label, t1 - t0, total);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 3 && strcmp(argv[1], "dax") == 0)
        return cmd_dax(argv[2]);
    if (argc == 3 && strcmp(argv[1], "cat") == 0)
        return cmd_cat(argv[2]);
    if (argc == 5 && strcmp(argv[1], "poke") == 0)
        return cmd_poke(argv[2], argv[3], argv[4]);
    if (argc == 5 && strcmp(argv[1], "hold") == 0)
        return cmd_hold(argv[2], argv[3], argv[4]);
    if (argc == 4 && strcmp(argv[1], "seqread") == 0)
        return cmd_seqread(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "randread") == 0)
        return cmd_randread(argv[2], argv[3], argv[4]);
    fprintf(stderr, "usage: daxtool dax|cat FILE | poke FILE OFFSET TEXT | hold FILE OFFSET FLAG"
                    " | seqread FILE LABEL | randread FILE LABEL COUNT\n");
    return 1;
}
