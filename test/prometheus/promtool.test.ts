// The shipped alert rules and the daemon's metrics, checked by Prometheus' own promtool:
// `check rules`, `test rules` (gpu-persistd.rules.test.yml beside this file, cases for every
// alert) and `check metrics` (naming, units, help). promtool comes with Debian's `prometheus`:
// test/run-all.sh installs it when run as root; without it the suite fails, naming the line.
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { DaemonMetrics } from "../../src/metrics/daemon-metrics.js";
import type { GpuStatus } from "../../src/status/daemon-status.js";
import { ROOT } from "../helpers/daemon.js";

const RULES = join(ROOT, "packaging/prometheus/gpu-persistd.rules.yml");
const RULE_TESTS = join(ROOT, "test/prometheus/gpu-persistd.rules.test.yml");

beforeAll(() => {
  if (spawnSync("sh", ["-c", "command -v promtool"]).status !== 0) {
    throw new Error("promtool is missing: apt-get install -y --no-install-recommends prometheus");
  }
});

function promtool(args: string[], input?: string) {
  const result = spawnSync("promtool", args, { encoding: "utf8", input, cwd: join(ROOT, "test/prometheus") });
  return { code: result.status, output: `${result.stdout}${result.stderr}` };
}

describe("Prometheus alert rules", () => {
  it("pass promtool check rules", () => {
    const result = promtool(["check", "rules", RULES]);
    expect(result.output).toContain("SUCCESS");
    expect(result.code, result.output).toBe(0);
  });

  it("pass their promtool test rules cases", () => {
    const result = promtool(["test", "rules", RULE_TESTS]);
    expect(result.code, result.output).toBe(0);
  });
});

describe("the daemon's metrics", () => {
  it("pass promtool check metrics, every family present", () => {
    const gpu: GpuStatus = {
      index: 0,
      uuid: "GPU-9e3779b9-6ef3-4f37-86ef-c5e6902c0000",
      name: "NVIDIA GH200 480GB",
      pciBusId: "00000000:18:00.0",
      minor: 0,
      state: "held",
      claims: [],
      selected: true,
      held: true,
      lost: false,
      persistence: "enabled",
      xids: { "13": 2, "79": 1 },
      error: null,
      errorCode: null,
      uvm: "registered",
      uvmError: null,
      numa: { nid: 1, status: "online", autoOnline: true, memSizeBytes: 1 << 30 },
      powerWatts: 78.4,
      pstate: 0,
      energyJoules: 28224,
      initialisation: "paid",
      initSeconds: 2.1,
      recoveryAction: "gpu-reset",
    };
    const metrics = new DaemonMetrics();
    metrics.recordBringUp(0.25);
    metrics.observeHealthRound(0.002, true, 2);
    metrics.observeHealthRound(12, false, 2);
    const text = metrics.render({
      version: "0.1.0",
      devices: [gpu, { ...gpu, index: 1, state: "lost", held: false, lost: true, uvm: "failed" }],
      rpcRequests: new Map([["get_persistence_mode", new Map([["ok", 3]])]]),
      nvmlDegraded: { libraryVersion: "580.95.05", moduleVersion: "580.159.04" },
    });
    for (const family of [
      "gpu_persistd_xid_events_total",
      "gpu_persistd_gpu_numa_online",
      "gpu_persistd_rpc",
      "gpu_persistd_nvml_degraded",
      "gpu_persistd_gpu_power_watts",
      "gpu_persistd_gpu_performance_state",
      "gpu_persistd_gpu_energy_joules_total",
      "gpu_persistd_gpu_initialisation_seconds",
      "gpu_persistd_gpu_recovery_action",
    ]) {
      expect(text).toContain(family);
    }
    const result = promtool(["check", "metrics"], text);
    expect(result.output).toBe("");
    expect(result.code).toBe(0);
  });
});
