// What holding a GPU costs and saves, and NVML's recovery action, in this process against the
// simulated libnvidia-ml: each health round reads power, P-state, energy and the recovery
// action through read-only calls (never the persistence mode, which real NVML routes to the
// daemon's own socket); NOT_SUPPORTED leaves a figure absent; a pending action is journalled,
// shown, exported and drained on; DRAIN_P2P drops the UVM registration.
import { describe, expect, it } from "vitest";
import { rpcBackend } from "../../src/daemon/rpc-adapter.js";
import { daemonStatus, metricsText } from "../../src/daemon/status-snapshot.js";
import { persistenceCostCheck, recoveryCheck } from "../../src/doctor/cost-checks.js";
import type { HealthMonitor } from "../../src/health/health-monitor.js";
import { healthVerdict } from "../../src/status/health-verdict.js";
import { fdsOn, InProcessFixture, ROOT, setRecoveryAction } from "../helpers/in-process.js";

const fixture = new InProcessFixture();

function healthOf(d: { context: { health: HealthMonitor | null } }): HealthMonitor {
  if (!d.context.health) throw new Error("no health loop: the daemon did not finish starting");
  return d.context.health;
}
const pci = (bus: number) => ({ domain: 0, bus, device: 0, function: 0 });
const TELEMETRY = [
  "nvmlDeviceGetPowerUsage",
  "nvmlDeviceGetPerformanceState",
  "nvmlDeviceGetTotalEnergyConsumption",
  "nvmlDeviceGetFieldValues",
];
const verdict = (d: Parameters<typeof daemonStatus>[0]) =>
  healthVerdict({ status: daemonStatus(d), drainReleased: false });

describe("the price and the benefit, per GPU", () => {
  it("a round reads power, P-state and energy since held; the first attach's cost is shown as paid", async () => {
    const d = fixture.daemon({
      gpus: [
        { powerMw: 78400, pstate: 0, energyMj: 9_000_000 },
        { powerMw: 74400, pstate: 2 },
      ],
      attachDelayMs: 150,
    });
    await d.daemon.run();
    const persistenceReads = d.scratch.callCount("nvmlDeviceGetPersistenceMode");
    expect(await healthOf(d).round()).toBe(true);
    expect(d.scratch.callCount("nvmlDeviceGetPersistenceMode")).toBe(persistenceReads);
    const [a, b] = daemonStatus(d.context).devices;
    expect(a).toMatchObject({ powerWatts: 78.4, pstate: 0, initialisation: "paid", recoveryAction: "none" });
    expect(b).toMatchObject({ powerWatts: 74.4, pstate: 2, initialisation: "paid", recoveryAction: "none" });
    // The counter stood at 9 MJ: only what was used since the hold counts.
    expect(a?.energyJoules).toBeGreaterThanOrEqual(0);
    expect(a?.energyJoules).toBeLessThan(9_000);
    expect(a?.initSeconds).toBeGreaterThanOrEqual(0.15);
    const text = metricsText(d.context);
    expect(text).toMatch(/^gpu_persistd_gpu_power_watts\{gpu="0",[^}]*\} 78\.4$/m);
    expect(text).toMatch(/^gpu_persistd_gpu_performance_state\{gpu="1",[^}]*\} 2$/m);
    expect(text).toMatch(/^gpu_persistd_gpu_energy_joules_total\{gpu="0",[^}]*\} [\d.e+-]+$/m);
    expect(text).toMatch(
      /^gpu_persistd_gpu_initialisation_seconds\{gpu="0",[^}]*\} (0\.1[5-9]|0\.[2-9]|[1-9])[\d.]*$/m,
    );
    expect(text).toMatch(/^gpu_persistd_gpu_recovery_action\{gpu="0",[^}]*,action="none"\} 0$/m);
    const cost = persistenceCostCheck(daemonStatus(d.context));
    expect(cost).toMatchObject({ ok: true, id: "persistence-cost" });
    expect(cost.detail).toContain("2 held GPU(s) draw 152.8 W now");
    expect(cost.detail).toMatch(/the first open cost GPU 0 0\.\d\d s, GPU 1 0\.\d\d s/);
  });

  it("a GPU that attaches at once was already initialised: nothing paid, 0 in the metric", async () => {
    const d = fixture.daemon({ gpus: 1 });
    await d.daemon.run();
    expect(daemonStatus(d.context).devices[0]).toMatchObject({
      initialisation: "already-initialised",
      initSeconds: null,
    });
    expect(metricsText(d.context)).toMatch(/^gpu_persistd_gpu_initialisation_seconds\{gpu="0",[^}]*\} 0$/m);
    expect(persistenceCostCheck(daemonStatus(d.context)).detail).toContain(
      "1 GPU(s) were already initialised at the daemon's first open",
    );
  });

  it("NOT_SUPPORTED leaves each figure absent, and is no health failure and no warning", async () => {
    const d = fixture.daemon({
      gpus: [{ recoveryAction: -1 }],
      faults: TELEMETRY.slice(0, 3).map((call) => ({ call, return: 3 })),
    });
    await d.daemon.run();
    expect(await healthOf(d).round()).toBe(true);
    expect(daemonStatus(d.context).devices[0]).toMatchObject({
      powerWatts: null,
      pstate: null,
      energyJoules: null,
      recoveryAction: null,
    });
    expect(d.messages().filter((m) => m.includes("health check:"))).toEqual([]);
    const text = metricsText(d.context);
    for (const family of ["power_watts", "performance_state", "energy_joules_total", "recovery_action"]) {
      expect(text).not.toMatch(new RegExp(`^gpu_persistd_gpu_${family}\\{`, "m"));
    }
    expect(persistenceCostCheck(daemonStatus(d.context)).detail).toContain("no power reading for them");
    expect(recoveryCheck(daemonStatus(d.context))).toMatchObject({
      ok: true,
      detail: expect.stringContaining("not reported"),
    });
  });

  it("another NVML error is logged once with the GPU, the round still answered", async () => {
    const d = fixture.daemon({ gpus: 2, faults: [{ call: "nvmlDeviceGetFieldValues", gpu: 1, return: 999 }] });
    await d.daemon.run();
    expect(await healthOf(d).round()).toBe(true);
    expect(await healthOf(d).round()).toBe(true);
    expect(
      d
        .messages()
        .filter((m) => m === "GPU 1: health check: NVML_ERROR_UNKNOWN: Unknown Error (nvmlDeviceGetFieldValues)"),
    ).toHaveLength(1);
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
  });

  it("a failing call hides nothing else: the other figures and the recovery action are still read and acted on", async () => {
    const d = fixture.daemon({ gpus: 2, faults: [{ call: "nvmlDeviceGetPowerUsage", gpu: 1, return: 999 }] });
    await d.daemon.run();
    setRecoveryAction(1, 1);
    expect(await healthOf(d).round()).toBe(true);
    expect(daemonStatus(d.context).devices[1]).toMatchObject({
      powerWatts: null,
      pstate: 0,
      recoveryAction: "gpu-reset",
    });
    expect(d.messages()).toContain("GPU 1: health check: NVML_ERROR_UNKNOWN: Unknown Error (nvmlDeviceGetPowerUsage)");
    expect(d.lines.filter((l) => l.recoveryAction === "gpu-reset")).toHaveLength(1);
  });

  it("asks nothing while the NVML session is closed (a GPU released), and forgets what it read of the released GPU", async () => {
    const d = fixture.daemon({ gpus: 2 }, {}, { attach: true });
    await d.daemon.run();
    await healthOf(d).round();
    expect(daemonStatus(d.context).devices[0]?.powerWatts).toBe(74.4);
    await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT);
    expect(d.context.session?.open).toBe(false);
    const calls = () => TELEMETRY.map((c) => d.scratch.callCount(c));
    const before = calls();
    expect(await healthOf(d).round()).toBe(true);
    expect(calls()).toEqual(before);
    expect(daemonStatus(d.context).devices[0]).toMatchObject({ powerWatts: null, pstate: null, energyJoules: null });
    // The held one keeps its last reading until the session is open again.
    expect(daemonStatus(d.context).devices[1]?.powerWatts).toBe(74.4);
  });
});

describe("NVML's recovery action, acted on", () => {
  it("a GPU reset asked: journalled once with the GPU's fields and the command, in status, metrics and the drain reason; cleared: healthy again", async () => {
    const d = fixture.daemon({ gpus: 2 });
    await d.daemon.run();
    expect(await healthOf(d).round()).toBe(true);
    setRecoveryAction(1, 1);
    expect(await healthOf(d).round()).toBe(true);
    expect(await healthOf(d).round()).toBe(true);
    const logged = d.lines.filter((l) => l.recoveryAction === "gpu-reset");
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({
      level: 50,
      gpuIndex: 1,
      gpuPciBusId: "00000000:07:00.0",
      msg: "NVML reports recovery action gpu-reset: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1",
    });
    expect(daemonStatus(d.context).devices[1]?.recoveryAction).toBe("gpu-reset");
    expect(metricsText(d.context)).toMatch(/^gpu_persistd_gpu_recovery_action\{gpu="1",[^}]*,action="gpu-reset"\} 1$/m);
    expect(verdict(d.context)).toEqual({
      healthy: false,
      reason:
        "gpu-persistd: GPU 1 00000000:07:00.0 recovery action gpu-reset: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1",
    });
    expect(recoveryCheck(daemonStatus(d.context))).toMatchObject({
      ok: false,
      fix: "GPU 1: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1",
    });
    setRecoveryAction(1, 0);
    expect(await healthOf(d).round()).toBe(true);
    expect(d.messages()).toContain("GPU 1: recovery action cleared: the driver reports none");
    expect(verdict(d.context).healthy).toBe(true);
  });

  it("DRAIN_P2P drops the GPU's UVM registration and keeps the GPU held; the next hold registers again", async () => {
    const d = fixture.daemon({ gpus: 2 }, { uvmPersistenceMode: true });
    await d.daemon.run();
    expect(fdsOn(d.scratch.runtimeDir, "uvm")).toHaveLength(2);
    setRecoveryAction(0, 3);
    expect(await healthOf(d).round()).toBe(true);
    expect(fdsOn(d.scratch.runtimeDir, "uvm")).toHaveLength(1);
    expect(d.registry.list().map((g) => [g.state, g.uvm])).toEqual([
      ["held", "off"],
      ["held", "registered"],
    ]);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(1);
    expect(d.messages()).toContain("GPU 0: UVM registration dropped: NVML reports recovery action drain-p2p");
    // A second round with the action still pending drops nothing more.
    expect(await healthOf(d).round()).toBe(true);
    expect(d.messages().filter((m) => m.includes("UVM registration dropped"))).toHaveLength(1);
    setRecoveryAction(0, 0);
    await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT);
    await rpcBackend(d.context).setMode(pci(0x06), true, false, ROOT);
    expect(fdsOn(d.scratch.runtimeDir, "uvm")).toHaveLength(2);
    expect(d.registry.list()[0]?.uvm).toBe("registered");
  });

  it("a pending action while the GPU is released for its reset keeps the node drained until a round reads it cleared", async () => {
    const d = fixture.daemon({ gpus: 1, recoveries: [{ gpu: 0, action: 1, afterMs: 0 }] });
    await d.daemon.run();
    await healthOf(d).round();
    expect(verdict(d.context).healthy).toBe(false);
    await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT);
    setRecoveryAction(0, 0);
    // Released: the session is closed, nothing is read, the last reading stands.
    await healthOf(d).round();
    expect(daemonStatus(d.context).devices[0]?.recoveryAction).toBe("gpu-reset");
    await rpcBackend(d.context).setMode(pci(0x06), true, false, ROOT);
    await healthOf(d).round();
    expect(daemonStatus(d.context).devices[0]?.recoveryAction).toBe("none");
    expect(verdict(d.context).healthy).toBe(true);
  });
});
