// The koffi binding against the simulated libnvidia-ml, loaded in this process: real FFI,
// real NVML signatures, faults injected through the simulator's configuration.
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import koffi from "koffi";
import { afterAll, beforeEach, describe, expect, it } from "vitest";
import { NvidiaKernel } from "../../native-bindings/nvidia-kernel.js";
import { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlLoadError, NvmlTimeoutError } from "../../native-bindings/nvml-errors.js";
import { nvmlReturnName } from "../../native-bindings/nvml-return-codes.js";
import { Scratch, SIM_LIBRARY, type SimConfig } from "../helpers/daemon.js";

const scratch = new Scratch();
const reset = koffi.load(SIM_LIBRARY).func("void gpuPersistdSimReset()");
const simFallOffTheBus = koffi.load(SIM_LIBRARY).func("void gpuPersistdSimFallOffTheBus(int gpu)");
const nvml = Nvml.load(SIM_LIBRARY, 2000);

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
  it("names the path and the fix when the library is missing", () => {
    expect(() => Nvml.load("/nonexistent/libnvidia-ml.so.1", 1000)).toThrow(NvmlLoadError);
    expect(() => Nvml.load("/nonexistent/libnvidia-ml.so.1", 1000)).toThrow(
      /cannot load the NVML library '\/nonexistent\/libnvidia-ml\.so\.1'.*--nvml-library/,
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
    expect(await nvml.handleByUuid("GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee")).toBe(dev);
    for (const form of ["00000000:1b:00.0", "0:1b:0", "1b:00.0"]) {
      expect(await nvml.handleByPciBusId(form)).toBe(dev);
    }
    expect(await nvml.driverVersion()).toMatch(/^\d+\.\d+/);
    await nvml.shutdown();
  });

  it("reads and sets the persistence mode, kept in statePath across sessions", async () => {
    simulate({ gpus: 2, statePath: `${scratch.dir}/state` });
    await nvml.init();
    const dev = await nvml.handleByIndex(1);
    expect(await nvml.persistenceMode(dev)).toBe(0);
    await nvml.setPersistenceMode(dev, 1);
    expect(await nvml.persistenceMode(dev)).toBe(1);
    await nvml.shutdown();
    simulate({ gpus: 2, statePath: `${scratch.dir}/state` });
    await nvml.init();
    expect(await nvml.persistenceMode(await nvml.handleByIndex(1))).toBe(1);
    expect(await nvml.persistenceMode(await nvml.handleByIndex(0))).toBe(0);
    await nvml.shutdown();
  });

  it("rejects with NvmlError carrying the code, its name and NVML's message", async () => {
    simulate({ gpus: 2, faults: [{ call: "nvmlDeviceSetPersistenceMode", gpu: 1, return: 4 }] });
    await nvml.init();
    const err = await rejection(nvml.setPersistenceMode(await nvml.handleByIndex(1), 1));
    expect(err).toBeInstanceOf(NvmlError);
    expect(err).toMatchObject({
      code: 4,
      codeName: "NVML_ERROR_NO_PERMISSION",
      nvmlMessage: "Insufficient Permissions",
      call: "nvmlDeviceSetPersistenceMode",
    });
    await nvml.setPersistenceMode(await nvml.handleByIndex(0), 1);
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
    simulate({ gpus: 1, faults: [{ call: "*", return: 999, afterMs: 150 }] });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    expect(await nvml.minorNumber(dev)).toBe(0);
    await new Promise((r) => setTimeout(r, 200));
    expect(await rejection(nvml.minorNumber(dev))).toMatchObject({ codeName: "NVML_ERROR_UNKNOWN" });
  });

  it("times a hung call out with NvmlTimeoutError, without blocking the event loop", async () => {
    simulate({ gpus: 1, faults: [{ call: "nvmlDeviceGetName", hangMs: 3000 }] });
    await nvml.init();
    const dev = await nvml.handleByIndex(0);
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 10);
    const err = await rejection(nvml.name(dev));
    clearInterval(ticker);
    expect(err).toBeInstanceOf(NvmlTimeoutError);
    expect((err as Error).message).toBe("nvmlDeviceGetName did not return within 2000 ms (driver hung?)");
    expect(ticks).toBeGreaterThan(10);
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

  it("names every return code", () => {
    expect(nvmlReturnName(15)).toBe("NVML_ERROR_GPU_IS_LOST");
    expect(nvmlReturnName(12345)).toBe("NVML_RETURN_12345");
    expect(nvml.errorString(9)).toBe("Driver Not Loaded");
  });
});
