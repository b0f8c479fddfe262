// What holding a GPU does outside the daemon: the legacy flag's reading, the device node,
// the NUMA query and the UVM registration. Every one runs off the event loop:
// opening a cold GPU's node initialises it, closing its last reference tears it down, both
// seconds on a large GPU, and the ioctls take the driver's locks. The registry's claim
// machine drives these; its tests drive a fake of them.
import { close, closeSync } from "node:fs";
import { promisify } from "node:util";
import {
  KernelCallError,
  type NumaInfo,
  NV_ERR_NVLINK_FABRIC_NOT_READY,
  type NvidiaKernel,
} from "../../native-bindings/nvidia-kernel.js";
import { type Nvml, PERSISTENCE_ENABLED } from "../../native-bindings/nvml.js";
import type { FdStore } from "../systemd/fd-store.js";
import { fdName, type Handed } from "./adoption.js";
import { deviceNodePath, openDeviceNode } from "./device-node.js";
import type { Gpu, PersistenceReading } from "./gpu-model.js";

const closeAsync = promisify(close);

export interface HoldEffects {
  /**
   * The driver's legacy flag: NVML's persistence reading in this process, which our RPC
   * server never answers (so NVML falls back to the kernel's flag). The daemon never sets it.
   */
  readLegacyFlag(gpu: Gpu): Promise<PersistenceReading>;
  /** Opens the GPU's node: the fd that holds it. DeviceNodeError when it cannot. */
  openNode(gpu: Gpu): Promise<number>;
  /** NV_ESC_NUMA_INFO on a held node; also proves the driver answers for the GPU. */
  readNuma(fd: number): Promise<NumaInfo>;
  /**
   * Registers the GPU with UVM and returns the fd that keeps the registration, retrying
   * while the NVLink fabric is not ready unless `stopping()`; throws the last error.
   */
  registerUvm(gpu: Gpu, stopping: () => boolean): Promise<number>;
  /**
   * Closes a node or UVM fd; the last close of a GPU's node tears the GPU down. `forGood`:
   * the GPU is let go (released, lost, deselected), so no copy may stay in systemd's fd
   * store either; without it (the daemon stops) the store keeps holding it across a restart.
   */
  close(fd: number, forGood: boolean): Promise<void>;
  /**
   * At stop only: closes at once, on the main thread. The loop has nothing left to serve
   * then, and thread-pool work could wait behind NVML calls hung in the driver.
   */
  closeNow(fd: number): void;
}

export interface DeviceEffectsOptions {
  nvml: Nvml;
  kernel: NvidiaKernel;
  /** Where the GPUs' nodes are: /dev, or the simulator's stand-ins. */
  deviceDir: string;
  /** UVM registration: retried this often while the NVLink fabric is not ready, for at most uvmRetryForMs. */
  uvmRetryEveryMs: number;
  uvmRetryForMs: number;
  /** systemd's fd store (a no-op outside systemd): every fd that holds a GPU goes there. */
  store: FdStore;
  /** What the previous run kept, by GPU index: used instead of opening anew. */
  handed: Pick<Handed, "nodes" | "uvm">;
}

/** The effects on the real driver (or the simulator's stand-ins). */
export class DeviceEffects implements HoldEffects {
  readonly #o: DeviceEffectsOptions;
  /** The fd store's name of each fd handed out, to drop it when the fd is closed for good. */
  readonly #stored = new Map<number, string>();

  constructor(options: DeviceEffectsOptions) {
    this.#o = options;
  }

  /** Takes the fd the previous run kept for `gpu`, if any; else stores `open()`'s. */
  async #kept(kind: "gpu" | "uvm", gpu: Gpu, open: () => Promise<number>): Promise<number> {
    const handed = kind === "gpu" ? this.#o.handed.nodes : this.#o.handed.uvm;
    const adopted = handed.get(gpu.index);
    if (gpu.pci === null) return open();
    const name = fdName(kind, gpu.pci);
    if (adopted !== undefined) {
      // Still in the store: PID 1 has held it all along.
      handed.delete(gpu.index);
      this.#stored.set(adopted, name);
      return adopted;
    }
    const fd = await open();
    this.#o.store.keep(name, fd);
    this.#stored.set(fd, name);
    return fd;
  }

  /** Closes, and drops from the store, what the previous run kept that nothing took. */
  async discardUnused(gpus: readonly Gpu[], log: (message: string) => void): Promise<void> {
    for (const [kind, handed] of [
      ["gpu", this.#o.handed.nodes],
      ["uvm", this.#o.handed.uvm],
    ] as const) {
      for (const [index, fd] of handed) {
        handed.delete(index);
        const pci = gpus[index]?.pci;
        log(
          `GPU ${index}: let go of the ${kind === "gpu" ? "node" : "UVM registration"} the previous run kept: the GPU is not wanted now`,
        );
        if (pci) this.#o.store.drop(fdName(kind, pci));
        await closeAsync(fd);
      }
    }
  }

  async close(fd: number, forGood: boolean): Promise<void> {
    const name = this.#stored.get(fd);
    this.#stored.delete(fd);
    if (forGood && name !== undefined) this.#o.store.drop(name);
    await closeAsync(fd);
  }

  async readLegacyFlag(gpu: Gpu): Promise<PersistenceReading> {
    if (gpu.handle === null) throw gpu.fault ?? new Error("the GPU was not identified");
    return (await this.#o.nvml.persistenceMode(gpu.handle)) === PERSISTENCE_ENABLED ? "enabled" : "disabled";
  }

  openNode(gpu: Gpu): Promise<number> {
    return this.#kept("gpu", gpu, () => openDeviceNode(deviceNodePath(this.#o.deviceDir, gpu.minor)));
  }

  readNuma(fd: number): Promise<NumaInfo> {
    return this.#o.kernel.numaInfo(fd);
  }

  registerUvm(gpu: Gpu, stopping: () => boolean): Promise<number> {
    return this.#kept("uvm", gpu, () => this.#registerUvm(gpu, stopping));
  }

  async #registerUvm(gpu: Gpu, stopping: () => boolean): Promise<number> {
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

  closeNow(fd: number): void {
    this.#stored.delete(fd);
    closeSync(fd);
  }
}
