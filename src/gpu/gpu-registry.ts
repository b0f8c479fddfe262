// The GPU registry: the one owner of every GPU's state and of the fds that hold GPUs.
// Bring-up, reload, RPC, control commands, health drift and Xid loss all ask it; none of
// them touches an fd. Transitions of one GPU run one at a time (a per-GPU queue), different
// GPUs proceed in parallel. Every transition is emitted as an event that logs, systemd's
// STATUS and metrics subscribe to.
import { EventEmitter } from "node:events";
import {
  KernelCallError,
  NUMA_STATUS_NAMES,
  type NumaInfo,
  NV_ERR_NVLINK_FABRIC_NOT_READY,
  type NvidiaKernel,
} from "../../native-bindings/nvidia-kernel.js";
import type { DeviceHandle, Nvml } from "../../native-bindings/nvml.js";
import { PERSISTENCE_ENABLED } from "../../native-bindings/nvml.js";
import { forEachLimited } from "../concurrency.js";
import { describeError as errorText } from "./describe-error.js";
import { closeDeviceNode, deviceNodePath, openDeviceNode } from "./device-node.js";
import { type GpuSelector, selectorMatches } from "./gpu-selector.js";
import { formatPciAddress, type PciAddress, samePciDevice } from "./pci-address.js";
import type { PersistenceSetter } from "./persistence-setter.js";

/**
 * unidentified: NVML could not tell what the GPU is; identified: known, not held (not
 * selected, or not wanted); holding: its node is being opened; held: the daemon keeps its
 * node open; released: a client asked to let it go; lost: NVML said it fell off the bus (a
 * reset or reboot is needed); failed: wanted, but it could not be held (see `fault`).
 */
export type GpuState = "unidentified" | "identified" | "holding" | "held" | "released" | "lost" | "failed";

/**
 * What keeps a GPU's node open; the node is held while any claim is. "persistence": the
 * persistence mode; "numa": the NUMA status of a GPU with coherent memory (GH200), whose
 * memory is a NUMA node only while the GPU is initialised.
 */
export type Claim = "persistence" | "numa";

/** The UVM registration kept with a held GPU under --uvm-persistence-mode. */
export type UvmState = "off" | "registering" | "registered" | "failed";

/** The persistence mode as NVML last read (or set) it; "unknown" until NVML answered. */
export type PersistenceReading = "enabled" | "disabled" | "unknown";

/** One GPU, as everything outside the registry sees it: read-only. */
export interface Gpu {
  readonly index: number;
  readonly uuid: string;
  readonly name: string;
  readonly pci: PciAddress | null;
  readonly minor: number;
  readonly handle: DeviceHandle | null;
  readonly state: GpuState;
  readonly claims: ReadonlySet<Claim>;
  readonly selected: boolean;
  readonly persistence: PersistenceReading;
  /** Xid events seen since start, by Xid number. */
  readonly xids: ReadonlyMap<number, number>;
  /** Why the GPU is not as wanted: NvmlError, NvmlTimeoutError, DeviceNodeError or GpuLostError. */
  readonly fault: Error | null;
  /** NV_ESC_NUMA_INFO as read when the node was first opened; null until then or when it failed. */
  readonly numa: NumaInfo | null;
  readonly uvm: UvmState;
  /** Why the UVM registration failed (KernelCallError with the driver's NV_STATUS, or errno). */
  readonly uvmFault: Error | null;
}

/** Whether the GPU's memory is a NUMA node (coherent memory, as on GH200). */
export function hasCoherentMemory(gpu: Gpu): boolean {
  return gpu.numa !== null && gpu.numa.status !== 0;
}

/** NVML or an Xid said the GPU is gone; `cause` is NVML's error when NVML said so. */
export class GpuLostError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "GpuLostError";
  }
}

interface Entry extends Gpu {
  uuid: string;
  name: string;
  pci: PciAddress | null;
  minor: number;
  handle: DeviceHandle | null;
  state: GpuState;
  claims: Set<Claim>;
  selected: boolean;
  persistence: PersistenceReading;
  xids: Map<number, number>;
  fault: Error | null;
  numa: NumaInfo | null;
  uvm: UvmState;
  uvmFault: Error | null;
  /** The fd held open on the GPU's node; only this module reads or writes it. */
  fd: number | null;
  /** The /dev/nvidia-uvm fd that carries this GPU's UVM registration. */
  uvmFd: number | null;
  /** The tail of this GPU's transition queue. */
  queue: Promise<void>;
}

export interface Transition {
  gpu: Gpu;
  from: GpuState;
  to: GpuState;
  /** What to log about it, at which level. */
  level: "debug" | "info" | "warn" | "error";
  message: string;
}

export interface RegistryEvents {
  transition: [Transition];
  /** A fact about a GPU that is not a state change (persistence read, Xid), for logs. */
  note: [Transition];
}

/**
 * Who asks: "config" (start-up and reload, may use NVML's setter), "request" (a client), or
 * "undo" (a client's request that failed half-way, taken back: the GPU returns to not held).
 */
export type Origin = "config" | "request" | "undo";

/** What the registry needs from the NVML session while a GPU is released by request. */
export interface SessionControl {
  /** Whether NVML can be asked now. */
  readonly open: boolean;
  /** Ends the NVML session, which pins every GPU, so a released GPU can be reset. */
  suspend(): Promise<void>;
  /** Starts it again once no GPU is released by request. */
  resume(): Promise<void>;
}

export interface RegistryOptions {
  nvml: Nvml;
  /** The driver's ioctls (or the simulator's stand-in). */
  kernel: NvidiaKernel;
  /** Keep a UVM registration with each held GPU (--uvm-persistence-mode). */
  uvmPersistence: boolean;
  /** UVM registration: retried this often while the NVLink fabric is not ready, for at most uvmRetryForMs. */
  uvmRetryEveryMs: number;
  uvmRetryForMs: number;
  setter: PersistenceSetter;
  /** Where the GPUs' nodes are: /dev, or the simulator's stand-ins. */
  deviceDir: string;
  session: SessionControl;
  dryRun: boolean;
}

export class GpuRegistry extends EventEmitter<RegistryEvents> {
  readonly #gpus: Entry[];
  readonly #options: RegistryOptions;
  /** Set by releaseAll at stop: no node is opened after it. */
  #closed = false;

  private constructor(gpus: Entry[], options: RegistryOptions) {
    super();
    this.#gpus = gpus;
    this.#options = options;
  }

  /**
   * Asks NVML for every GPU, `concurrency` at once. A GPU that cannot be identified stays
   * "unidentified" with NVML's error; the others are not held up by it.
   */
  static async identify(count: number, concurrency: number, options: RegistryOptions): Promise<GpuRegistry> {
    const { nvml } = options;
    const gpus: Entry[] = Array.from({ length: count }, (_, index) => ({
      index,
      uuid: "",
      name: "",
      pci: null,
      minor: -1,
      handle: null,
      state: "unidentified",
      claims: new Set(),
      selected: false,
      persistence: "unknown",
      xids: new Map(),
      fault: null,
      numa: null,
      uvm: "off",
      uvmFault: null,
      fd: null,
      uvmFd: null,
      queue: Promise.resolve(),
    }));
    await forEachLimited(gpus, concurrency, async (gpu) => {
      try {
        const handle = await nvml.handleByIndex(gpu.index);
        const [uuid, name, pci, minor] = await Promise.all([
          nvml.uuid(handle),
          nvml.name(handle),
          nvml.pciInfo(handle),
          nvml.minorNumber(handle),
        ]);
        Object.assign(gpu, { handle, uuid, name, minor, state: "identified" });
        gpu.pci = { domain: pci.domain, bus: pci.bus, device: pci.device, function: 0 };
      } catch (err) {
        gpu.fault = err as Error;
      }
    });
    return new GpuRegistry(gpus, options);
  }

  list(): readonly Gpu[] {
    return this.#gpus;
  }

  byPci(address: PciAddress): Gpu | undefined {
    return this.#gpus.find((g) => g.pci !== null && samePciDevice(g.pci, address));
  }

  byHandle(handle: DeviceHandle): Gpu | undefined {
    return this.#gpus.find((g) => g.handle === handle);
  }

  /** Marks the GPUs the selectors name (all when none); returns the selectors that match none. */
  select(selectors: readonly GpuSelector[]): GpuSelector[] {
    for (const gpu of this.#gpus) {
      gpu.selected = selectors.length === 0 || selectors.some((s) => selectorMatches(s, gpu));
    }
    return selectors.filter((s) => !this.#gpus.some((g) => selectorMatches(s, g)));
  }

  /** Whether any GPU was released at a client's request (the NVML session must stay closed). */
  anyReleasedByRequest(): boolean {
    return this.#gpus.some((g) => g.state === "released");
  }

  #entry(gpu: Gpu): Entry {
    const entry = this.#gpus[gpu.index];
    if (entry !== gpu) throw new Error(`GPU ${gpu.index} is not one of this registry's`);
    return entry;
  }

  /** Runs `step` after every earlier transition of this GPU has ended. */
  #serial<T>(gpu: Gpu, step: (entry: Entry) => Promise<T>): Promise<T> {
    const entry = this.#entry(gpu);
    const run = entry.queue.then(() => step(entry));
    entry.queue = run.then(
      () => {},
      () => {},
    );
    return run;
  }

  #move(gpu: Entry, to: GpuState, level: Transition["level"], message: string): void {
    const from = gpu.state;
    gpu.state = to;
    this.emit("transition", { gpu, from, to, level, message });
  }

  #note(gpu: Entry, level: Transition["level"], message: string): void {
    this.emit("note", { gpu, from: gpu.state, to: gpu.state, level, message });
  }

  /**
   * Adds `claim` and holds the GPU if it is not held yet. From "config", reads the
   * persistence mode first and enables it through NVML's setter when it reads off (the setter
   * decides whether it may be called). From "request", never calls the setter, and resumes
   * the NVML session once no GPU is released by request. Resolves with the state after.
   */
  acquire(gpu: Gpu, claim: Claim, origin: Origin): Promise<GpuState> {
    return this.#serial(gpu, async (entry) => {
      if (this.#closed || entry.state === "lost" || entry.state === "unidentified") return entry.state;
      const before = entry.state;
      entry.claims.add(claim);
      if (entry.fd === null) await this.#open(entry, origin);
      if (claim === "numa" && !hasCoherentMemory(entry)) {
        // No coherent memory: there is no NUMA node to keep online; a successful no-op, so
        // a node opened only to learn that is closed again and the GPU is as it was.
        entry.claims.delete("numa");
        if (entry.claims.size === 0 && entry.fd !== null) {
          this.#close(entry);
          this.#move(entry, before, "debug", "no coherent memory: nothing to keep online");
        }
        return entry.state;
      }
      if (origin === "request" && entry.state === "held" && !this.anyReleasedByRequest()) {
        await this.#options.session.resume();
      }
      return entry.state;
    });
  }

  async #open(gpu: Entry, origin: Origin): Promise<void> {
    const wasReleased = gpu.state === "released";
    this.#move(gpu, "holding", "debug", "holding the GPU");
    const path = deviceNodePath(this.#options.deviceDir, gpu.minor);
    try {
      // With the session suspended for a released GPU, a newly wanted one is held by its node.
      if (origin === "config" && this.#options.session.open) await this.#enablePersistence(gpu);
      const fd = await openDeviceNode(path);
      if (this.#closed) {
        // The daemon is stopping: it must leave nothing open.
        closeDeviceNode(fd);
        return;
      }
      gpu.fd = fd;
      gpu.fault = null;
      this.#readNuma(gpu, fd);
      if (this.#options.uvmPersistence) await this.#registerUvm(gpu);
      this.#move(
        gpu,
        "held",
        "info",
        origin === "request"
          ? "holding the GPU at a client's request"
          : wasReleased
            ? "holding the GPU again"
            : "holding the GPU",
      );
    } catch (err) {
      gpu.fault = err as Error;
      this.#move(gpu, "failed", "error", `cannot hold the GPU: ${errorText(err)}`);
    }
  }

  #readNuma(gpu: Entry, fd: number): void {
    try {
      gpu.numa = this.#options.kernel.numaInfo(fd);
      const raw = gpu.numa;
      this.#note(
        gpu,
        "debug",
        `NV_ESC_NUMA_INFO: nid ${raw.nid}, status ${raw.status}, use_auto_online ${raw.useAutoOnline}, memory ${raw.memSizeBytes} bytes`,
      );
      if (hasCoherentMemory(gpu)) {
        const n = gpu.numa;
        this.#note(
          gpu,
          n.status === 4 ? "warn" : "info",
          `coherent memory: NUMA node ${n.nid}, ${NUMA_STATUS_NAMES[n.status] ?? `status ${n.status}`}, ` +
            `${Number(n.memSizeBytes / 2n ** 20n)} MiB${n.useAutoOnline ? ", onlined by the driver" : ""}` +
            (n.status === 4 ? " (check that /sys/devices/system/memory/auto_online_blocks is online_movable)" : ""),
        );
      }
    } catch (err) {
      // Older drivers and stand-ins without the query: no coherent memory is assumed.
      gpu.numa = null;
      this.#note(gpu, "debug", `no NUMA information: ${errorText(err)}`);
    }
  }

  /**
   * Registers the GPU with UVM and keeps the fd, retrying while the NVLink fabric is not
   * ready (as NVIDIA's daemon does); a failure is a per-GPU warning, the GPU stays held.
   */
  async #registerUvm(gpu: Entry): Promise<void> {
    const { kernel, deviceDir, uvmRetryEveryMs, uvmRetryForMs } = this.#options;
    gpu.uvm = "registering";
    const started = performance.now();
    for (;;) {
      try {
        gpu.uvmFd = kernel.registerUvm(deviceDir, gpu.uuid);
        gpu.uvm = "registered";
        gpu.uvmFault = null;
        this.#note(gpu, "info", "UVM registration held (--uvm-persistence-mode)");
        return;
      } catch (err) {
        const fabric = err instanceof KernelCallError && err.nvStatus === NV_ERR_NVLINK_FABRIC_NOT_READY;
        if (fabric && performance.now() - started + uvmRetryEveryMs <= uvmRetryForMs && !this.#closed) {
          await new Promise((r) => setTimeout(r, uvmRetryEveryMs));
          continue;
        }
        gpu.uvm = "failed";
        gpu.uvmFault = err as Error;
        this.#note(
          gpu,
          "warn",
          `cannot keep a UVM registration: ${errorText(err)}${fabric ? ` (the NVLink fabric was not ready within ${Math.round(uvmRetryForMs / 1000)} s)` : ""}; the GPU stays held by its node`,
        );
        return;
      }
    }
  }

  async #enablePersistence(gpu: Entry): Promise<void> {
    const { nvml, setter } = this.#options;
    if (gpu.handle === null) throw gpu.fault ?? new Error("the GPU was not identified");
    const mode = await nvml.persistenceMode(gpu.handle);
    if (mode === PERSISTENCE_ENABLED) {
      gpu.persistence = "enabled";
      this.#note(gpu, "info", "already in requested persistence mode");
      return;
    }
    gpu.persistence = "disabled";
    const outcome = await setter.enable(nvml, gpu.handle);
    if (outcome === "enabled") {
      gpu.persistence = "enabled";
      this.#note(gpu, "info", "persistence mode enabled");
    } else if (outcome === "closed") {
      this.#note(gpu, "info", "persistence mode reads disabled; holding the GPU by its node alone (RPC socket up)");
    } else {
      this.#note(gpu, "info", "dry run: persistence mode reads disabled; not calling the setter");
    }
  }

  /**
   * Drops `claim`; once no claim is left the node is closed. From "request" the GPU is then
   * "released" and the NVML session is suspended so nothing pins the GPU; from "config" it
   * is "identified" again (no longer selected or wanted).
   */
  relinquish(gpu: Gpu, claim: Claim, origin: Origin): Promise<GpuState> {
    return this.#serial(gpu, async (entry) => {
      if (this.#closed) return entry.state;
      entry.claims.delete(claim);
      if (entry.claims.size > 0) return entry.state;
      if (entry.fd === null) {
        // Nothing is open: a GPU that could not be held is simply no longer wanted.
        if (entry.state === "failed" && origin === "config")
          this.#move(entry, "identified", "info", "no longer wanted");
        return entry.state;
      }
      this.#close(entry);
      if (origin !== "request") {
        this.#move(
          entry,
          "identified",
          "info",
          origin === "config" ? "released the GPU (no longer selected)" : "let go of the GPU again: the request failed",
        );
        return entry.state;
      }
      this.#move(entry, "released", "info", "released the GPU at a client's request: no fd left on its node");
      await this.#options.session.suspend();
      return entry.state;
    });
  }

  /** Lets go of the GPU: the UVM registration first, then the node. */
  #close(gpu: Entry): void {
    const { fd, uvmFd } = gpu;
    gpu.fd = null;
    gpu.uvmFd = null;
    gpu.uvm = "off";
    if (uvmFd !== null) closeDeviceNode(uvmFd);
    if (fd !== null) closeDeviceNode(fd);
  }

  /** NVML or an Xid said the GPU is gone: let go of it until the daemon restarts. */
  markLost(gpu: Gpu, cause: Error): Promise<void> {
    return this.#serial(gpu, async (entry) => {
      if (entry.state === "lost" || this.#closed) return;
      this.#close(entry);
      entry.fault = cause;
      this.#move(
        entry,
        "lost",
        "error",
        `GPU is lost (${errorText(cause)}): released it; the other GPUs stay held. A reset or reboot is needed to recover it.`,
      );
    });
  }

  /** Records what NVML read; warns once when a held GPU's mode turns from enabled to disabled. */
  recordPersistence(gpu: Gpu, mode: number): void {
    const entry = this.#entry(gpu);
    const reading: PersistenceReading = mode === PERSISTENCE_ENABLED ? "enabled" : "disabled";
    const before = entry.persistence;
    entry.persistence = reading;
    if (before === "enabled" && reading === "disabled" && entry.state === "held" && !this.#options.dryRun) {
      this.#note(
        entry,
        "warn",
        "persistence mode now reads disabled although the daemon holds this GPU (nvidia-smi -pm 0 through another route?). " +
          "The daemon's open fd keeps the GPU initialised.",
      );
    }
  }

  recordXid(gpu: Gpu, xid: number): void {
    const entry = this.#entry(gpu);
    entry.xids.set(xid, (entry.xids.get(xid) ?? 0) + 1);
  }

  /** After the NVML session was started again: its handles are new. */
  async refreshHandles(): Promise<void> {
    const { nvml } = this.#options;
    await Promise.all(
      this.#gpus.map(async (gpu) => {
        if (gpu.pci === null) return;
        try {
          gpu.handle = await nvml.handleByPciBusId(formatPciAddress(gpu.pci));
        } catch (err) {
          this.#note(gpu, "warn", `cannot look the GPU up again after the NVML session restarted: ${errorText(err)}`);
        }
      }),
    );
  }

  /**
   * Makes holds match the configuration: GPUs that `wanted` holds are acquired ("config"),
   * the others relinquished. A GPU released by a client stays released: the client asked.
   */
  async reconcile(wanted: (gpu: Gpu) => boolean, concurrency: number): Promise<void> {
    await forEachLimited(this.#gpus, concurrency, async (gpu) => {
      if (gpu.state === "released") return;
      if (wanted(gpu)) {
        if (gpu.state !== "held") await this.acquire(gpu, "persistence", "config");
      } else if (gpu.claims.has("persistence")) {
        await this.relinquish(gpu, "persistence", "config");
      }
    });
  }

  /** At stop: closes every node now, without waiting for queued transitions; none opens after. */
  releaseAll(): void {
    this.#closed = true;
    for (const gpu of this.#gpus) {
      if (gpu.fd === null) continue;
      this.#close(gpu);
      this.#move(gpu, "identified", "debug", "released the GPU: the daemon stops");
    }
  }
}
