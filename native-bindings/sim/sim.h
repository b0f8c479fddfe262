/* Simulated libnvidia-ml: NVML's functions that gpu-persistd uses, with NVML's real
 * signatures, return codes and buffer rules, configurable GPUs, latencies and fault
 * injection. Loaded through the same koffi binding as the real library, so tests
 * exercise the real FFI path. The configuration format is documented in
 * docs/development.md ("The GPU simulator").
 *
 * This header is private to the simulator's parts (the .c files here): the NVML types they
 * implement, the state they share and their common helpers. It is not NVML's nvml.h. */
#ifndef SIM_H
#define SIM_H

#define _GNU_SOURCE
#include <pthread.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

struct json;

typedef int nvmlReturn_t;
enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_UNKNOWN = 999,
};

#define MAX_GPUS 256
#define MAX_FAULTS 64
#define MAX_EVENTS 256
#define MAX_SETS 64
#define MAX_RECOVERY_STEPS 64
/* An Xid event's type, and the Xid of a GPU that fell off the bus. */
#define EVENT_XID 0x8ULL
#define XID_FALLEN_OFF_THE_BUS 79

struct sim_gpu {
    int index;
    char uuid[96];
    char name[96];
    char busId[32];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId, minor;
    int persistence;
    int attached; /* first handle look-up done in this process */
    int attach_fd; /* with attachDir: the session's fd on the stand-in node, as real NVML's attach keeps one; -1 when none */
    /* NV_ESC_NUMA_INFO's answer: coherent memory (GH200) has nid >= 0 and a status other than 0. */
    int numa_nid, numa_status, numa_auto_online;
    unsigned long long numa_mem_size;
    /* telemetry.c: power draw (mW), P-state, the energy counter at the first nvmlInit (mJ),
     * and NVML_FI_DEV_GET_GPU_RECOVERY_ACTION's value (-1: the driver does not report it). */
    unsigned power_mw;
    int pstate;
    unsigned long long energy_mj;
    int recovery_action;
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

/* recoveries[]: GPU `gpu` reports `action` from `afterMs` on (telemetry.c). */
struct recovery_step {
    int gpu, action, applied;
    long long afterMs;
};

struct event_set {
    int used;
    unsigned long long registered[MAX_GPUS];
};
typedef struct event_set *nvmlEventSet_t;

extern pthread_mutex_t lock;
extern pthread_cond_t gate_changed;
extern unsigned long gate_generation; /* outlives resets: a reset frees every gated call */
/* Event waits sleep on this (CLOCK_MONOTONIC); only a reset signals it. */
extern pthread_cond_t wait_changed;

struct sim_state {
    int loaded;
    char load_error[512];
    int gpu_count;
    struct sim_gpu gpus[MAX_GPUS];
    struct fault faults[MAX_FAULTS];
    int fault_count;
    struct event events[MAX_EVENTS];
    int event_count;
    struct event_set sets[MAX_SETS];
    struct recovery_step recovery_steps[MAX_RECOVERY_STEPS];
    int recovery_step_count;
    long long attach_delay_ms, set_delay_ms;
    char attach_dir[4096]; /* where the stand-in nodes are: the session then holds one fd on each GPU's node */
    char device_dir[4096]; /* where the stand-in nodes are, for gpuPersistdSimGpuState (attachDir when unset) */
    char persistence_socket[108]; /* where persistence calls are routed when a socket is there ("" never) */
    char driver_version[64]; /* the user-space driver's (this library's) version */
    char module_version[64]; /* the loaded kernel module's: differs after an upgrade without a reboot */
    char state_path[4096];
    int call_log_fd;
    int init_refs;
    struct timespec first_init;
    int init_seen;
    int gate_open;
    int gated; /* calls blocked at the gate now */
};
extern struct sim_state S;

/* shared.c */
long long ms_since_first_init(void);
void sleep_ms(long long ms);

/* identities.c */
void default_identity(struct sim_gpu *g, int index, int dgx);
int parse_bus_id(const char *s, unsigned *domain, unsigned *bus, unsigned *device);

/* state-file.c */
void state_read(void);
void state_write(void);

/* routing.c: a persistence call through the daemon's socket, as real NVML makes it. */
enum route {
    ROUTE_NONE,     /* no socket there, or the connection refused: NVML asks the kernel */
    ROUTE_CLOSED,   /* connected, then closed with no answer: NVML falls back to the kernel */
    ROUTE_ANSWERED, /* *status is the NvPdStatus; for Get (proc 2) *answer is the mode */
};
enum route route_persistence(const struct sim_gpu *g, int proc, int mode, int *status, int *answer);

/* config.c */
void load_config(void);

/* telemetry.c: the per-GPU telemetry keys of the configuration (root: the whole file) */
void telemetry_defaults(struct sim_gpu *g);
void telemetry_config(struct sim_gpu *g, const struct json *gpu);
void telemetry_schedule(const struct json *root);

/* calls.c */
nvmlReturn_t done(const char *call, int gpu, nvmlReturn_t ret);
/* Returns 1 with *ret set when a fault decides the call's result; *nv_status (if given) gets
 * the fault's NV_STATUS, or stays as it was. */
int inject_nv(const char *call, int gpu, nvmlReturn_t *ret, unsigned *nv_status);
int inject(const char *call, int gpu, nvmlReturn_t *ret);
int initialized(void);
int gpu_of(nvmlDevice_t d);
/* Whether the GPU fell off the bus: an Xid 79 event configured for it is due. Lock held. */
int gpu_lost_locked(int gpu);
/* The session's attach: an fd on every GPU's stand-in node while NVML is initialised (attachDir). */
void attach_all(void);
void detach_all(void);
int gpu_lost(int gpu);

#define ENTER(call, gpu)                                                                                   \
    do {                                                                                                   \
        nvmlReturn_t injected_;                                                                            \
        if (inject(call, gpu, &injected_)) return done(call, gpu, injected_);                             \
    } while (0)

/* Common prologue of every per-device call. */
#define DEVICE_CALL(call, dev)                                                                              \
    int gpu_ = gpu_of(dev);                                                                                \
    if (!initialized()) return done(call, gpu_, NVML_ERROR_UNINITIALIZED);                                \
    if (gpu_ < 0) return done(call, gpu_, NVML_ERROR_INVALID_ARGUMENT);                                   \
    ENTER(call, gpu_);                                                                                     \
    attach_all();                                                                                          \
    if (gpu_lost(gpu_)) return done(call, gpu_, NVML_ERROR_GPU_IS_LOST)

#endif
