/* Simulated libnvidia-ml: the kernel driver's ioctls, for the stand-in device nodes. */
#include "sim.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static __thread int sim_errno;

/* errno of the last gpuPersistdSimIoctl on this thread. */
EXPORT int gpuPersistdSimErrno(void) { return sim_errno; }

/* Which stand-in the fd is open on: a GPU's index, -2 for nvidia-uvm, -1 for anything else. */
static int stand_in_of(int fd) {
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) return -1;
    target[n] = '\0';
    const char *base = strrchr(target, '/');
    base = base ? base + 1 : target;
    if (strcmp(base, "nvidia-uvm") == 0) return -2;
    unsigned minor;
    char rest;
    if (sscanf(base, "nvidia%u%c", &minor, &rest) != 1) return -1;
    for (int i = 0; i < S.gpu_count; i++)
        if (S.gpus[i].minor == minor) return i;
    return -1;
}

/* ioctl(2) as the nvidia and nvidia-uvm modules answer it, on the simulator's stand-in nodes:
 * NV_ESC_NUMA_INFO, UVM_INITIALIZE, UVM_REGISTER_GPU. A fault's `return` is an errno (the
 * ioctl fails), its `nvStatus` the driver's rmStatus (the ioctl succeeds). */
EXPORT int gpuPersistdSimIoctl(int fd, unsigned long request, void *arg) {
    int target = stand_in_of(fd);
    const char *call = request == 0xC23046D7UL ? "NV_ESC_NUMA_INFO"
                       : request == 0x30000001UL ? "UVM_INITIALIZE"
                       : request == 37UL         ? "UVM_REGISTER_GPU"
                                                 : "ioctl";
    unsigned char *p = arg;
    int gpu = target >= 0 ? target : -1;
    if (request == 37UL && target == -2) {
        gpu = -1;
        for (int i = 0; i < S.gpu_count; i++) {
            char hex[33] = "";
            const char *u = S.gpus[i].uuid + 4;
            for (int k = 0; *u && k < 32; u++)
                if (*u != '-') hex[k++] = *u;
            unsigned char bytes[16];
            for (int k = 0; k < 16; k++) sscanf(hex + 2 * k, "%2hhx", &bytes[k]);
            if (memcmp(bytes, p, 16) == 0) gpu = i;
        }
    }
    nvmlReturn_t err = 0;
    unsigned nv = 0;
    if (inject_nv(call, gpu, &err, &nv)) {
        sim_errno = err;
        done(call, gpu, err);
        return -1;
    }
    if (request == 0xC23046D7UL && target >= 0) {
        struct sim_gpu *g = &S.gpus[target];
        memset(p, 0, 552);
        int32_t nid = g->numa_nid, status = g->numa_status;
        uint64_t size = g->numa_nid >= 0 ? g->numa_mem_size : 0, memblock = 512ULL << 20;
        memcpy(p + 0, &nid, 4);
        memcpy(p + 4, &status, 4);
        memcpy(p + 8, &memblock, 8);
        memcpy(p + 24, &size, 8);
        p[32] = (unsigned char)g->numa_auto_online;
        done(call, gpu, 0);
        return 0;
    }
    if (request == 0x30000001UL && target == -2) {
        memcpy(p + 8, &nv, 4);
        done(call, -1, (int)nv);
        return 0;
    }
    if (request == 37UL && target == -2) {
        if (!nv && gpu < 0) nv = 0x22; /* NV_ERR_INVALID_DEVICE: no GPU has that UUID */
        memcpy(p + 36, &nv, 4);
        done(call, gpu, (int)nv);
        return 0;
    }
    sim_errno = ENOTTY;
    done(call, gpu, ENOTTY);
    return -1;
}
