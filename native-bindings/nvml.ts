// Thin koffi binding to libnvidia-ml: one declaration per function the daemon uses,
// each call run on the libuv pool (fn.async) with a time limit, each failure an NvmlError
// carrying NVML's own message.
import { readFileSync } from "node:fs";
import koffi, { type LibraryHandle } from "koffi";

type KoffiFunction = ReturnType<LibraryHandle["func"]>;

import { timedPoolCall } from "./libuv-pool.js";
import { NvmlError, NvmlLoadError, NvmlTimeoutError } from "./nvml-errors.js";
import { FIELD_VALUE_SIZE, fieldNumber } from "./nvml-field-values.js";
import { NVML_ERROR_TIMEOUT, NVML_SUCCESS } from "./nvml-return-codes.js";

export { FI_DEV_GET_GPU_RECOVERY_ACTION } from "./nvml-field-values.js";

/** An nvmlDevice_t: an opaque pointer, a BigInt under koffi 3. */
export type DeviceHandle = bigint;
export type EventSetHandle = bigint;

export interface PciInfo {
  domain: number;
  bus: number;
  device: number;
  pciDeviceId: number;
  pciSubSystemId: number;
  /** `%08X:%02X:%02X.0`, e.g. `00000000:00:06.0`. */
  busId: string;
}

export interface EventData {
  device: DeviceHandle;
  eventType: bigint;
  /** The Xid number for Xid events. */
  eventData: bigint;
}

export const PERSISTENCE_ENABLED = 1;

export const EVENT_XID_CRITICAL_ERROR = 0x8n;

type AnyFn = KoffiFunction;

// Named types, referred to by name in the declarations below.
const deviceType = koffi.pointer("nvmlDevice_t", koffi.opaque("nvmlDevice"));
koffi.pointer("nvmlEventSet_t", koffi.opaque("nvmlEventSet"));
koffi.struct("nvmlPciInfo_t", {
  busIdLegacy: koffi.array("char", 16),
  domain: "uint",
  bus: "uint",
  device: "uint",
  pciDeviceId: "uint",
  pciSubSystemId: "uint",
  busId: koffi.array("char", 32),
});
koffi.struct("nvmlEventData_t", {
  device: deviceType,
  eventType: "unsigned long long",
  eventData: "unsigned long long",
  gpuInstanceId: "uint",
  computeInstanceId: "uint",
});

// Every function the daemon uses, in C syntax; a library lacking one is refused at load.
const DECLARATIONS = {
  nvmlInit_v2: "int nvmlInit_v2()",
  nvmlShutdown: "int nvmlShutdown()",
  nvmlErrorString: "const char *nvmlErrorString(int)",
  nvmlSystemGetDriverVersion: "int nvmlSystemGetDriverVersion(_Out_ uint8_t *buf, unsigned int len)",
  nvmlSystemGetNVMLVersion: "int nvmlSystemGetNVMLVersion(_Out_ uint8_t *buf, unsigned int len)",
  nvmlDeviceGetCount_v2: "int nvmlDeviceGetCount_v2(_Out_ unsigned int *count)",
  nvmlDeviceGetHandleByIndex_v2: "int nvmlDeviceGetHandleByIndex_v2(unsigned int index, _Out_ nvmlDevice_t *out)",
  nvmlDeviceGetHandleByPciBusId_v2: "int nvmlDeviceGetHandleByPciBusId_v2(const char *busId, _Out_ nvmlDevice_t *out)",
  nvmlDeviceGetUUID: "int nvmlDeviceGetUUID(nvmlDevice_t dev, _Out_ uint8_t *buf, unsigned int len)",
  nvmlDeviceGetName: "int nvmlDeviceGetName(nvmlDevice_t dev, _Out_ uint8_t *buf, unsigned int len)",
  nvmlDeviceGetPciInfo_v3: "int nvmlDeviceGetPciInfo_v3(nvmlDevice_t dev, _Out_ nvmlPciInfo_t *pci)",
  nvmlDeviceGetMinorNumber: "int nvmlDeviceGetMinorNumber(nvmlDevice_t dev, _Out_ unsigned int *minor)",
  nvmlDeviceGetPersistenceMode: "int nvmlDeviceGetPersistenceMode(nvmlDevice_t dev, _Out_ int *mode)",
  nvmlEventSetCreate: "int nvmlEventSetCreate(_Out_ nvmlEventSet_t *set)",
  nvmlDeviceGetSupportedEventTypes:
    "int nvmlDeviceGetSupportedEventTypes(nvmlDevice_t dev, _Out_ unsigned long long *types)",
  nvmlDeviceRegisterEvents:
    "int nvmlDeviceRegisterEvents(nvmlDevice_t dev, unsigned long long types, nvmlEventSet_t set)",
  nvmlEventSetWait_v2:
    "int nvmlEventSetWait_v2(nvmlEventSet_t set, _Out_ nvmlEventData_t *data, unsigned int timeoutMs)",
  nvmlEventSetFree: "int nvmlEventSetFree(nvmlEventSet_t set)",
  // Read-only telemetry, never routed to the persistence socket (unlike the persistence calls).
  nvmlDeviceGetPowerUsage: "int nvmlDeviceGetPowerUsage(nvmlDevice_t dev, _Out_ unsigned int *milliwatts)",
  nvmlDeviceGetPerformanceState: "int nvmlDeviceGetPerformanceState(nvmlDevice_t dev, _Out_ int *pstate)",
  nvmlDeviceGetTotalEnergyConsumption:
    "int nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t dev, _Out_ unsigned long long *millijoules)",
  // The nvmlFieldValue_t array is passed as a Buffer (fieldValue() lays it out).
  nvmlDeviceGetFieldValues: "int nvmlDeviceGetFieldValues(nvmlDevice_t dev, int count, uint8_t *values)",
} as const;

type NvmlFunctionName = keyof typeof DECLARATIONS;

/** Buffer sizes from nvml.h (NVML_DEVICE_UUID_V2_BUFFER_SIZE and friends). */
const UUID_BUFFER = 96;
const NAME_BUFFER = 96;
const VERSION_BUFFER = 80;

function cString(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.toString("utf8", 0, end < 0 ? buf.length : end);
}

export class Nvml {
  readonly path: string;
  readonly #fns: Record<NvmlFunctionName, AnyFn>;
  /** Time limit of each call; a reload may change it (calls in flight keep theirs). */
  timeoutMs: number;
  /** Calls queued or inside the library, timed out ones included. */
  #inFlight = 0;
  /** idle() waiters, resolved when #inFlight reaches 0. */
  readonly #onIdle = new Set<() => void>();

  private constructor(path: string, fns: Record<NvmlFunctionName, AnyFn>, timeoutMs: number) {
    this.path = path;
    this.#fns = fns;
    this.timeoutMs = timeoutMs;
  }

  /**
   * Loads the library at `path` (a name resolved by the dynamic loader, or a file).
   * Throws NvmlLoadError naming the path and the fix when it cannot be loaded or lacks a
   * function.
   */
  static load(path: string, timeoutMs: number): Nvml {
    let lib: LibraryHandle;
    try {
      lib = koffi.load(path);
    } catch (err) {
      // The cause only: the daemon and doctor add the one fix text (src/fixes.ts).
      throw new NvmlLoadError(`cannot load the NVML library '${path}': ${(err as Error).message}`, path);
    }
    const fns = {} as Record<NvmlFunctionName, AnyFn>;
    for (const [name, declaration] of Object.entries(DECLARATIONS) as [NvmlFunctionName, string][]) {
      try {
        fns[name] = lib.func(declaration);
      } catch {
        throw new NvmlLoadError(
          `'${path}' does not export ${name}: it is not a usable libnvidia-ml (too old, or another library)`,
          path,
        );
      }
    }
    return new Nvml(path, fns, timeoutMs);
  }

  errorString(code: number): string {
    return this.#fns.nvmlErrorString(code) as string;
  }

  /** Runs one NVML function on the pool; resolves on NVML_SUCCESS, rejects otherwise. */
  #call(name: NvmlFunctionName, ...args: unknown[]): Promise<void> {
    return this.#callWithin(this.timeoutMs, name, ...args);
  }

  /** The time limit runs from when the call is presumed running on a pool thread (libuv-pool.ts), not from its queueing. */
  #callWithin(timeoutMs: number, name: NvmlFunctionName, ...args: unknown[]): Promise<void> {
    this.#inFlight++;
    return timedPoolCall<number, void>(
      timeoutMs,
      (done) => this.#fns[name].async(...args, done),
      (code) => {
        if (code !== NVML_SUCCESS) throw new NvmlError(name, code, this.errorString(code));
      },
      (returned) => new NvmlTimeoutError(name, timeoutMs, returned),
      () => {
        this.#inFlight--;
        if (this.#inFlight === 0) for (const idle of this.#onIdle) idle();
      },
    );
  }

  /**
   * Resolves true once no call is queued or inside the library, false if some still are after
   * `timeoutMs`. nvmlShutdown must not run beside another call: real NVML crashes when a
   * blocked nvmlEventSetWait_v2 outlives the session (seen on the H100).
   */
  idle(timeoutMs: number): Promise<boolean> {
    if (this.#inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const done = (idle: boolean): void => {
        clearTimeout(timer);
        this.#onIdle.delete(onIdle);
        resolve(idle);
      };
      const onIdle = (): void => done(true);
      const timer = setTimeout(() => done(false), timeoutMs);
      this.#onIdle.add(onIdle);
    });
  }

  async init(): Promise<void> {
    await this.#call("nvmlInit_v2");
  }

  async shutdown(): Promise<void> {
    await this.#call("nvmlShutdown");
  }

  /**
   * The user-space driver version this library belongs to, also when nvmlInit fails: from
   * nvmlSystemGetNVMLVersion ("13.580.95.05": NVML's major, then the driver's version), or
   * else from the name of the library file mapped into this process (libnvidia-ml.so.580.95.05).
   * Null when neither tells.
   */
  async libraryVersion(): Promise<string | null> {
    const buf = Buffer.alloc(VERSION_BUFFER);
    try {
      await this.#call("nvmlSystemGetNVMLVersion", buf, buf.length);
      const version = cString(buf).replace(/^\d+\./, "");
      if (version) return version;
    } catch {
      // Not before nvmlInit in this library: read it from the file name instead.
    }
    try {
      const maps = readFileSync("/proc/self/maps", "utf8");
      return /libnvidia-ml\.so\.(\d+\.\d+(?:\.\d+)?)\s*$/m.exec(maps)?.[1] ?? null;
    } catch {
      return null;
    }
  }

  async driverVersion(): Promise<string> {
    const buf = Buffer.alloc(VERSION_BUFFER);
    await this.#call("nvmlSystemGetDriverVersion", buf, buf.length);
    return cString(buf);
  }

  async deviceCount(): Promise<number> {
    const out = [0];
    await this.#call("nvmlDeviceGetCount_v2", out);
    return out[0] as number;
  }

  async handleByIndex(index: number): Promise<DeviceHandle> {
    const out: [DeviceHandle | null] = [null];
    await this.#call("nvmlDeviceGetHandleByIndex_v2", index, out);
    return out[0] as DeviceHandle;
  }

  async handleByPciBusId(busId: string): Promise<DeviceHandle> {
    const out: [DeviceHandle | null] = [null];
    await this.#call("nvmlDeviceGetHandleByPciBusId_v2", busId, out);
    return out[0] as DeviceHandle;
  }

  async uuid(dev: DeviceHandle): Promise<string> {
    const buf = Buffer.alloc(UUID_BUFFER);
    await this.#call("nvmlDeviceGetUUID", dev, buf, buf.length);
    return cString(buf);
  }

  async name(dev: DeviceHandle): Promise<string> {
    const buf = Buffer.alloc(NAME_BUFFER);
    await this.#call("nvmlDeviceGetName", dev, buf, buf.length);
    return cString(buf);
  }

  async pciInfo(dev: DeviceHandle): Promise<PciInfo> {
    const out = {} as PciInfo & { busIdLegacy: string };
    await this.#call("nvmlDeviceGetPciInfo_v3", dev, out);
    const { busIdLegacy: _legacy, ...info } = out;
    return info;
  }

  async minorNumber(dev: DeviceHandle): Promise<number> {
    const out = [0];
    await this.#call("nvmlDeviceGetMinorNumber", dev, out);
    return out[0] as number;
  }

  async persistenceMode(dev: DeviceHandle): Promise<number> {
    const out = [0];
    await this.#call("nvmlDeviceGetPersistenceMode", dev, out);
    return out[0] as number;
  }

  /** The GPU's power draw in milliwatts. */
  async powerUsageMw(dev: DeviceHandle): Promise<number> {
    const out = [0];
    await this.#call("nvmlDeviceGetPowerUsage", dev, out);
    return out[0] as number;
  }

  /** The performance state: 0 (P0, the highest) to 15, 32 when unknown. */
  async performanceState(dev: DeviceHandle): Promise<number> {
    const out = [0];
    await this.#call("nvmlDeviceGetPerformanceState", dev, out);
    return out[0] as number;
  }

  /** The energy the GPU used since the driver was loaded, in millijoules. */
  async totalEnergyMj(dev: DeviceHandle): Promise<number> {
    const out = [0n];
    await this.#call("nvmlDeviceGetTotalEnergyConsumption", dev, out);
    return Number(out[0] as bigint | number);
  }

  /**
   * One field through nvmlDeviceGetFieldValues. The field's own return code counts as the
   * call's: NvmlError (NOT_SUPPORTED where the driver does not report the field).
   */
  async fieldValue(dev: DeviceHandle, fieldId: number): Promise<number> {
    const buf = Buffer.alloc(FIELD_VALUE_SIZE);
    buf.writeUInt32LE(fieldId, 0);
    await this.#call("nvmlDeviceGetFieldValues", dev, 1, buf);
    const code = buf.readInt32LE(28);
    if (code !== NVML_SUCCESS) throw new NvmlError("nvmlDeviceGetFieldValues", code, this.errorString(code));
    return fieldNumber(buf, buf.readUInt32LE(24));
  }

  async eventSetCreate(): Promise<EventSetHandle> {
    const out: [EventSetHandle | null] = [null];
    await this.#call("nvmlEventSetCreate", out);
    return out[0] as EventSetHandle;
  }

  async supportedEventTypes(dev: DeviceHandle): Promise<bigint> {
    const out = [0n];
    await this.#call("nvmlDeviceGetSupportedEventTypes", dev, out);
    return BigInt(out[0] as bigint | number);
  }

  async registerEvents(dev: DeviceHandle, types: bigint, set: EventSetHandle): Promise<void> {
    await this.#call("nvmlDeviceRegisterEvents", dev, types, set);
  }

  /**
   * Waits up to `timeoutMs` on the pool; resolves null on NVML_ERROR_TIMEOUT. The call's own
   * time limit is the wait plus the usual one.
   */
  async eventSetWait(set: EventSetHandle, timeoutMs: number): Promise<EventData | null> {
    const out = {} as EventData;
    try {
      await this.#callWithin(timeoutMs + this.timeoutMs, "nvmlEventSetWait_v2", set, out, timeoutMs);
    } catch (err) {
      if (err instanceof NvmlError && err.code === NVML_ERROR_TIMEOUT) return null;
      throw err;
    }
    return { device: out.device, eventType: BigInt(out.eventType), eventData: BigInt(out.eventData) };
  }

  async eventSetFree(set: EventSetHandle): Promise<void> {
    await this.#call("nvmlEventSetFree", set);
  }
}
