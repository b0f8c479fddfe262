/* Simulated libnvidia-ml: the read-only telemetry the daemon shows per GPU (power draw,
 * P-state, the energy counter) and the recovery action NVML reports through
 * nvmlDeviceGetFieldValues, with NVML's signatures and nvmlFieldValue_t's layout. None of
 * these is routed to the persistence socket by real NVML. */
#include "sim.h"

#include <string.h>
#include <sys/time.h>

#include "json.h"

/* nvml.h: the field id, and the value types of nvmlValue_t. */
#define NVML_FI_DEV_GET_GPU_RECOVERY_ACTION 230
#define NVML_VALUE_TYPE_UNSIGNED_INT 1

typedef union {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

/* As measured on the H100 here: 74.4 W idle in P0, held or not. */
void telemetry_defaults(struct sim_gpu *g) {
    g->power_mw = 74400;
    g->pstate = 0;
    g->energy_mj = 0;
    g->recovery_action = 0;
}

static long long num_or(const struct json *obj, const char *key, long long fallback) {
    const struct json *v = json_get(obj, key);
    return v && v->kind == JSON_NUMBER ? v->number : fallback;
}

void telemetry_config(struct sim_gpu *g, const struct json *gpu) {
    g->power_mw = (unsigned)num_or(gpu, "powerMw", g->power_mw);
    g->pstate = (int)num_or(gpu, "pstate", g->pstate);
    g->energy_mj = (unsigned long long)num_or(gpu, "energyMj", (long long)g->energy_mj);
    g->recovery_action = (int)num_or(gpu, "recoveryAction", g->recovery_action);
}

void telemetry_schedule(const struct json *root) {
    const struct json *steps = json_get(root, "recoveries");
    for (const struct json *st = steps ? steps->child : NULL; st && S.recovery_step_count < MAX_RECOVERY_STEPS;
         st = st->next) {
        struct recovery_step *x = &S.recovery_steps[S.recovery_step_count++];
        x->gpu = (int)num_or(st, "gpu", 0);
        x->action = (int)num_or(st, "action", 0);
        x->afterMs = num_or(st, "afterMs", 0);
        x->applied = 0;
    }
}

/* The recovery action now: steps that came due are applied in time order. Lock held. */
static int recovery_action_locked(int gpu) {
    long long now = ms_since_first_init();
    for (;;) {
        struct recovery_step *next = NULL;
        for (int i = 0; i < S.recovery_step_count; i++) {
            struct recovery_step *x = &S.recovery_steps[i];
            if (x->gpu == gpu && !x->applied && x->afterMs <= now && (!next || x->afterMs < next->afterMs)) next = x;
        }
        if (!next) break;
        next->applied = 1;
        S.gpus[gpu].recovery_action = next->action;
    }
    return S.gpus[gpu].recovery_action;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    DEVICE_CALL("nvmlDeviceGetPowerUsage", device);
    if (!power) return done("nvmlDeviceGetPowerUsage", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    pthread_mutex_lock(&lock);
    *power = device->power_mw;
    pthread_mutex_unlock(&lock);
    return done("nvmlDeviceGetPowerUsage", gpu_, NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t device, int *pState) {
    DEVICE_CALL("nvmlDeviceGetPerformanceState", device);
    if (!pState) return done("nvmlDeviceGetPerformanceState", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    pthread_mutex_lock(&lock);
    *pState = device->pstate;
    pthread_mutex_unlock(&lock);
    return done("nvmlDeviceGetPerformanceState", gpu_, NVML_SUCCESS);
}

/* A counter since the driver loaded (here: the first nvmlInit), growing at the power draw. */
EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    DEVICE_CALL("nvmlDeviceGetTotalEnergyConsumption", device);
    if (!energy) return done("nvmlDeviceGetTotalEnergyConsumption", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    pthread_mutex_lock(&lock);
    *energy = device->energy_mj + (unsigned long long)device->power_mw * (unsigned long long)ms_since_first_init() / 1000ULL;
    pthread_mutex_unlock(&lock);
    return done("nvmlDeviceGetTotalEnergyConsumption", gpu_, NVML_SUCCESS);
}

/* Each field answers on its own (nvmlReturn); only the recovery action is known here. */
EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values) {
    DEVICE_CALL("nvmlDeviceGetFieldValues", device);
    if (!values || valuesCount < 0) return done("nvmlDeviceGetFieldValues", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    pthread_mutex_lock(&lock);
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *v = &values[i];
        v->timestamp = (long long)tv.tv_sec * 1000000LL + tv.tv_usec;
        v->latencyUsec = 0;
        memset(&v->value, 0, sizeof v->value);
        int action = v->fieldId == NVML_FI_DEV_GET_GPU_RECOVERY_ACTION ? recovery_action_locked(gpu_) : -1;
        if (action < 0) {
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            continue;
        }
        v->nvmlReturn = NVML_SUCCESS;
        v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
        v->value.uiVal = (unsigned)action;
    }
    pthread_mutex_unlock(&lock);
    return done("nvmlDeviceGetFieldValues", gpu_, NVML_SUCCESS);
}

/* Test hook: the driver now reports `action` for the GPU (0 clears it, -1: not reported). */
EXPORT void gpuPersistdSimSetRecoveryAction(int gpu, int action) {
    pthread_mutex_lock(&lock);
    if (gpu >= 0 && gpu < S.gpu_count) S.gpus[gpu].recovery_action = action;
    pthread_mutex_unlock(&lock);
}
