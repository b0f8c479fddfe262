/* Simulated libnvidia-ml: the NVML functions gpu-persistd uses, with NVML's real
 * signatures, return codes and buffer rules, configurable GPUs, latencies and fault
 * injection. Loaded through the same koffi binding as the real library, so tests
 * exercise the real FFI path. The configuration format is documented in README.md
 * ("The GPU simulator"). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_GPUS 256
#define MAX_FAULTS 64
#define MAX_EVENTS 256
#define MAX_SETS 64

struct sim_gpu {
    int index;
    char uuid[96];
    char name[96];
    char busId[32];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId, minor;
    int persistence;
    int attached; /* first handle look-up done in this process */
    /* NV_ESC_NUMA_INFO's answer: coherent memory (GH200) has nid >= 0 and a status other than 0. */
    int numa_nid, numa_status, numa_auto_online;
    unsigned long long numa_mem_size;
};
typedef struct sim_gpu *nvmlDevice_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    nvmlDevice_t device;
    unsigned long long eventType;
    unsigned long long eventData;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlEventData_t;

struct fault {
    char call[64];
    int gpu; /* -1: any GPU, and calls that name no GPU */
    int has_return;
    int ret;
    long long afterCalls, afterMs, times, hangMs;
    int gate; /* block until gpuPersistdSimOpenGate(): tests order events without sleeping */
    int has_nv_status; /* ioctls: the NV_STATUS the driver answers (rmStatus), the ioctl itself succeeding */
    unsigned nv_status;
    long long seen, fired;
};

struct event {
    int gpu;
    unsigned long long type, data;
    long long afterMs;
    int delivered;
};

struct event_set {
    int used;
    unsigned long long registered[MAX_GPUS];
};
typedef struct event_set *nvmlEventSet_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_changed = PTHREAD_COND_INITIALIZER;
static unsigned long gate_generation; /* outlives resets: a reset frees every gated call */
/* Event waits sleep on this (CLOCK_MONOTONIC); only a reset signals it. */
static pthread_cond_t wait_changed;
__attribute__((constructor)) static void init_wait_changed(void) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wait_changed, &attr);
}
static struct {
    int loaded;
    char load_error[512];
    int gpu_count;
    struct sim_gpu gpus[MAX_GPUS];
    struct fault faults[MAX_FAULTS];
    int fault_count;
    struct event events[MAX_EVENTS];
    int event_count;
    struct event_set sets[MAX_SETS];
    long long attach_delay_ms, set_delay_ms;
    char state_path[4096];
    int call_log_fd;
    int init_refs;
    struct timespec first_init;
    int init_seen;
    int gate_open;
    int gated; /* calls blocked at the gate now */
} S = {.call_log_fd = -1};

static long long ms_since_first_init(void) {
    if (!S.init_seen) return 0;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - S.first_init.tv_sec) * 1000LL + (now.tv_nsec - S.first_init.tv_nsec) / 1000000LL;
}

static void sleep_ms(long long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

/* ---- identities ---------------------------------------------------------- */

/* DGX H100: eight H100 SXM5 80GB at the bus addresses of the real system board. */
static const unsigned dgx_h100_bus[8] = {0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb};

static void default_identity(struct sim_gpu *g, int index, int dgx) {
    memset(g, 0, sizeof *g);
    g->index = index;
    unsigned seed = 0x9e3779b9u * (unsigned)(index + 1);
    snprintf(g->uuid, sizeof g->uuid, "GPU-%08x-%04x-%04x-%04x-%08x%04x", seed, (seed >> 7) & 0xffff,
             0x4000 | ((seed >> 3) & 0x0fff), 0x8000 | ((seed >> 11) & 0x3fff), seed ^ 0x5bd1e995u,
             (unsigned)index & 0xffff);
    snprintf(g->name, sizeof g->name, "NVIDIA H100 80GB HBM3");
    g->domain = (unsigned)index / 128;
    g->bus = dgx && index < 8 ? dgx_h100_bus[index] : 0x06 + (unsigned)index % 128;
    g->device = 0;
    g->pciDeviceId = 0x233010de;
    g->pciSubSystemId = 0x16c110de;
    g->minor = (unsigned)index;
    g->numa_nid = -1;
    snprintf(g->busId, sizeof g->busId, "%08X:%02X:%02X.0", g->domain, g->bus, g->device);
}

static int parse_bus_id(const char *s, unsigned *domain, unsigned *bus, unsigned *device) {
    unsigned d, b, dev, fn;
    char tail;
    if (sscanf(s, "%x:%x:%x.%x%c", &d, &b, &dev, &fn, &tail) == 4) {
    } else if (sscanf(s, "%x:%x:%x%c", &d, &b, &dev, &tail) == 3) {
    } else if (sscanf(s, "%x:%x.%x%c", &b, &dev, &fn, &tail) == 3) {
        d = 0;
    } else {
        return 0;
    }
    *domain = d;
    *bus = b;
    *device = dev;
    return 1;
}

/* ---- state file: the legacy persistence flag as the kernel would keep it ---- */

static void state_read(void) {
    if (!S.state_path[0]) return;
    FILE *f = fopen(S.state_path, "r");
    if (!f) return;
    char uuid[96];
    int mode;
    while (fscanf(f, "%95s %d", uuid, &mode) == 2)
        for (int i = 0; i < S.gpu_count; i++)
            if (strcmp(S.gpus[i].uuid, uuid) == 0) S.gpus[i].persistence = mode;
    fclose(f);
}

static void state_write(void) {
    if (!S.state_path[0]) return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", S.state_path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    for (int i = 0; i < S.gpu_count; i++) fprintf(f, "%s %d\n", S.gpus[i].uuid, S.gpus[i].persistence);
    fclose(f);
    rename(tmp, S.state_path);
}

/* ---- configuration ------------------------------------------------------- */

static long long num_or(const struct json *obj, const char *key, long long fallback) {
    const struct json *v = json_get(obj, key);
    return v && (v->kind == JSON_NUMBER || v->kind == JSON_BOOL) ? v->number : fallback;
}

static void str_into(const struct json *obj, const char *key, char *dst, size_t len) {
    const struct json *v = json_get(obj, key);
    if (v && v->kind == JSON_STRING) snprintf(dst, len, "%s", v->string);
}

static int load_config_file(const char *path, int dgx) {
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(S.load_error, sizeof S.load_error, "cannot open %s: %s", path, strerror(errno));
        return 0;
    }
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    char err[200];
    struct json *root = json_parse(text, err, sizeof err);
    if (!root || root->kind != JSON_OBJECT) {
        snprintf(S.load_error, sizeof S.load_error, "%s: %s", path, root ? "top level must be an object" : err);
        json_free(root);
        return 0;
    }
    const struct json *gpus = json_get(root, "gpus");
    if (gpus && gpus->kind == JSON_NUMBER) {
        S.gpu_count = (int)gpus->number;
    } else if (gpus && gpus->kind == JSON_ARRAY) {
        int i = 0;
        for (const struct json *g = gpus->child; g && i < MAX_GPUS; g = g->next, i++) {
            struct sim_gpu *d = &S.gpus[i];
            default_identity(d, i, dgx);
            str_into(g, "uuid", d->uuid, sizeof d->uuid);
            str_into(g, "name", d->name, sizeof d->name);
            char bus_id[64] = "";
            str_into(g, "pciBusId", bus_id, sizeof bus_id);
            if (bus_id[0] && parse_bus_id(bus_id, &d->domain, &d->bus, &d->device))
                snprintf(d->busId, sizeof d->busId, "%08X:%02X:%02X.0", d->domain, d->bus, d->device);
            d->minor = (unsigned)num_or(g, "minor", d->minor);
            d->persistence = (int)num_or(g, "persistence", 0);
            const struct json *numa = json_get(g, "numa");
            if (numa && numa->kind == JSON_OBJECT) {
                d->numa_nid = (int)num_or(numa, "nid", 1 + i);
                d->numa_status = (int)num_or(numa, "status", 3);
                d->numa_auto_online = (int)num_or(numa, "autoOnline", 1);
                d->numa_mem_size = (unsigned long long)num_or(numa, "memSizeBytes", 96LL << 30);
            }
        }
        S.gpu_count = -i - 1; /* marks "identities given": decoded below */
    }
    S.attach_delay_ms = num_or(root, "attachDelayMs", 0);
    S.set_delay_ms = num_or(root, "setDelayMs", 0);
    str_into(root, "statePath", S.state_path, sizeof S.state_path);
    char call_log[4096] = "";
    str_into(root, "callLogPath", call_log, sizeof call_log);
    if (call_log[0]) S.call_log_fd = open(call_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const struct json *faults = json_get(root, "faults");
    for (const struct json *fa = faults ? faults->child : NULL; fa && S.fault_count < MAX_FAULTS; fa = fa->next) {
        struct fault *x = &S.faults[S.fault_count++];
        snprintf(x->call, sizeof x->call, "*");
        str_into(fa, "call", x->call, sizeof x->call);
        x->gpu = (int)num_or(fa, "gpu", -1);
        const struct json *r = json_get(fa, "return");
        x->has_return = r && r->kind == JSON_NUMBER;
        x->ret = x->has_return ? (int)r->number : 0;
        x->afterCalls = num_or(fa, "afterCalls", 0);
        x->afterMs = num_or(fa, "afterMs", 0);
        x->times = num_or(fa, "times", -1);
        x->hangMs = num_or(fa, "hangMs", 0);
        x->gate = (int)num_or(fa, "gate", 0);
        const struct json *nv = json_get(fa, "nvStatus");
        x->has_nv_status = nv && nv->kind == JSON_NUMBER;
        x->nv_status = x->has_nv_status ? (unsigned)nv->number : 0;
    }
    const struct json *events = json_get(root, "events");
    for (const struct json *ev = events ? events->child : NULL; ev && S.event_count < MAX_EVENTS; ev = ev->next) {
        struct event *x = &S.events[S.event_count++];
        x->gpu = (int)num_or(ev, "gpu", 0);
        x->type = (unsigned long long)num_or(ev, "type", 0x8);
        x->data = (unsigned long long)num_or(ev, "data", 0);
        x->afterMs = num_or(ev, "afterMs", 0);
    }
    json_free(root);
    return 1;
}

/* Environment (set by gpu-persistd's --simulate) overrides the file's GPU count. */
static void load_config(void) {
    if (S.loaded) return;
    S.loaded = 1;
    const char *profile = getenv("GPU_PERSISTD_SIM_PROFILE");
    int dgx = profile && strcmp(profile, "dgx-h100") == 0;
    if (profile && profile[0] && !dgx)
        snprintf(S.load_error, sizeof S.load_error, "unknown profile '%s' (known: dgx-h100)", profile);
    S.gpu_count = dgx ? 8 : 2;
    const char *path = getenv("GPU_PERSISTD_SIM_CONFIG");
    if (path && path[0] && !load_config_file(path, dgx)) return;
    int given = 0;
    if (S.gpu_count < 0) {
        given = -S.gpu_count - 1;
        S.gpu_count = given;
    }
    const char *count = getenv("GPU_PERSISTD_SIM_GPUS");
    if (count && count[0]) S.gpu_count = atoi(count);
    if (S.gpu_count < 0 || S.gpu_count > MAX_GPUS) {
        snprintf(S.load_error, sizeof S.load_error, "GPU count %d is outside 0..%d", S.gpu_count, MAX_GPUS);
        return;
    }
    for (int i = given; i < S.gpu_count; i++) default_identity(&S.gpus[i], i, dgx);
    state_read();
}

/* ---- per-call bookkeeping: fault injection and the call log ---------------- */

static nvmlReturn_t done(const char *call, int gpu, nvmlReturn_t ret) {
    if (S.call_log_fd >= 0) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        char line[200];
        int n = snprintf(line, sizeof line, "%lld.%06ld %d %s %d %d\n", (long long)now.tv_sec,
                         now.tv_nsec / 1000, (int)getpid(), call, gpu, ret);
        if (write(S.call_log_fd, line, (size_t)n) < 0) {
            /* The log is a test aid; a failed write must not change the call's result. */
        }
    }
    return ret;
}

/* Returns 1 with *ret set when a fault decides the call's result; *nv_status (if given) gets
 * the fault's NV_STATUS, or stays as it was. */
static int inject_nv(const char *call, int gpu, nvmlReturn_t *ret, unsigned *nv_status) {
    long long hang = 0;
    int decided = 0;
    pthread_mutex_lock(&lock);
    long long elapsed = ms_since_first_init();
    for (int i = 0; i < S.fault_count; i++) {
        struct fault *f = &S.faults[i];
        if (strcmp(f->call, "*") != 0 && strcmp(f->call, call) != 0) continue;
        if (f->gpu != -1 && f->gpu != gpu) continue;
        f->seen++;
        if (f->seen <= f->afterCalls || elapsed < f->afterMs) continue;
        if (f->times >= 0 && f->fired >= f->times) continue;
        f->fired++;
        hang = f->hangMs;
        decided = f->has_return;
        *ret = f->ret;
        if (nv_status && f->has_nv_status) *nv_status = f->nv_status;
        if (f->gate) {
            unsigned long generation = gate_generation;
            S.gated++;
            pthread_cond_broadcast(&gate_changed);
            while (!S.gate_open && generation == gate_generation) pthread_cond_wait(&gate_changed, &lock);
            if (generation == gate_generation) S.gated--;
        }
        break;
    }
    pthread_mutex_unlock(&lock);
    if (hang > 0) sleep_ms(hang);
    return decided;
}

static int inject(const char *call, int gpu, nvmlReturn_t *ret) { return inject_nv(call, gpu, ret, NULL); }

#define ENTER(call, gpu)                                                                                   \
    do {                                                                                                   \
        nvmlReturn_t injected_;                                                                            \
        if (inject(call, gpu, &injected_)) return done(call, gpu, injected_);                             \
    } while (0)

static int initialized(void) {
    pthread_mutex_lock(&lock);
    int refs = S.init_refs;
    pthread_mutex_unlock(&lock);
    return refs > 0;
}

static int gpu_of(nvmlDevice_t d) {
    if (d < &S.gpus[0] || d >= &S.gpus[S.gpu_count]) return -2;
    return d->index;
}

/* Common prologue of every per-device call. */
#define DEVICE_CALL(call, dev)                                                                              \
    int gpu_ = gpu_of(dev);                                                                                \
    if (!initialized()) return done(call, gpu_, NVML_ERROR_UNINITIALIZED);                                \
    if (gpu_ < 0) return done(call, gpu_, NVML_ERROR_INVALID_ARGUMENT);                                   \
    ENTER(call, gpu_)

static nvmlReturn_t copy_string(const char *call, int gpu, char *buf, unsigned len, const char *value) {
    if (!buf) return done(call, gpu, NVML_ERROR_INVALID_ARGUMENT);
    if (strlen(value) + 1 > len) return done(call, gpu, NVML_ERROR_INSUFFICIENT_SIZE);
    memcpy(buf, value, strlen(value) + 1);
    return done(call, gpu, NVML_SUCCESS);
}

/* ---- the NVML API -------------------------------------------------------- */

static nvmlReturn_t do_init(const char *call) {
    pthread_mutex_lock(&lock);
    load_config();
    if (!S.init_seen) {
        S.init_seen = 1;
        clock_gettime(CLOCK_MONOTONIC, &S.first_init);
    }
    int bad = S.load_error[0] != '\0';
    pthread_mutex_unlock(&lock);
    if (bad) {
        fprintf(stderr, "libnvidia-ml simulator: %s\n", S.load_error);
        return done(call, -1, NVML_ERROR_UNKNOWN);
    }
    ENTER(call, -1);
    pthread_mutex_lock(&lock);
    S.init_refs++;
    pthread_mutex_unlock(&lock);
    return done(call, -1, NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return do_init("nvmlInit_v2"); }

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    return do_init("nvmlInitWithFlags");
}

EXPORT nvmlReturn_t nvmlShutdown(void) {
    if (!initialized()) return done("nvmlShutdown", -1, NVML_ERROR_UNINITIALIZED);
    ENTER("nvmlShutdown", -1);
    pthread_mutex_lock(&lock);
    if (S.init_refs > 0) S.init_refs--;
    pthread_mutex_unlock(&lock);
    return done("nvmlShutdown", -1, NVML_SUCCESS);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt request issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request.";
    case 18: return "RM has detected an NVML/RM version mismatch.";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 22: return "The requested vgpu operation is not available on target device, because ECC is enabled";
    case 23: return "Ran out of critical resources, other than memory";
    case 24: return "Requested frequency is not supported";
    case 25: return "The provided version is invalid/unsupported";
    case 26: return "The requested functionality has been deprecated";
    case 27: return "The system is not ready for the request";
    case 28: return "The GPU was not found";
    case 29: return "The requested operation is invalid in the current state";
    case 30: return "The requested reset type is not supported";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length) {
    if (!initialized()) return done("nvmlSystemGetDriverVersion", -1, NVML_ERROR_UNINITIALIZED);
    ENTER("nvmlSystemGetDriverVersion", -1);
    return copy_string("nvmlSystemGetDriverVersion", -1, version, length, "580.159.04-sim");
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    ENTER("nvmlSystemGetNVMLVersion", -1);
    return copy_string("nvmlSystemGetNVMLVersion", -1, version, length, "13.580.159.04-sim");
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized()) return done("nvmlDeviceGetCount_v2", -1, NVML_ERROR_UNINITIALIZED);
    ENTER("nvmlDeviceGetCount_v2", -1);
    if (!count) return done("nvmlDeviceGetCount_v2", -1, NVML_ERROR_INVALID_ARGUMENT);
    *count = (unsigned)S.gpu_count;
    return done("nvmlDeviceGetCount_v2", -1, NVML_SUCCESS);
}

/* A cold GPU's first look-up takes attachDelayMs, outside the lock so GPUs attach in parallel. */
static nvmlReturn_t hand_out(const char *call, int index, nvmlDevice_t *device) {
    ENTER(call, index);
    pthread_mutex_lock(&lock);
    int cold = !S.gpus[index].attached;
    S.gpus[index].attached = 1;
    long long delay = S.attach_delay_ms;
    pthread_mutex_unlock(&lock);
    if (cold && delay > 0) sleep_ms(delay);
    *device = &S.gpus[index];
    return done(call, index, NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    const char *call = "nvmlDeviceGetHandleByIndex_v2";
    if (!initialized()) return done(call, (int)index, NVML_ERROR_UNINITIALIZED);
    if (!device || index >= (unsigned)S.gpu_count) return done(call, (int)index, NVML_ERROR_INVALID_ARGUMENT);
    return hand_out(call, (int)index, device);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    const char *call = "nvmlDeviceGetHandleByUUID";
    if (!initialized()) return done(call, -1, NVML_ERROR_UNINITIALIZED);
    if (!uuid || !device) return done(call, -1, NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < S.gpu_count; i++)
        if (strcmp(S.gpus[i].uuid, uuid) == 0) return hand_out(call, i, device);
    return done(call, -1, NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device) {
    const char *call = "nvmlDeviceGetHandleByPciBusId_v2";
    unsigned domain, bus, dev;
    if (!initialized()) return done(call, -1, NVML_ERROR_UNINITIALIZED);
    if (!pciBusId || !device || !parse_bus_id(pciBusId, &domain, &bus, &dev))
        return done(call, -1, NVML_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < S.gpu_count; i++) {
        struct sim_gpu *g = &S.gpus[i];
        if (g->domain == domain && g->bus == bus && g->device == dev) return hand_out(call, i, device);
    }
    return done(call, -1, NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    DEVICE_CALL("nvmlDeviceGetUUID", device);
    return copy_string("nvmlDeviceGetUUID", gpu_, uuid, length, device->uuid);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    DEVICE_CALL("nvmlDeviceGetName", device);
    return copy_string("nvmlDeviceGetName", gpu_, name, length, device->name);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci) {
    DEVICE_CALL("nvmlDeviceGetPciInfo_v3", device);
    if (!pci) return done("nvmlDeviceGetPciInfo_v3", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.0", device->domain, device->bus,
             device->device);
    pci->domain = device->domain;
    pci->bus = device->bus;
    pci->device = device->device;
    pci->pciDeviceId = device->pciDeviceId;
    pci->pciSubSystemId = device->pciSubSystemId;
    snprintf(pci->busId, sizeof pci->busId, "%s", device->busId);
    return done("nvmlDeviceGetPciInfo_v3", gpu_, NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber) {
    DEVICE_CALL("nvmlDeviceGetMinorNumber", device);
    if (!minorNumber) return done("nvmlDeviceGetMinorNumber", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    *minorNumber = device->minor;
    return done("nvmlDeviceGetMinorNumber", gpu_, NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, int *mode) {
    DEVICE_CALL("nvmlDeviceGetPersistenceMode", device);
    if (!mode) return done("nvmlDeviceGetPersistenceMode", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    pthread_mutex_lock(&lock);
    state_read();
    *mode = device->persistence;
    pthread_mutex_unlock(&lock);
    return done("nvmlDeviceGetPersistenceMode", gpu_, NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceSetPersistenceMode(nvmlDevice_t device, int mode) {
    DEVICE_CALL("nvmlDeviceSetPersistenceMode", device);
    if (mode != 0 && mode != 1) return done("nvmlDeviceSetPersistenceMode", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    if (S.set_delay_ms > 0) sleep_ms(S.set_delay_ms);
    pthread_mutex_lock(&lock);
    state_read();
    device->persistence = mode;
    state_write();
    pthread_mutex_unlock(&lock);
    return done("nvmlDeviceSetPersistenceMode", gpu_, NVML_SUCCESS);
}

/* ---- events ---------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set) {
    if (!initialized()) return done("nvmlEventSetCreate", -1, NVML_ERROR_UNINITIALIZED);
    ENTER("nvmlEventSetCreate", -1);
    if (!set) return done("nvmlEventSetCreate", -1, NVML_ERROR_INVALID_ARGUMENT);
    pthread_mutex_lock(&lock);
    for (int i = 0; i < MAX_SETS; i++) {
        if (!S.sets[i].used) {
            memset(&S.sets[i], 0, sizeof S.sets[i]);
            S.sets[i].used = 1;
            *set = &S.sets[i];
            pthread_mutex_unlock(&lock);
            return done("nvmlEventSetCreate", -1, NVML_SUCCESS);
        }
    }
    pthread_mutex_unlock(&lock);
    return done("nvmlEventSetCreate", -1, 20 /* MEMORY */);
}

static int valid_set(nvmlEventSet_t set) {
    return set >= &S.sets[0] && set < &S.sets[MAX_SETS] && set->used;
}

static const unsigned long long supported_events = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x100 | 0x4000 | 0x8000;

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *types) {
    DEVICE_CALL("nvmlDeviceGetSupportedEventTypes", device);
    if (!types) return done("nvmlDeviceGetSupportedEventTypes", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    *types = supported_events;
    return done("nvmlDeviceGetSupportedEventTypes", gpu_, NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long types, nvmlEventSet_t set) {
    DEVICE_CALL("nvmlDeviceRegisterEvents", device);
    if (!valid_set(set)) return done("nvmlDeviceRegisterEvents", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    if (types & ~supported_events) return done("nvmlDeviceRegisterEvents", gpu_, NVML_ERROR_NOT_SUPPORTED);
    pthread_mutex_lock(&lock);
    set->registered[gpu_] |= types;
    pthread_mutex_unlock(&lock);
    return done("nvmlDeviceRegisterEvents", gpu_, NVML_SUCCESS);
}

/* Delivers configured events once their time has come, to the first set that waits for them. */
EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    const char *call = "nvmlEventSetWait_v2";
    if (!initialized()) return done(call, -1, NVML_ERROR_UNINITIALIZED);
    if (!valid_set(set) || !data) return done(call, -1, NVML_ERROR_INVALID_ARGUMENT);
    ENTER(call, -1);
    /* Blocks as the real wait does (no polling): until the next configured event is due or
     * the timeout passes, on a condition variable nothing signals but a reset. */
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    long long deadline_ms = deadline.tv_sec * 1000LL + deadline.tv_nsec / 1000000LL + timeoutms;
    pthread_mutex_lock(&lock);
    unsigned long generation = gate_generation;
    for (;;) {
        long long elapsed = ms_since_first_init();
        long long next_due = -1;
        for (int i = 0; i < S.event_count; i++) {
            struct event *e = &S.events[i];
            if (e->delivered || e->gpu < 0 || e->gpu >= S.gpu_count) continue;
            if (!(set->registered[e->gpu] & e->type)) continue;
            if (e->afterMs > elapsed) {
                if (next_due < 0 || e->afterMs < next_due) next_due = e->afterMs;
                continue;
            }
            e->delivered = 1;
            memset(data, 0, sizeof *data);
            data->device = &S.gpus[e->gpu];
            data->eventType = e->type;
            data->eventData = e->data;
            data->gpuInstanceId = 0xffffffffu;
            data->computeInstanceId = 0xffffffffu;
            pthread_mutex_unlock(&lock);
            return done(call, e->gpu, NVML_SUCCESS);
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long now_ms = now.tv_sec * 1000LL + now.tv_nsec / 1000000LL;
        long long wake_ms = deadline_ms;
        if (next_due >= 0 && now_ms + (next_due - elapsed) < wake_ms) wake_ms = now_ms + (next_due - elapsed);
        if (now_ms >= deadline_ms || generation != gate_generation) {
            pthread_mutex_unlock(&lock);
            return done(call, -1, NVML_ERROR_TIMEOUT);
        }
        struct timespec until = {wake_ms / 1000, (wake_ms % 1000) * 1000000L};
        pthread_cond_timedwait(&wait_changed, &lock, &until);
    }
}

EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set) {
    if (!initialized()) return done("nvmlEventSetFree", -1, NVML_ERROR_UNINITIALIZED);
    if (!valid_set(set)) return done("nvmlEventSetFree", -1, NVML_ERROR_INVALID_ARGUMENT);
    ENTER("nvmlEventSetFree", -1);
    pthread_mutex_lock(&lock);
    set->used = 0;
    pthread_mutex_unlock(&lock);
    return done("nvmlEventSetFree", -1, NVML_SUCCESS);
}

/* ---- test hook (not part of NVML) ---------------------------------------------- */

/* ---- the kernel driver's ioctls, for the stand-in device nodes ------------------- */

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

/* Blocks until `count` calls wait at a gate (faults with "gate": true), or `timeoutMs`
 * passes; returns how many wait. Called on a pool thread (koffi's async), never the loop. */
EXPORT int gpuPersistdSimAwaitGated(int count, int timeoutMs) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += timeoutMs / 1000;
    deadline.tv_nsec += (long)(timeoutMs % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&lock);
    while (S.gated < count) {
        if (pthread_cond_timedwait(&gate_changed, &lock, &deadline) == ETIMEDOUT) break;
    }
    int gated = S.gated;
    pthread_mutex_unlock(&lock);
    return gated;
}

/* Lets every call waiting at a gate go on, and every later one pass it. */
EXPORT void gpuPersistdSimOpenGate(void) {
    pthread_mutex_lock(&lock);
    S.gate_open = 1;
    pthread_cond_broadcast(&gate_changed);
    pthread_mutex_unlock(&lock);
}

/* Forgets all state so the next nvmlInit re-reads the configuration, as a new process
 * would. Only for tests that load the simulator in-process; no call may be in flight. */
EXPORT void gpuPersistdSimReset(void) {
    pthread_mutex_lock(&lock);
    gate_generation++; /* nothing may stay blocked past a reset */
    pthread_cond_broadcast(&gate_changed);
    pthread_cond_broadcast(&wait_changed);
    if (S.call_log_fd >= 0) close(S.call_log_fd);
    memset(&S, 0, sizeof S);
    S.call_log_fd = -1;
    pthread_mutex_unlock(&lock);
}
