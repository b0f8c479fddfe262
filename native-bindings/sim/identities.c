/* Simulated libnvidia-ml: identities. */
#include "sim.h"

#include <stdio.h>
#include <string.h>

/* DGX H100: eight H100 SXM5 80GB at the bus addresses of the real system board. */
static const unsigned dgx_h100_bus[8] = {0x18, 0x2a, 0x3a, 0x5d, 0x9a, 0xab, 0xba, 0xdb};

void default_identity(struct sim_gpu *g, int index, int dgx) {
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
    g->attach_fd = -1;
    snprintf(g->busId, sizeof g->busId, "%08X:%02X:%02X.0", g->domain, g->bus, g->device);
    telemetry_defaults(g);
}

int parse_bus_id(const char *s, unsigned *domain, unsigned *bus, unsigned *device) {
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
