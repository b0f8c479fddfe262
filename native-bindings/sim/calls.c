/* Simulated libnvidia-ml: per-call bookkeeping, fault injection and the call log. */
#include "sim.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

nvmlReturn_t done(const char *call, int gpu, nvmlReturn_t ret) {
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

int inject_nv(const char *call, int gpu, nvmlReturn_t *ret, unsigned *nv_status) {
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

int inject(const char *call, int gpu, nvmlReturn_t *ret) { return inject_nv(call, gpu, ret, NULL); }

int initialized(void) {
    pthread_mutex_lock(&lock);
    int refs = S.init_refs;
    pthread_mutex_unlock(&lock);
    return refs > 0;
}

int gpu_of(nvmlDevice_t d) {
    if (d < &S.gpus[0] || d >= &S.gpus[S.gpu_count]) return -2;
    return d->index;
}
