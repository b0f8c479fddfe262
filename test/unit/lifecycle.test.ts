// The daemon's lifecycle in this process, against the simulated libnvidia-ml through the
// real koffi binding: start-up order, signals during start-up and reloads, stop, and the
// races between them. Ordering comes from the simulator's gates, never from sleeping.
import { closeSync, fstatSync, openSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { controlHandler } from "../../src/daemon/control-adapter.js";
import { rpcBackend } from "../../src/daemon/rpc-adapter.js";
import { daemonStatus, metricsText } from "../../src/daemon/status-snapshot.js";
import type { HealthMonitor } from "../../src/health/health-monitor.js";
import { NvPdStatus } from "../../src/rpc/persistence-program.js";
import { fdsOn, gated, InProcessFixture, openGate, ROOT } from "../helpers/in-process.js";

const fixture = new InProcessFixture();

/** The daemon's health loop; a test must never pass because there is none. */
function healthOf(d: { context: { health: HealthMonitor | null } }): HealthMonitor {
  if (!d.context.health) throw new Error("no health loop: the daemon did not finish starting");
  return d.context.health;
}
const gate = (call: string, extra: Record<string, unknown> = {}) => ({ call, gate: true, ...extra });
const pci = (bus: number) => ({ domain: 0, bus, device: 0, function: 0 });

describe("start-up", () => {
  it("identifies, holds every GPU once, then sends READY once with the final STATUS", async () => {
    const d = fixture.daemon({ gpus: [{ persistence: 0 }, { persistence: 1 }] });
    await d.daemon.run();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(1);
    // The daemon never sets the legacy flag: it could not clear it while its socket is there.
    expect(d.scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
    const readies = d.notifier.with("READY");
    expect(readies).toHaveLength(1);
    expect(readies[0]?.STATUS).toBe("2/2 GPUs persistent");
    expect(daemonStatus(d.context).devices.map((g) => g.persistence)).toEqual(["enabled", "enabled"]);
  });

  it("holds a GPU whose legacy-flag read fails: the node holds it, NVML's error is a warning on that GPU", async () => {
    const d = fixture.daemon({
      gpus: 3,
      faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 1, return: 4 }],
    });
    await d.daemon.run();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held", "held"]);
    expect(fdsOn(d.scratch.runtimeDir, 1)).toHaveLength(1);
    expect(daemonStatus(d.context).devices[1]).toMatchObject({ held: true, legacyFlag: "unknown", error: null });
    expect(d.messages()).toContain(
      "GPU 1: cannot read the legacy persistence flag: NVML_ERROR_NO_PERMISSION: Insufficient Permissions (nvmlDeviceGetPersistenceMode); the GPU is held by its node",
    );
    expect(d.notifier.with("READY")[0]?.STATUS).toBe("3/3 GPUs persistent");
  });

  it("watches Xid events on the selected GPUs only, and says how many", async () => {
    const d = fixture.daemon({ gpus: 4 }, { devices: ["0", "2"] });
    await d.daemon.run();
    expect(d.messages()).toContain("watching Xid events on 2 GPUs");
  });

  it("exits 78 when --devices matches no GPU (bad configuration: systemd does not restart it)", async () => {
    const d = fixture.daemon({ gpus: 2 }, { devices: ["7"] });
    await expect(d.daemon.run()).rejects.toMatchObject({ code: 78 });
    expect(d.messages().join("\n")).toContain("--devices names '7', but no GPU has that index (2 GPUs found)");
  });
});

describe("signals during start-up", () => {
  it("SIGHUP during bring-up: each node opened once, the setter never called, an RPC release leaves no fd", async () => {
    const d = fixture.daemon({
      gpus: [{ persistence: 0 }, { persistence: 0 }],
      faults: [gate("nvmlDeviceGetPersistenceMode")],
    });
    const run = d.daemon.run();
    await gated(2);
    d.daemon.reload();
    openGate();
    await run;
    await d.daemon.reloadsSettled();
    expect(d.scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(1);
    expect(fdsOn(d.scratch.runtimeDir, 1)).toHaveLength(1);
    const backend = rpcBackend(d.context);
    expect(await backend.setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(0);
    expect(d.registry.list()[0]?.state).toBe("released");
  });

  it("SIGHUP while NVML identifies the GPUs: no READY before every GPU settled, then the reload once", async () => {
    const d = fixture.daemon({ gpus: 2, faults: [gate("nvmlDeviceGetHandleByIndex_v2")] });
    const run = d.daemon.run();
    await gated(2);
    d.daemon.reload();
    expect(d.notifier.with("READY")).toHaveLength(0);
    openGate();
    await run;
    const first = d.notifier.with("READY");
    expect(first).toHaveLength(1);
    expect(first[0]?.STATUS).toBe("2/2 GPUs persistent");
    await d.daemon.reloadsSettled();
    // The reload's own READY closes its RELOADING, as systemd's protocol wants.
    const kinds = d.notifier.sent.filter((m) => "READY" in m || "RELOADING" in m).map((m) => Object.keys(m)[0]);
    expect(kinds).toEqual(["READY", "RELOADING", "READY"]);
  });

  it("SIGTERM during bring-up stops at once and leaves no GPU held", async () => {
    const d = fixture.daemon({ gpus: 2, faults: [gate("nvmlDeviceGetPersistenceMode")] }, { stopTimeoutMs: 50 });
    const run = d.daemon.run();
    await gated(2);
    const stopped = d.daemon.stop(0, "SIGTERM", "for-good").catch((err: { code: number }) => err.code);
    expect(await stopped).toBe(0);
    expect(d.messages().join("\n")).toContain("exiting without a clean NVML shutdown");
    openGate();
    await run;
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(0);
    expect(fdsOn(d.scratch.runtimeDir, 1)).toHaveLength(0);
    expect(d.notifier.with("READY")).toHaveLength(0);
  });
});

describe("reload", () => {
  it("queues exactly one more reload for SIGHUPs during a slow one: a GPU the second edit adds is held", async () => {
    const d = fixture.daemon(
      { gpus: 3, faults: [gate("nvmlDeviceGetPersistenceMode", { gpu: 1 })] },
      { devices: ["0"] },
    );
    await d.daemon.run();
    d.nextConfig = { devices: ["0", "1"] };
    d.daemon.reload();
    await gated(1);
    d.nextConfig = { devices: ["0", "1", "2"] };
    d.daemon.reload();
    d.daemon.reload();
    openGate();
    await d.daemon.reloadsSettled();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held", "held"]);
    expect(d.notifier.with("RELOADING")).toHaveLength(2);
  });

  it("applies every live setting, the health interval and NVML time limit included; keeps restart-only ones", async () => {
    const d = fixture.daemon({ gpus: 1 }, { healthIntervalMs: 10_000, nvmlTimeoutMs: 10_000 });
    await d.daemon.run();
    d.nextConfig = {
      healthIntervalMs: 2500,
      nvmlTimeoutMs: 3000,
      releaseTimeoutMs: 700,
      logLevel: "warn",
      dryRun: true,
    };
    d.daemon.reload();
    await d.daemon.reloadsSettled();
    expect(d.context.health?.intervalMs).toBe(2500);
    expect(d.context.session?.nvml.timeoutMs).toBe(3000);
    expect(d.context.session?.idleLimitMs).toBe(700);
    expect(d.context.config.logLevel).toBe("warn");
    expect(d.context.config.dryRun).toBe(false);
    expect(d.messages().join("\n")).toContain("dryRun changed: it takes effect when the daemon restarts");
  });

  it("releases a GPU no longer selected and leaves a GPU a client released alone", async () => {
    const d = fixture.daemon({ gpus: 3 });
    await d.daemon.run();
    await rpcBackend(d.context).setMode(pci(0x08), false, false, ROOT);
    d.nextConfig = { devices: ["0", "2"] };
    d.daemon.reload();
    await d.daemon.reloadsSettled();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "identified", "released"]);
    expect(fdsOn(d.scratch.runtimeDir, 1)).toHaveLength(0);
    expect(d.messages().join("\n")).toContain("GPU 2 stays released, as a client asked");
  });
});

describe("requests from clients", () => {
  it("a release ends the NVML session, a hold starts it again and looks the GPUs up anew", async () => {
    const d = fixture.daemon({ gpus: 2 });
    await d.daemon.run();
    const backend = rpcBackend(d.context);
    expect(await backend.setMode(pci(0x07), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(d.context.session?.open).toBe(false);
    expect(backend.mode(pci(0x07))).toBe(false);
    expect(d.notifier.with("STATUS").at(-1)?.STATUS).toBe("1/2 GPUs persistent; 00000000:07:00.0: released");
    expect(await backend.setMode(pci(0x07), true, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(d.context.session?.open).toBe(true);
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(d.scratch.callCount("nvmlInit_v2")).toBe(2);
    expect(d.scratch.callCount("nvmlDeviceGetHandleByPciBusId_v2")).toBe(2);
    expect(await backend.setMode(pci(0x99), true, false, ROOT)).toBe(NvPdStatus.DEVICE_NOT_FOUND);
  });
});

describe("the NVML session around a release", () => {
  it("refuses a release it cannot complete (a call inside NVML does not return in time) and holds the GPU again", async () => {
    const d = fixture.daemon({ gpus: 2, faults: [gate("nvmlDeviceGetPowerUsage")] }, { releaseTimeoutMs: 50 });
    await d.daemon.run();
    const round = healthOf(d).round();
    await gated(1);
    expect(await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.DRIVER);
    expect(d.context.session?.open).toBe(true);
    expect(d.registry.list()[0]?.state).toBe("held");
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(1);
    expect(d.messages().join("\n")).toContain(
      "cannot end the NVML session: NVML calls were still in flight after 50 ms (driver hung?); it stays open",
    );
    openGate();
    await round;
  });

  it("a plain release and a lease that both cannot complete are both taken back: no lease is left behind", async () => {
    const d = fixture.daemon({ gpus: 2, faults: [gate("nvmlDeviceGetPowerUsage")] }, { releaseTimeoutMs: 50 });
    await d.daemon.run();
    const round = healthOf(d).round();
    await gated(1);
    const plain = rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT);
    const lease = controlHandler(d.context)({ command: "release", gpus: ["0"] }, ROOT);
    expect(await plain).toBe(NvPdStatus.DRIVER);
    await expect(lease).rejects.toThrow(/^cannot release: cannot end the NVML session: .*; nothing was released$/);
    expect(d.context.intents.of(0)).toEqual({ client: null, numa: null, lease: null });
    expect(d.registry.list()[0]?.state).toBe("held");
    openGate();
    await round;
    // Nothing phantom: a hold and a new lease are both accepted.
    expect(await rpcBackend(d.context).setMode(pci(0x06), true, false, ROOT)).toBe(NvPdStatus.SUCCESS);
  });

  it("a hold whose nvmlInit fails keeps the GPU held and says health checks stay paused", async () => {
    const d = fixture.daemon({ gpus: 1, faults: [{ call: "nvmlInit_v2", afterCalls: 1, return: 9 }] });
    await d.daemon.run();
    const backend = rpcBackend(d.context);
    await backend.setMode(pci(0x06), false, false, ROOT);
    expect(await backend.setMode(pci(0x06), true, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(d.registry.list()[0]?.state).toBe("held");
    expect(d.context.session?.open).toBe(false);
    expect(d.messages().join("\n")).toContain("cannot reopen the NVML session: NVML_ERROR_DRIVER_NOT_LOADED");
  });
});

describe("health and loss", () => {
  it("a GPU lost while a client's hold is opening its node: no fd left on it, and no other file closed", async () => {
    const d = fixture.daemon({ gpus: 2 });
    await d.daemon.run();
    const backend = rpcBackend(d.context);
    await backend.setMode(pci(0x06), false, false, ROOT);
    const gpu = d.registry.list()[0];
    if (!gpu) throw new Error("no GPU 0");
    // The open runs on the thread pool; the loss arrives before it returns.
    const hold = backend.setMode(pci(0x06), true, false, ROOT);
    const lost = d.registry.markLost(gpu, new Error("Xid 79: GPU has fallen off the bus"));
    const unrelated = openSync(join(d.scratch.dir, "sim.json"), "r");
    await Promise.all([hold, lost]);
    expect(() => fstatSync(unrelated)).not.toThrow();
    closeSync(unrelated);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(0);
    expect(gpu.state).toBe("lost");
    expect(d.registry.list()[1]?.state).toBe("held");
  });

  it("a health round marks a GPU lost on NVML_ERROR_GPU_IS_LOST and keeps the others", async () => {
    const d = fixture.daemon({
      gpus: 2,
      faults: [{ call: "nvmlDeviceGetPowerUsage", gpu: 1, return: 15 }],
    });
    await d.daemon.run();
    const health = d.context.health;
    if (!health) throw new Error("no health loop");
    expect(await health.round()).toBe(true);
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "lost"]);
    expect(daemonStatus(d.context).devices[1]?.errorCode).toBe("NVML_ERROR_GPU_IS_LOST");
    expect(fdsOn(d.scratch.runtimeDir, 1)).toHaveLength(0);
  });

  it("every round checks every held GPU and drains the Xid events without waiting; a stuck call keeps rounds unhealthy until it returns", async () => {
    const d = fixture.daemon(
      { gpus: 3, faults: [{ call: "nvmlDeviceGetPowerUsage", gpu: 1, gate: true }] },
      { nvmlTimeoutMs: 50 },
    );
    await d.daemon.run();
    const health = d.context.health;
    const nvml = d.context.session?.nvml;
    if (!health || !nvml) throw new Error("no health loop");
    const before = d.scratch.calls().length;
    expect(await health.round()).toBe(false);
    const round = d.scratch.calls().slice(before);
    expect(round.filter((c) => c.call === "nvmlDeviceGetPowerUsage").map((c) => c.gpu)).toEqual(
      expect.arrayContaining([0, 2]),
    );
    expect(round.filter((c) => c.call === "nvmlEventSetWait_v2")).toHaveLength(1);
    expect(await health.round()).toBe(false);
    expect(
      d
        .messages()
        .filter((m) => m.includes("GPU 1: health check: nvmlDeviceGetPowerUsage did not return within 50 ms")),
    ).toHaveLength(1);
    openGate();
    expect(await nvml.idle(5000)).toBe(true);
    // The stuck call's own continuation runs after idle()'s: one turn of the loop.
    await new Promise((r) => setImmediate(r));
    expect(await health.round()).toBe(true);
    expect(d.messages()).toContain("GPU 1: health check answers again");
  });

  it("reads the legacy flag once at start, through its own socket unanswered, and names an admin's flag with the fix", async () => {
    const d = fixture.daemon({ gpus: [{ persistence: 0 }, { persistence: 1 }] });
    await d.daemon.run();
    expect(d.registry.list().map((g) => g.legacyFlag)).toEqual(["disabled", "enabled"]);
    // What NVML's clients read: the daemon holds both, and answers "enabled" over its socket.
    expect(daemonStatus(d.context).devices.map((g) => g.persistence)).toEqual(["enabled", "enabled"]);
    expect(d.messages().join("\n")).toContain(
      "GPU 1: the driver's legacy persistence flag is on (set before gpu-persistd started)",
    );
    expect(d.messages().join("\n")).toContain("nvidia-smi -i 1 -pm 0");
    // A health round asks NVML nothing that it would route to the daemon's own socket.
    const before = d.scratch.callCount("nvmlDeviceGetPersistenceMode");
    await healthOf(d).round();
    expect(d.scratch.callCount("nvmlDeviceGetPersistenceMode")).toBe(before);
  });

  it("a GPU a reload adds ends up as one held at start: held, persistence enabled in status and metrics", async () => {
    const d = fixture.daemon({ gpus: [{ persistence: 0 }, { persistence: 0 }] }, { devices: ["0"] });
    await d.daemon.run();
    d.nextConfig = { devices: [] };
    d.daemon.reload();
    await d.daemon.reloadsSettled();
    const [a, b] = daemonStatus(d.context).devices;
    expect(b).toMatchObject({ state: a?.state, held: true, persistence: "enabled" });
    expect(metricsText(d.context)).toMatch(/gpu_persistd_gpu_held\{gpu="1"[^}]*\} 1/);
  });
});
