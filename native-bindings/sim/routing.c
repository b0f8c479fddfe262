/* Simulated libnvidia-ml: persistence calls routed to the persistence daemon's socket, as real
 * NVML does (measured on driver 580.159.04, docs/architecture.md "How NVML reaches the daemon"):
 * whenever a socket exists at the path, nvmlDeviceGetPersistenceMode and
 * nvmlDeviceSetPersistenceMode make one ONC RPC call (program 35006, version 1) on a new
 * connection and wait for the answer with no time limit. A refused or absent socket, or a
 * connection closed without an answer, falls back to the kernel's legacy flag. */
#include "sim.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PROGRAM 35006
#define VERSION 1

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

/* Reads exactly n bytes, blocking as long as it takes; 0 at end of stream or an error. */
static int read_all(int fd, unsigned char *buf, size_t n) {
    while (n > 0) {
        ssize_t got = read(fd, buf, n);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return 0;
        buf += got;
        n -= (size_t)got;
    }
    return 1;
}

static int write_all(int fd, const unsigned char *buf, size_t n) {
    while (n > 0) {
        ssize_t put = write(fd, buf, n);
        if (put < 0 && errno == EINTR) continue;
        if (put <= 0) return 0;
        buf += put;
        n -= (size_t)put;
    }
    return 1;
}

/* One reply record (every fragment), into buf; its length, or -1 when the peer closed first. */
static int read_record(int fd, unsigned char *buf, size_t cap) {
    size_t len = 0;
    for (;;) {
        unsigned char head[4];
        if (!read_all(fd, head, 4)) return -1;
        uint32_t h = get32(head), frag = h & 0x7fffffffU;
        if (frag > cap - len) return -1;
        if (!read_all(fd, buf + len, frag)) return -1;
        len += frag;
        if (h & 0x80000000U) return (int)len;
    }
}

static void log_route(int gpu, const char *outcome, long long waited_ms) {
    char call[64];
    snprintf(call, sizeof call, "persistenceSocket:%s", outcome);
    done(call, gpu, (nvmlReturn_t)waited_ms);
}

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000LL + t.tv_nsec / 1000000LL;
}

enum route route_persistence(const struct sim_gpu *g, int proc, int mode, int *status, int *answer) {
    char path[sizeof S.persistence_socket];
    pthread_mutex_lock(&lock);
    snprintf(path, sizeof path, "%s", S.persistence_socket);
    pthread_mutex_unlock(&lock);
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (!path[0] || strlen(path) >= sizeof addr.sun_path) return ROUTE_NONE;
    memcpy(addr.sun_path, path, strlen(path) + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return ROUTE_NONE;
    long long started = now_ms();
    /* A listening socket whose owner never accepts still completes connect() (the backlog):
     * the wait is in the read below, as real NVML's. */
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return ROUTE_NONE;
    }
    unsigned char call[4 + 40 + 20];
    size_t n = 0;
    uint32_t words[] = {(uint32_t)g->index + 1, 0 /* CALL */, 2, PROGRAM, VERSION, (uint32_t)proc,
                        0, 0 /* AUTH_NONE */, 0, 0 /* verifier */, g->domain, g->bus, g->device, 0};
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++, n += 4) put32(call + 4 + n, words[i]);
    if (proc == 1) put32(call + 4 + n, (uint32_t)mode), n += 4;
    put32(call, 0x80000000U | (uint32_t)n);
    unsigned char reply[512];
    int len = write_all(fd, call, n + 4) ? read_record(fd, reply, sizeof reply) : -1;
    close(fd);
    long long waited = now_ms() - started;
    /* xid, REPLY, MSG_ACCEPTED, verifier (flavour, length, body), SUCCESS, then the result. */
    if (len < 24 || get32(reply + 4) != 1 || get32(reply + 8) != 0) {
        log_route(g->index, "closed", waited);
        return ROUTE_CLOSED;
    }
    uint32_t verf_len = get32(reply + 16);
    size_t at = 20 + ((verf_len + 3) & ~3U);
    if (verf_len > 400 || (size_t)len < at + 8 || get32(reply + at) != 0) {
        log_route(g->index, "closed", waited);
        return ROUTE_CLOSED;
    }
    *status = (int)get32(reply + at + 4);
    *answer = proc == 2 && *status == 0 && (size_t)len >= at + 12 ? (int)get32(reply + at + 8) : 0;
    log_route(g->index, "answered", waited);
    return ROUTE_ANSWERED;
}

/* Whether any process holds an fd on the GPU's stand-in node (root sees every process). */
static int node_held(const struct sim_gpu *g) {
    char node[4200];
    if (!S.device_dir[0]) return 0;
    snprintf(node, sizeof node, "%s/nvidia%u", S.device_dir, g->minor);
    DIR *procs = opendir("/proc");
    if (!procs) return 0;
    int held = 0;
    for (struct dirent *p; !held && (p = readdir(procs));) {
        if (p->d_name[0] < '0' || p->d_name[0] > '9') continue;
        char dir[300];
        snprintf(dir, sizeof dir, "/proc/%s/fd", p->d_name);
        DIR *fds = opendir(dir);
        if (!fds) continue;
        for (struct dirent *f; !held && (f = readdir(fds));) {
            char link[600], target[4200];
            snprintf(link, sizeof link, "%s/%s", dir, f->d_name);
            ssize_t got = readlink(link, target, sizeof target - 1);
            if (got < 0) continue;
            target[got] = '\0';
            held = strcmp(target, node) == 0;
        }
        closedir(fds);
    }
    closedir(procs);
    return held;
}

/* For tests: 2 held (a process has the node open), 1 initialised (no holder, the legacy flag
 * keeps it up), 0 torn down; -1 for an unknown GPU. Reads the flag as another process left it. */
EXPORT int gpuPersistdSimGpuState(int gpu) {
    pthread_mutex_lock(&lock);
    load_config();
    int known = gpu >= 0 && gpu < S.gpu_count;
    if (known) state_read();
    int flag = known && S.gpus[gpu].persistence;
    pthread_mutex_unlock(&lock);
    if (!known) return -1;
    if (node_held(&S.gpus[gpu])) return 2;
    return flag ? 1 : 0;
}
