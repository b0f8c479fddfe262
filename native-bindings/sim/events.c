/* Simulated libnvidia-ml: events. */
#include "sim.h"

#include <string.h>

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
