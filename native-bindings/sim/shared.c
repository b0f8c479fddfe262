/* Simulated libnvidia-ml: the state every part shares, and its clock helpers. */
#include "sim.h"

#include <errno.h>

pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
pthread_cond_t gate_changed = PTHREAD_COND_INITIALIZER;
unsigned long gate_generation;
pthread_cond_t wait_changed;
__attribute__((constructor)) static void init_wait_changed(void) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&wait_changed, &attr);
}
struct sim_state S = {.call_log_fd = -1};

long long ms_since_first_init(void) {
    if (!S.init_seen) return 0;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - S.first_init.tv_sec) * 1000LL + (now.tv_nsec - S.first_init.tv_nsec) / 1000000LL;
}

void sleep_ms(long long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}
