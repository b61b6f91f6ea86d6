/*
 * Apply a bundelta patch from C through the C API (capi/include/bundelta.h).
 *
 *   apply OLD PATCH OUT          single-file patch through callbacks: OLD read with pread,
 *                                the patch read front to back (PATCH "-" = standard input),
 *                                the new file written to OUT.part and renamed to OUT only
 *                                once bd_apply says it is verified
 *   apply --files OLD PATCH OUT  a file or directory patch by paths (bd_apply_files)
 *   apply --memory-limit N ...   refuse patches needing more than N bytes of heap
 *
 * Exit status: 0 applied and verified, 1 refused (the message says why), 2 usage.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bundelta.h"

static int64_t old_read_at(void *ctx, uint8_t *buf, size_t len, uint64_t pos) {
    int fd = *(int *)ctx;
    for (;;) {
        ssize_t n = pread(fd, buf, len, (off_t)pos);
        if (n >= 0) return (int64_t)n;
        if (errno != EINTR) return -1;
    }
}

static int64_t patch_read(void *ctx, uint8_t *buf, size_t len) {
    int fd = *(int *)ctx;
    for (;;) {
        ssize_t n = read(fd, buf, len);
        if (n >= 0) return (int64_t)n;
        if (errno != EINTR) return -1;
    }
}

static int64_t out_write(void *ctx, const uint8_t *buf, size_t len) {
    int fd = *(int *)ctx;
    for (;;) {
        ssize_t n = write(fd, buf, len);
        if (n > 0) return (int64_t)n;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
}

static void print_report(const char *out, const BdReport *r) {
    printf("%s: %llu files, %llu bytes, blake3 ", out, (unsigned long long)r->files,
           (unsigned long long)r->bytes);
    for (int i = 0; i < 32; i++) printf("%02x", r->digest[i]);
    printf("\n");
}

static int usage(void) {
    fprintf(stderr, "usage: apply [--memory-limit BYTES] [--files] OLD PATCH|- OUT\n");
    return 2;
}

int main(int argc, char **argv) {
    int files = 0;
    uint64_t limit = 0;
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--files") == 0) {
            files = 1;
        } else if (strcmp(argv[i], "--memory-limit") == 0 && i + 1 < argc) {
            limit = strtoull(argv[++i], NULL, 10);
        } else {
            return usage();
        }
    }
    if (argc - i != 3) return usage();
    const char *old = argv[i], *patch = argv[i + 1], *out = argv[i + 2];

    if (getenv("BUNDELTA_VERBOSE")) fprintf(stderr, "bundelta %s\n", bd_version());
    BdPatcher *p = bd_patcher_new();
    if (limit) bd_patcher_set_memory_limit(p, limit);
    BdReport report;
    BdStatus st;
    if (files) {
        st = bd_apply_files(p, old, patch, out, &report);
    } else {
        int old_fd = open(old, O_RDONLY);
        int patch_fd = strcmp(patch, "-") == 0 ? 0 : open(patch, O_RDONLY);
        if (old_fd < 0 || patch_fd < 0) {
            fprintf(stderr, "apply: cannot open %s: %s\n", old_fd < 0 ? old : patch,
                    strerror(errno));
            bd_patcher_free(p);
            return 1;
        }
        /* Build beside OUT; it becomes OUT only once verified. */
        size_t n = strlen(out);
        char *part = malloc(n + 6);
        memcpy(part, out, n);
        memcpy(part + n, ".part", 6);
        int out_fd = open(part, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (out_fd < 0) {
            fprintf(stderr, "apply: cannot create %s: %s\n", part, strerror(errno));
            free(part);
            bd_patcher_free(p);
            return 1;
        }
        st = bd_apply(p, old_read_at, &old_fd, patch_read, &patch_fd, out_write, &out_fd,
                      &report);
        int durable = st == BD_STATUS_OK && fsync(out_fd) == 0;
        if (close(out_fd) != 0) durable = 0;
        if (st == BD_STATUS_OK && (!durable || link(part, out) != 0)) {
            fprintf(stderr, "apply: cannot write %s: %s\n", out, strerror(errno));
            st = BD_STATUS_IO;
        }
        unlink(part);
        free(part);
        close(old_fd);
        if (patch_fd != 0) close(patch_fd);
    }
    if (st != BD_STATUS_OK) {
        fprintf(stderr, "apply: refused (status %d): %s\n", (int)st, bd_last_error(p));
        bd_patcher_free(p);
        return 1;
    }
    print_report(out, &report);
    bd_patcher_free(p);
    return 0;
}
