/* Simulated libnvidia-ml: state file, the legacy persistence flag as the kernel would keep it. */
#include "sim.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

void state_read(void) {
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

void state_write(void) {
    if (!S.state_path[0]) return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%d.tmp", S.state_path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    for (int i = 0; i < S.gpu_count; i++) fprintf(f, "%s %d\n", S.gpus[i].uuid, S.gpus[i].persistence);
    fclose(f);
    rename(tmp, S.state_path);
}
