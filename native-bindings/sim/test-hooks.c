/* Simulated libnvidia-ml: hooks for in-process tests, not part of NVML. */
#include "sim.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

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
