// What gpu-persistd exports to Prometheus: per-GPU state, Xid counts, what holding a GPU
// costs and saves (power, energy, the initialisation paid), NVML's recovery action,
// health-check latency, bring-up duration and RPC requests. The daemon records into one instance; the exporters
// (metrics-listener.ts, metrics-textfile.ts) render it on demand.
import { NUMA_ONLINE, numaStatusName } from "../../native-bindings/nvidia-kernel.js";
import { recoveryActionValue } from "../health/recovery-action.js";
import type { GpuStatus } from "../status/daemon-status.js";
import { family, Histogram, type Labels } from "./prometheus-text.js";

export interface MetricsSnapshot {
  version: string;
  devices: GpuStatus[];
  /** Answered RPC calls by procedure and result. */
  rpcRequests: ReadonlyMap<string, ReadonlyMap<string, number>>;
  /** NVML's library and the loaded kernel module differ; null otherwise. */
  nvmlDegraded?: { libraryVersion: string | null; moduleVersion: string | null } | null;
}

/** Health rounds take a few ms on a healthy host; the top buckets catch a driver in trouble. */
const HEALTH_BUCKETS_SECONDS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class DaemonMetrics {
  readonly #startTimeSeconds = Date.now() / 1000;
  readonly #healthDuration = new Histogram(HEALTH_BUCKETS_SECONDS);
  readonly #healthRounds = { passed: 0, failed: 0 };
  #gpusChecked = 0;
  #bringUpSeconds: number | null = null;

  /** One health round: how long its checks took, whether all answered, and how many held GPUs it checked. */
  observeHealthRound(seconds: number, healthy: boolean, gpusChecked: number): void {
    this.#healthDuration.observe(seconds);
    this.#healthRounds[healthy ? "passed" : "failed"]++;
    this.#gpusChecked += gpusChecked;
  }

  recordBringUp(seconds: number): void {
    this.#bringUpSeconds = seconds;
  }

  render(snapshot: MetricsSnapshot): string {
    const gpuLabels = (d: GpuStatus): Labels => ({
      gpu: String(d.index),
      uuid: d.uuid,
      pci_bus_id: d.pciBusId,
      name: d.name,
    });
    const perGpu = (value: (d: GpuStatus) => number | null) =>
      snapshot.devices.flatMap((d) => {
        const v = value(d);
        return v === null ? [] : [{ labels: gpuLabels(d), value: v }];
      });
    const flag = (b: boolean) => (b ? 1 : 0);
    return [
      family("gpu_persistd_build_info", "gauge", "Always 1; the daemon's version as a label.", [
        { labels: { version: snapshot.version }, value: 1 },
      ]),
      family(
        "gpu_persistd_nvml_degraded",
        "gauge",
        "1 while NVML cannot start because its libraries and the loaded kernel module differ (reboot to fix); both versions as labels.",
        [
          {
            labels: {
              library_version: snapshot.nvmlDegraded?.libraryVersion ?? "",
              module_version: snapshot.nvmlDegraded?.moduleVersion ?? "",
            },
            value: snapshot.nvmlDegraded ? 1 : 0,
          },
        ],
      ),
      family("gpu_persistd_start_time_seconds", "gauge", "When the daemon started, in seconds since the epoch.", [
        { value: Math.round(this.#startTimeSeconds) },
      ]),
      family(
        "gpu_persistd_bring_up_duration_seconds",
        "gauge",
        "Time from start until every selected GPU was held or had failed.",
        this.#bringUpSeconds === null ? [] : [{ value: this.#bringUpSeconds }],
      ),
      family(
        "gpu_persistd_gpu_selected",
        "gauge",
        "1 when the GPU is chosen by the devices setting.",
        perGpu((d) => flag(d.selected)),
      ),
      family(
        "gpu_persistd_gpu_held",
        "gauge",
        "1 while gpu-persistd holds the GPU's device node open (the GPU stays initialised).",
        perGpu((d) => flag(d.held)),
      ),
      family(
        "gpu_persistd_gpu_persistence_mode",
        "gauge",
        "The GPU's persistence mode as NVML's clients read it (held by the daemon, or the driver's legacy flag): 1 enabled, 0 disabled (absent while unknown).",
        perGpu((d) => (d.persistence === "unknown" ? null : flag(d.persistence === "enabled"))),
      ),
      family(
        "gpu_persistd_gpu_uvm_registered",
        "gauge",
        "Under --uvm-persistence-mode: 1 while the GPU's UVM registration is held, 0 when it failed (absent when off).",
        perGpu((d) => (d.uvm === "off" ? null : flag(d.uvm === "registered"))),
      ),
      family(
        "gpu_persistd_gpu_numa_online",
        "gauge",
        "GPUs with coherent memory (GH200, GB200): 1 while the driver reports their NUMA memory online (absent for others).",
        perGpu((d) => (d.numa ? flag(d.numa.status === numaStatusName(NUMA_ONLINE)) : null)),
      ),
      family(
        "gpu_persistd_gpu_lost",
        "gauge",
        "1 once NVML reported the GPU lost (Xid 79 and kin); cleared only by a restart.",
        perGpu((d) => flag(d.lost)),
      ),
      family(
        "gpu_persistd_gpu_power_watts",
        "gauge",
        "Power draw of a held GPU as the last health round read it (absent where NVML does not report it).",
        perGpu((d) => d.powerWatts),
      ),
      family(
        "gpu_persistd_gpu_performance_state",
        "gauge",
        "Performance state of a held GPU: 0 for P0 (the highest) to 15 (absent where NVML does not report it).",
        perGpu((d) => d.pstate),
      ),
      family(
        "gpu_persistd_gpu_energy_joules_total",
        "counter",
        "Energy a GPU used since gpu-persistd held it; starts again at each hold (absent where NVML does not report it).",
        perGpu((d) => d.energyJoules),
      ),
      family(
        "gpu_persistd_gpu_initialisation_seconds",
        "gauge",
        "What the daemon's first attach of the GPU took: the driver's start-up that holding it saves the next client; 0 when it was already initialised (absent when not measured).",
        perGpu((d) => (d.initialisation === "unknown" ? null : (d.initSeconds ?? 0))),
      ),
      family(
        "gpu_persistd_gpu_recovery_action",
        "gauge",
        "NVML's recovery action for the GPU: 0 none, 1 GPU reset, 2 node reboot, 3 drain P2P, 4 drain and reset; its name as the action label (absent where the driver does not report it).",
        snapshot.devices.flatMap((d) =>
          d.recoveryAction === null
            ? []
            : [
                {
                  labels: { ...gpuLabels(d), action: d.recoveryAction },
                  value: recoveryActionValue(d.recoveryAction),
                },
              ],
        ),
      ),
      family(
        "gpu_persistd_xid_events_total",
        "counter",
        "Xid events seen since start, by GPU and Xid code.",
        snapshot.devices.flatMap((d) =>
          Object.entries(d.xids).map(([xid, count]) => ({ labels: { ...gpuLabels(d), xid }, value: count })),
        ),
      ),
      family(
        "gpu_persistd_health_check_duration_seconds",
        "histogram",
        "Duration of one health round: every held GPU checked at once (through NVML, or through its node while a GPU is released).",
        this.#healthDuration.samples(),
      ),
      family(
        "gpu_persistd_health_checks_total",
        "counter",
        "Health rounds by result: passed, or failed (a check hung; watchdog pings withheld).",
        Object.entries(this.#healthRounds).map(([result, value]) => ({ labels: { result }, value })),
      ),
      family(
        "gpu_persistd_health_gpu_checks_total",
        "counter",
        "Held GPUs checked by health rounds, one check per held GPU a round.",
        [{ labels: {}, value: this.#gpusChecked }],
      ),
      family(
        "gpu_persistd_rpc_requests_total",
        "counter",
        "Persistence RPC calls answered, by procedure and result.",
        [...snapshot.rpcRequests].flatMap(([procedure, results]) =>
          [...results].map(([result, value]) => ({ labels: { procedure, result }, value })),
        ),
      ),
    ].join("");
  }
}
