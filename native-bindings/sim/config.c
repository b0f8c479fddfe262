/* Simulated libnvidia-ml: configuration (docs/development.md, "The GPU simulator"). */
#include "sim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

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
            telemetry_config(d, g);
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
    str_into(root, "attachDir", S.attach_dir, sizeof S.attach_dir);
    str_into(root, "deviceDir", S.device_dir, sizeof S.device_dir);
    str_into(root, "persistenceSocket", S.persistence_socket, sizeof S.persistence_socket);
    str_into(root, "driverVersion", S.driver_version, sizeof S.driver_version);
    str_into(root, "moduleVersion", S.module_version, sizeof S.module_version);
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
    telemetry_schedule(root);
    json_free(root);
    return 1;
}

/* Environment (set by gpu-persistd's --simulate) overrides the file's GPU count. */
void load_config(void) {
    if (S.loaded) return;
    S.loaded = 1;
    snprintf(S.driver_version, sizeof S.driver_version, "580.159.04-sim");
    const char *profile = getenv("GPU_PERSISTD_SIM_PROFILE");
    int dgx = profile && strcmp(profile, "dgx-h100") == 0;
    if (profile && profile[0] && !dgx)
        snprintf(S.load_error, sizeof S.load_error, "unknown profile '%s' (known: dgx-h100)", profile);
    S.gpu_count = dgx ? 8 : 2;
    /* Real NVML's path; --simulate points it at the daemon's runtime directory. */
    const char *socket_path = getenv("GPU_PERSISTD_SIM_PERSISTENCE_SOCKET");
    snprintf(S.persistence_socket, sizeof S.persistence_socket, "%s",
             socket_path ? socket_path : "/var/run/nvidia-persistenced/socket");
    const char *device_dir = getenv("GPU_PERSISTD_SIM_DEVICE_DIR");
    if (device_dir) snprintf(S.device_dir, sizeof S.device_dir, "%s", device_dir);
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
    if (!S.device_dir[0]) snprintf(S.device_dir, sizeof S.device_dir, "%s", S.attach_dir);
    /* The legacy flags outlive a process, as the kernel keeps them: beside the stand-ins. */
    if (!S.state_path[0] && S.device_dir[0] && strlen(S.device_dir) < sizeof S.state_path - 32)
        snprintf(S.state_path, sizeof S.state_path, "%.4000s/legacy-persistence", S.device_dir);
    if (!S.module_version[0]) snprintf(S.module_version, sizeof S.module_version, "%s", S.driver_version);
    state_read();
}
