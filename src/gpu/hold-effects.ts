// What holding a GPU does outside the daemon: NVML's persistence reading and setter, the
// device node, the NUMA query and the UVM registration. Every one runs off the event loop:
// opening a cold GPU's node initialises it, closing its last reference tears it down, both
// seconds on a large GPU, and the ioctls take the driver's locks. The registry's claim
// machine drives these; its tests drive a fake of them.
import { close } from "node:fs";
import { promisify } from "node:util";
import {
  KernelCallError,
  type NumaInfo,
  NV_ERR_NVLINK_FABRIC_NOT_READY,
  type NvidiaKernel,
} from "../../native-bindings/nvidia-kernel.js";
import { type Nvml, PERSISTENCE_ENABLED } from "../../native-bindings/nvml.js";
import { deviceNodePath, openDeviceNode } from "./device-node.js";
import type { Gpu, PersistenceReading } from "./gpu-model.js";
import type { PersistenceSetter } from "./persistence-setter.js";

const closeAsync = promisify(close);

export interface PersistenceOutcome {
  reading: PersistenceReading;
  note: string;
}

export interface HoldEffects {
  /** Reads the persistence mode; where it reads off, enables it through NVML's setter if the setter may be called. */
  enablePersistence(gpu: Gpu): Promise<PersistenceOutcome>;
  /** Opens the GPU's node: the fd that holds it. DeviceNodeError when it cannot. */
  openNode(gpu: Gpu): Promise<number>;
  /** NV_ESC_NUMA_INFO on a held node; also proves the driver answers for the GPU. */
  readNuma(fd: number): Promise<NumaInfo>;
  /**
   * Registers the GPU with UVM and returns the fd that keeps the registration, retrying
   * while the NVLink fabric is not ready unless `stopping()`; throws the last error.
   */
  registerUvm(gpu: Gpu, stopping: () => boolean): Promise<number>;
  /** Closes a node or UVM fd; the last close of a GPU's node tears the GPU down. */
  close(fd: number): Promise<void>;
}

export interface DeviceEffectsOptions {
  nvml: Nvml;
  kernel: NvidiaKernel;
  setter: PersistenceSetter;
  /** Where the GPUs' nodes are: /dev, or the simulator's stand-ins. */
  deviceDir: string;
  /** UVM registration: retried this often while the NVLink fabric is not ready, for at most uvmRetryForMs. */
  uvmRetryEveryMs: number;
  uvmRetryForMs: number;
}

/** The effects on the real driver (or the simulator's stand-ins). */
export class DeviceEffects implements HoldEffects {
  readonly #o: DeviceEffectsOptions;

  constructor(options: DeviceEffectsOptions) {
    this.#o = options;
  }

  async enablePersistence(gpu: Gpu): Promise<PersistenceOutcome> {
    const { nvml, setter } = this.#o;
    if (gpu.handle === null) throw gpu.fault ?? new Error("the GPU was not identified");
    if ((await nvml.persistenceMode(gpu.handle)) === PERSISTENCE_ENABLED) {
      return { reading: "enabled", note: "already in requested persistence mode" };
    }
    const outcome = await setter.enable(nvml, gpu.handle);
    if (outcome === "enabled") return { reading: "enabled", note: "persistence mode enabled" };
    return {
      reading: "disabled",
      note:
        outcome === "closed"
          ? "persistence mode reads disabled; holding the GPU by its node alone (RPC socket up)"
          : "dry run: persistence mode reads disabled; not calling the setter",
    };
  }

  openNode(gpu: Gpu): Promise<number> {
    return openDeviceNode(deviceNodePath(this.#o.deviceDir, gpu.minor));
  }

  readNuma(fd: number): Promise<NumaInfo> {
    return this.#o.kernel.numaInfo(fd);
  }

  async registerUvm(gpu: Gpu, stopping: () => boolean): Promise<number> {
    const { kernel, deviceDir, uvmRetryEveryMs, uvmRetryForMs } = this.#o;
    const started = performance.now();
    for (;;) {
      try {
        return await kernel.registerUvm(deviceDir, gpu.uuid);
      } catch (err) {
        const fabric = err instanceof KernelCallError && err.nvStatus === NV_ERR_NVLINK_FABRIC_NOT_READY;
        if (!fabric || stopping() || performance.now() - started + uvmRetryEveryMs > uvmRetryForMs) throw err;
        await new Promise((r) => setTimeout(r, uvmRetryEveryMs));
      }
    }
  }

  close(fd: number): Promise<void> {
    return closeAsync(fd);
  }
}
