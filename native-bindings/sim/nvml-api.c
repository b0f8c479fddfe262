/* Simulated libnvidia-ml: the NVML API. */
#include "sim.h"

#include <stdio.h>
#include <string.h>

static nvmlReturn_t copy_string(const char *call, int gpu, char *buf, unsigned len, const char *value) {
    if (!buf) return done(call, gpu, NVML_ERROR_INVALID_ARGUMENT);
    if (strlen(value) + 1 > len) return done(call, gpu, NVML_ERROR_INSUFFICIENT_SIZE);
    memcpy(buf, value, strlen(value) + 1);
    return done(call, gpu, NVML_SUCCESS);
}

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
    attach_all();
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
    int last = S.init_refs == 0;
    pthread_mutex_unlock(&lock);
    if (last) detach_all();
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
    return copy_string("nvmlSystemGetDriverVersion", -1, version, length, S.driver_version);
}

/* Answers before nvmlInit too (the library knows its own version), as the daemon needs to
 * name it when nvmlInit fails with a version mismatch. */
EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length) {
    pthread_mutex_lock(&lock);
    load_config();
    char nvml_version[80];
    snprintf(nvml_version, sizeof nvml_version, "13.%s", S.driver_version);
    pthread_mutex_unlock(&lock);
    ENTER("nvmlSystemGetNVMLVersion", -1);
    return copy_string("nvmlSystemGetNVMLVersion", -1, version, length, nvml_version);
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

/* The legacy flag combined with the daemon's answer, as real NVML reports it. */
EXPORT nvmlReturn_t nvmlDeviceGetPersistenceMode(nvmlDevice_t device, int *mode) {
    DEVICE_CALL("nvmlDeviceGetPersistenceMode", device);
    if (!mode) return done("nvmlDeviceGetPersistenceMode", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    int status = 0, answer = 0;
    int answered = route_persistence(device, 2, 0, &status, &answer) == ROUTE_ANSWERED && status == 0;
    pthread_mutex_lock(&lock);
    state_read();
    *mode = device->persistence || (answered && answer == 1);
    pthread_mutex_unlock(&lock);
    return done("nvmlDeviceGetPersistenceMode", gpu_, NVML_SUCCESS);
}

/* With a daemon's socket there, the daemon decides (NvPdStatus PERMISSIONS 7 -> NO_PERMISSION);
 * without one, or when it closes unanswered (assumed as Get's fallback: no setter may be tried
 * on the GPU machine), the kernel's legacy flag is set. */
EXPORT nvmlReturn_t nvmlDeviceSetPersistenceMode(nvmlDevice_t device, int mode) {
    DEVICE_CALL("nvmlDeviceSetPersistenceMode", device);
    if (mode != 0 && mode != 1) return done("nvmlDeviceSetPersistenceMode", gpu_, NVML_ERROR_INVALID_ARGUMENT);
    int status = 0, answer = 0;
    if (route_persistence(device, 1, mode, &status, &answer) == ROUTE_ANSWERED) {
        nvmlReturn_t ret = status == 0 ? NVML_SUCCESS : status == 7 ? NVML_ERROR_NO_PERMISSION : NVML_ERROR_UNKNOWN;
        return done("nvmlDeviceSetPersistenceMode", gpu_, ret);
    }
    if (S.set_delay_ms > 0) sleep_ms(S.set_delay_ms);
    pthread_mutex_lock(&lock);
    state_read();
    device->persistence = mode;
    state_write();
    pthread_mutex_unlock(&lock);
    return done("nvmlDeviceSetPersistenceMode", gpu_, NVML_SUCCESS);
}
