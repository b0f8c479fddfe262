// The koffi binding against the simulated libnvidia-ml, loaded in this process: real FFI,
// real NVML signatures, faults injected through the simulator's configuration.
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import koffi from "koffi";
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { libuvPool } from "../../native-bindings/libuv-pool.js";
import { NvidiaKernel } from "../../native-bindings/nvidia-kernel.js";
import { FI_DEV_GET_GPU_RECOVERY_ACTION, Nvml } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlLoadError, NvmlTimeoutError } from "../../native-bindings/nvml-errors.js";
import * as returnCodes from "../../native-bindings/nvml-return-codes.js";
import { NVML_RETURN_NAMES, nvmlReturnName } from "../../native-bindings/nvml-return-codes.js";
import { Scratch, SIM_LIBRARY, type SimConfig } from "../helpers/daemon.js";

const scratch = new Scratch();
const sim = koffi.load(SIM_LIBRARY);
const reset = sim.func("void gpuPersistdSimReset()");
const openGate = sim.func("void gpuPersistdSimOpenGate()");
const awaitGated = sim.func("int gpuPersistdSimAwaitGated(int count, int timeoutMs)");
const simFallOffTheBus = sim.func("void gpuPersistdSimFallOffTheBus(int gpu)");
const setRecoveryAction = sim.func("void gpuPersistdSimSetRecoveryAction(int gpu, int action)");
const nvml = Nvml.load(SIM_LIBRARY, 2000);

/** Resolves once `count` calls wait at the simulator's gate (the wait itself takes a pool thread until then). */
function gated(count: number): Promise<void> {
  return new Promise((resolve, reject) =>
    awaitGated.async(count, 10_000, (err: Error | null, n: number) =>
      err || n < count ? reject(err ?? new Error(`only ${n} of ${count} calls reached the gate`)) : resolve(),
    ),
  );
}

afterEach(() => {
  vi.useRealTimers();
  nvml.timeoutMs = 2000;
});

function simulate(config: SimConfig): void {
  reset();
  writeFileSync(scratch.callLogPath, "");
  writeFileSync(scratch.simConfigPath, JSON.stringify({ callLogPath: scratch.callLogPath, ...config }));
  process.env.GPU_PERSISTD_SIM_CONFIG = scratch.simConfigPath;
  delete process.env.GPU_PERSISTD_SIM_GPUS;
  delete process.env.GPU_PERSISTD_SIM_PROFILE;
}

beforeEach(() => simulate({}));
afterAll(() => {
  reset();
  scratch.cleanup();
});

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error("expected a rejection");
    },
    (err: unknown) => err,
  );
}

describe("loading", () => {
  it("names the path when the library is missing (the daemon and doctor add the one fix text)", () => {
    expect(() => Nvml.load("/nonexistent/libnvidia-ml.so.1", 1000)).toThrow(NvmlLoadError);
    expect(() => Nvml.load("/nonexistent/libnvidia-ml.so.1", 1000)).toThrow(
      /cannot load the NVML library '\/nonexistent\/libnvidia-ml\.so\.1'/,
    );
  });

  it("names the missing function when the library is not NVML", () => {
    expect(() => Nvml.load("libc.so.6", 1000)).toThrow(/'libc\.so\.6' does not export nvmlInit_v2/);
  });
});

describe("calls", () => {
  it("reads identities with NVML's layouts", async () => {
    simulate({ gpus: [{ uuid: "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", pciBusId: "0000:1b:00.0", minor: 3 }] });
    await nvml.init();
    expect(await nvml.deviceCount()).toBe(1);
    const dev = await nvml.handleByIndex(0);
    expect(await nvml.uuid(dev)).toBe("GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee");
    expect(await nvml.name(dev)).toBe("NVIDIA H100 80GB HBM3");
    expect(await nvml.minorNumber(dev)).toBe(3);
    expect(await nvml.pciInfo(dev)).toEqual({
      domain: 0,
      bus: 0x1b,
      device: 0,
      pciDeviceId: 0x233010de,
      pciSubSystemId: 0x16c110de,
      busId: "00000000:1B:00.0",
    });
    for (const form of ["00000000:1b:00.0", "0:1b:0", "1b:00.0"]) {
      expect(await nvml.handleByPciBusId(form)).toBe(dev);
    }
    expect(await nvml.driverVersion()).toMatch(/^\d+\.\d+/);
    await nvml.shutdown();
  });

  it("reads the persistence mode an NVML client set, kept in statePath across sessions", async () => {
    simulate({ gpus: 2, statePath: `${scratch.dir}/state` });
    await nvml.init();
    const dev = await nvml.handleByIndex(1);
    expect(await nvml.persistenceMode(dev)).toBe(0);
    // nvidia-smi -pm 1 with no daemon socket: the daemon's binding has no setter at all.
    expect(sim.func("int nvmlDeviceSetPersistenceMode(void *dev, int mode)")(dev, 1)).toBe(0);
    expect(await nvml.persistenceMode(dev)).toBe(1);
    await nvml.shutdown();
    simulate({ gpus: 2, statePath: `${scratch.dir}/state` });
    await nvml.init();
    expect(await nvml.persistenceMode(await nvml.handleByIndex(1))).toBe(1);
    expect(await nvml.persistenceMode(await nvml.handleByIndex(0))).toBe(0);
    await nvml.shutdown();
  });

  it("reads power (mW), P-state, the energy counter (mJ) and the recovery action field", async () => {
    simulate({
      gpus: [{ powerMw: 78400, pstate: 2, energyMj: 5_000_000 }, { recoveryAction: 1 }],
    });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    expect(await nvml.powerUsageMw(dev)).toBe(78400);
    expect(await nvml.performanceState(dev)).toBe(2);
    const energy = await nvml.totalEnergyMj(dev);
    expect(energy).toBeGreaterThanOrEqual(5_000_000);
    expect(await nvml.totalEnergyMj(dev)).toBeGreaterThanOrEqual(energy);
    expect(await nvml.fieldValue(dev, FI_DEV_GET_GPU_RECOVERY_ACTION)).toBe(0);
    const other = await nvml.handleByIndex(1);
    expect(await nvml.powerUsageMw(other)).toBe(74400);
    expect(await nvml.fieldValue(other, FI_DEV_GET_GPU_RECOVERY_ACTION)).toBe(1);
    setRecoveryAction(1, 0);
    expect(await nvml.fieldValue(other, FI_DEV_GET_GPU_RECOVERY_ACTION)).toBe(0);
    await nvml.shutdown();
  });

  it("rejects a field the driver does not report with the field's own NOT_SUPPORTED", async () => {
    simulate({ gpus: [{ recoveryAction: -1 }] });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    const err = await rejection(nvml.fieldValue(dev, FI_DEV_GET_GPU_RECOVERY_ACTION));
    expect(err).toBeInstanceOf(NvmlError);
    expect(err).toMatchObject({
      call: "nvmlDeviceGetFieldValues",
      codeName: "NVML_ERROR_NOT_SUPPORTED",
      nvmlMessage: "Not Supported",
    });
    // Any other field is unknown to the simulator: not supported either.
    expect(await rejection(nvml.fieldValue(dev, 1))).toMatchObject({ codeName: "NVML_ERROR_NOT_SUPPORTED" });
    await nvml.shutdown();
  });

  it("applies the recoveries schedule in time order", async () => {
    simulate({
      gpus: 1,
      recoveries: [
        { gpu: 0, action: 0, afterMs: 0 },
        { gpu: 0, action: 3, afterMs: 3_600_000 },
      ],
    });
    await nvml.init();
    expect(await nvml.fieldValue(await nvml.handleByIndex(0), FI_DEV_GET_GPU_RECOVERY_ACTION)).toBe(0);
    await nvml.shutdown();
  });

  it("rejects the telemetry calls with NvmlError from injected faults, and answers GPU_IS_LOST for a lost GPU", async () => {
    simulate({
      gpus: 2,
      faults: [
        { call: "nvmlDeviceGetPowerUsage", return: 3 },
        { call: "nvmlDeviceGetPerformanceState", return: 3 },
        { call: "nvmlDeviceGetTotalEnergyConsumption", return: 3 },
        { call: "nvmlDeviceGetFieldValues", return: 999 },
      ],
    });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    for (const call of [
      nvml.powerUsageMw(dev),
      nvml.performanceState(dev),
      nvml.totalEnergyMj(dev),
      nvml.fieldValue(dev, FI_DEV_GET_GPU_RECOVERY_ACTION),
    ]) {
      expect(await rejection(call)).toBeInstanceOf(NvmlError);
    }
    expect(await rejection(nvml.powerUsageMw(dev))).toMatchObject({ codeName: "NVML_ERROR_NOT_SUPPORTED" });
    expect(await rejection(nvml.fieldValue(dev, FI_DEV_GET_GPU_RECOVERY_ACTION))).toMatchObject({
      codeName: "NVML_ERROR_UNKNOWN",
    });
    await nvml.shutdown();
    simulate({ gpus: 2 });
    await nvml.init();
    const lost = await nvml.handleByIndex(1);
    simFallOffTheBus(1);
    expect(await rejection(nvml.powerUsageMw(lost))).toMatchObject({ codeName: "NVML_ERROR_GPU_IS_LOST" });
    await nvml.shutdown();
  });

  it("rejects with NvmlError carrying the code, its name and NVML's message", async () => {
    simulate({ gpus: 2, faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 1, return: 4 }] });
    await nvml.init();
    const err = await rejection(nvml.persistenceMode(await nvml.handleByIndex(1)));
    expect(err).toBeInstanceOf(NvmlError);
    expect(err).toMatchObject({
      code: 4,
      codeName: "NVML_ERROR_NO_PERMISSION",
      nvmlMessage: "Insufficient Permissions",
      call: "nvmlDeviceGetPersistenceMode",
    });
    expect(await nvml.persistenceMode(await nvml.handleByIndex(0))).toBe(0);
    await nvml.shutdown();
  });

  it("honours afterCalls and times", async () => {
    simulate({ gpus: 1, faults: [{ call: "nvmlDeviceGetPersistenceMode", return: 15, afterCalls: 1, times: 1 }] });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    expect(await nvml.persistenceMode(dev)).toBe(0);
    expect(await rejection(nvml.persistenceMode(dev))).toMatchObject({ codeName: "NVML_ERROR_GPU_IS_LOST" });
    expect(await nvml.persistenceMode(dev)).toBe(0);
    await nvml.shutdown();
  });

  it("honours afterMs, counted from the first nvmlInit", async () => {
    simulate({
      gpus: 1,
      faults: [
        { call: "nvmlDeviceGetMinorNumber", return: 999, afterMs: 3_600_000 },
        { call: "nvmlDeviceGetName", return: 999, afterMs: 0 },
      ],
    });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    expect(await nvml.minorNumber(dev)).toBe(0);
    expect(await rejection(nvml.name(dev))).toMatchObject({ codeName: "NVML_ERROR_UNKNOWN" });
    await nvml.shutdown();
  });

  it("times a hung call out with NvmlTimeoutError, without blocking the event loop, and frees its thread once it returns", async () => {
    simulate({ gpus: 1, faults: [{ call: "nvmlDeviceGetName", gate: true }] });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const hung = rejection(nvml.name(dev));
    // This test goes on while the call is blocked in the library: the loop is free.
    await gated(1);
    vi.advanceTimersByTime(2000);
    const err = await hung;
    expect(err).toBeInstanceOf(NvmlTimeoutError);
    expect((err as Error).message).toBe("nvmlDeviceGetName did not return within 2000 ms (driver hung?)");
    openGate();
    await (err as NvmlTimeoutError).returned;
    expect(await nvml.idle(0)).toBe(true);
    await nvml.shutdown();
  });

  it("starts a call's time limit when it runs on a pool thread, not while it waits in the pool's queue", async () => {
    // Every pool thread blocked at the gate, the last call queued behind them.
    const threads = libuvPool.size;
    simulate({ gpus: 1, faults: [{ call: "nvmlDeviceGetPersistenceMode", gate: true }] });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    nvml.timeoutMs = 1000;
    const blocked = Array.from({ length: threads - 1 }, () => rejection(nvml.persistenceMode(dev)));
    await gated(threads - 1);
    blocked.push(rejection(nvml.persistenceMode(dev)));
    const queued = nvml.name(dev);
    let queuedSettled = false;
    queued.finally(() => {
      queuedSettled = true;
    });
    vi.advanceTimersByTime(5000);
    // The blocked calls ran past their limit; the queued one has not started.
    for (const err of await Promise.all(blocked)) expect(err).toBeInstanceOf(NvmlTimeoutError);
    expect(queuedSettled).toBe(false);
    openGate();
    expect(await queued).toBe("NVIDIA H100 80GB HBM3");
    for (const err of await Promise.all(blocked)) await (err as NvmlTimeoutError).returned;
    await nvml.shutdown();
  });

  it("idle() resolves when the last call returns, with no polling, or false at its limit", async () => {
    simulate({ gpus: 1, faults: [{ call: "nvmlDeviceGetName", gate: true }] });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const name = nvml.name(dev);
    await gated(1);
    const late = nvml.idle(100);
    vi.advanceTimersByTime(100);
    expect(await late).toBe(false);
    // No fake time passes from here: only the call's return can resolve it.
    const idle = nvml.idle(60_000);
    openGate();
    expect(await name).toBe("NVIDIA H100 80GB HBM3");
    expect(await idle).toBe(true);
    await nvml.shutdown();
  });

  it("answers UNINITIALIZED before nvmlInit", async () => {
    expect(await rejection(nvml.deviceCount())).toMatchObject({ codeName: "NVML_ERROR_UNINITIALIZED" });
  });

  it("delivers configured Xid events to a registered set", async () => {
    simulate({ gpus: 2, events: [{ gpu: 1, type: 8, data: 13, afterMs: 0 }] });
    await nvml.init();
    const set = await nvml.eventSetCreate();
    const dev1 = await nvml.handleByIndex(1);
    expect((await nvml.supportedEventTypes(dev1)) & 8n).toBe(8n);
    await nvml.registerEvents(dev1, 8n, set);
    const event = await nvml.eventSetWait(set, 0);
    expect(event).toMatchObject({ device: dev1, eventType: 8n, eventData: 13n });
    expect(await nvml.eventSetWait(set, 0)).toBeNull();
    await nvml.eventSetFree(set);
    await nvml.shutdown();
  });

  it("a GPU that falls off the bus looks lost on every channel: NVML calls, its Xid 79 event, the ioctls on its node", async () => {
    simulate({ gpus: 2 });
    await nvml.init();
    const set = await nvml.eventSetCreate();
    const dev1 = await nvml.handleByIndex(1);
    await nvml.registerEvents(dev1, 8n, set);
    const kernel = NvidiaKernel.simulated(SIM_LIBRARY, 1000);
    const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-node-"));
    writeFileSync(join(dir, "nvidia1"), "");
    const fd = openSync(join(dir, "nvidia1"), "r+");
    try {
      await expect(kernel.numaInfo(fd)).resolves.toMatchObject({ nid: -1 });
      simFallOffTheBus(1);
      expect(await nvml.eventSetWait(set, 0)).toMatchObject({ device: dev1, eventData: 79n });
      await expect(nvml.persistenceMode(dev1)).rejects.toMatchObject({ codeName: "NVML_ERROR_GPU_IS_LOST" });
      await expect(kernel.numaInfo(fd)).rejects.toMatchObject({ name: "KernelCallError", errno: "EINVAL" });
      await expect(nvml.persistenceMode(await nvml.handleByIndex(0))).resolves.toBeTypeOf("number");
    } finally {
      closeSync(fd);
      rmSync(dir, { recursive: true });
    }
    await nvml.eventSetFree(set);
    await nvml.shutdown();
  });

  it("counts every call in the call log", async () => {
    simulate({ gpus: 2 });
    await nvml.init();
    await nvml.handleByIndex(0);
    await nvml.shutdown();
    expect(scratch.calls().map((c) => c.call)).toEqual([
      "nvmlInit_v2",
      "nvmlDeviceGetHandleByIndex_v2",
      "nvmlShutdown",
    ]);
  });

  it("names every return code, and NVML has a message for each", () => {
    const names = Object.entries(NVML_RETURN_NAMES);
    expect(names).toHaveLength(32);
    expect(new Set(names.map(([, name]) => name)).size).toBe(names.length);
    for (const [code, name] of names) {
      expect(name).toMatch(/^NVML_(SUCCESS|ERROR_[A-Z_]+)$/);
      expect(nvmlReturnName(Number(code))).toBe(name);
      const message = nvml.errorString(Number(code));
      expect(message).not.toBe("");
      if (name !== "NVML_ERROR_UNKNOWN") expect(message).not.toBe("Unknown Error");
    }
    // Each named constant is the code its name says.
    for (const [constant, value] of Object.entries(returnCodes)) {
      if (typeof value === "number") expect(nvmlReturnName(value)).toBe(constant);
    }
    expect(nvmlReturnName(12345)).toBe("NVML_RETURN_12345");
    expect(nvml.errorString(9)).toBe("Driver Not Loaded");
  });
});
