// The GPU registry: the one owner of every GPU's physical state and of the fds that hold
// GPUs, as a claim state machine. Its writers: the reconciler (converge: hold or let go, as
// the intents' target says), and the GPU's own fate (lost, UVM dropped on NVML's recovery
// action). Transitions of one GPU run one at a time (a per-GPU queue), different GPUs in
// parallel. What a transition does to the driver (open, NUMA, UVM, close) is the
// HoldEffects' business; every transition is emitted as an event that the log and systemd's
// STATUS follow, and that the NVML session coordinator reads.
import { EventEmitter } from "node:events";
import { KernelTimeoutError } from "../../native-bindings/nvidia-kernel.js";
import type { DeviceHandle, Nvml } from "../../native-bindings/nvml.js";
import { legacyFlagNote } from "../fixes.js";
import { type GpuSelector, selectorMatches } from "../selection/gpu-selector.js";
import { formatPciAddress, type PciAddress, samePciDevice } from "../selection/pci-address.js";
import { describeError as errorText } from "./describe-error.js";
import type { Gpu, GpuState, Identity, RegistryEvents, Transition } from "./gpu-model.js";
import type { HoldEffects } from "./hold-effects.js";
import { letGoNote, lostNote, numaNotes, uvmFailureNote } from "./hold-notes.js";
import type { Target } from "./intents.js";

export type {
  Claim,
  Gpu,
  GpuState,
  Identity,
  PersistenceReading,
  Transition,
  UvmState,
} from "./gpu-model.js";
export { GpuLostError, hasCoherentMemory } from "./gpu-model.js";

/** A GPU as the registry writes it: the public view made writable, and what only it sees. */
type Entry = { -readonly [K in keyof Gpu]: Gpu[K] } & {
  xids: Map<number, number>;
  /** The fd held open on the GPU's node; only this module reads or writes it. */
  fd: number | null;
  /** The /dev/nvidia-uvm fd that carries this GPU's UVM registration. */
  uvmFd: number | null;
  /** The tail of this GPU's transition queue. */
  queue: Promise<void>;
  /** A probe on `fd` in flight: the fd is closed only after it (its number could be reused). */
  probing: Promise<unknown> | null;
  /** Held for the configuration (else only for a client): what letting go of it says. */
  forConfig: boolean;
};

export interface RegistryOptions {
  effects: HoldEffects;
  /** Keep a UVM registration with each held GPU (--uvm-persistence-mode). */
  uvmPersistence: boolean;
  /** Whether NVML may be asked now (the session is open): a GPU held meanwhile is held by its node alone. */
  nvmlOpen: () => boolean;
}

export class GpuRegistry extends EventEmitter<RegistryEvents> {
  readonly #gpus: Entry[];
  readonly #o: RegistryOptions;
  /** Set by releaseAll at stop: no node is opened after it. */
  #closed = false;

  constructor(identities: readonly (Identity | Error)[], options: RegistryOptions) {
    super();
    this.#o = options;
    this.#gpus = identities.map((id, index) => ({
      index,
      uuid: id instanceof Error ? "" : id.uuid,
      name: id instanceof Error ? "" : id.name,
      pci: id instanceof Error ? null : id.pci,
      minor: id instanceof Error ? -1 : id.minor,
      handle: id instanceof Error ? null : id.handle,
      state: id instanceof Error ? "unidentified" : "identified",
      claims: new Set(),
      selected: false,
      legacyFlag: "unknown",
      xids: new Map(),
      fault: id instanceof Error ? id : null,
      numa: null,
      uvm: "off",
      uvmFault: null,
      fd: null,
      uvmFd: null,
      queue: Promise.resolve(),
      probing: null,
      forConfig: false,
    }));
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

  /** Marks the GPUs the selectors name (all when none). */
  select(selectors: readonly GpuSelector[]): void {
    for (const gpu of this.#gpus) {
      gpu.selected = selectors.length === 0 || selectors.some((s) => selectorMatches(s, gpu));
    }
  }

  /** Whether any GPU was released at a client's request (no NVML session may pin it). */
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
   * Makes the GPU's effects what `target()` says, computed once every earlier transition of
   * this GPU has ended: with claims, holds it (its node first; for the configuration, with the
   * NVML session open, the legacy flag too, best effort); without, lets go of every fd and
   * leaves it `target.idle`. A lost or unidentified GPU stays as it is, and nothing is opened
   * once the daemon stops. Resolves with the state after.
   */
  converge(gpu: Gpu, target: () => Target): Promise<GpuState> {
    return this.#serial(gpu, async (entry) => {
      if (this.#closed || entry.state === "lost" || entry.state === "unidentified") return entry.state;
      const { claims, idle, forConfig } = target();
      entry.claims = new Set(claims);
      if (claims.length > 0) {
        entry.forConfig = forConfig;
        if (entry.fd === null) await this.#open(entry, forConfig);
        return entry.state;
      }
      const held = entry.fd !== null;
      if (held) await this.#close(entry);
      if (held || entry.state !== idle) this.#move(entry, idle, "info", letGoNote(entry, idle, held, entry.forConfig));
      return entry.state;
    });
  }

  async #open(gpu: Entry, forConfig: boolean): Promise<void> {
    const { effects } = this.#o;
    this.#move(gpu, "holding", "debug", "holding the GPU");
    try {
      // The node holds the GPU; nothing NVML says is needed for that.
      const fd = await effects.openNode(gpu);
      if (this.#closed) {
        // The daemon is stopping: it must leave nothing open.
        await effects.close(fd, false);
        return;
      }
      gpu.fd = fd;
      gpu.fault = null;
      if (forConfig && this.#o.nvmlOpen()) await this.#readLegacyFlag(gpu);
      await this.#readNuma(gpu, fd);
      if (this.#o.uvmPersistence) await this.#registerUvm(gpu);
      this.#move(gpu, "held", "info", forConfig ? "holding the GPU" : "holding the GPU at a client's request");
    } catch (err) {
      gpu.fault = err as Error;
      this.#move(gpu, "failed", "error", `cannot hold the GPU: ${errorText(err)}`);
    }
  }

  /** A read that fails is a warning on this GPU: it stays held by its node. */
  async #readLegacyFlag(gpu: Entry): Promise<void> {
    try {
      gpu.legacyFlag = await this.#o.effects.readLegacyFlag(gpu);
    } catch (err) {
      this.#note(
        gpu,
        "warn",
        `cannot read the legacy persistence flag: ${errorText(err)}; the GPU is held by its node`,
      );
      return;
    }
    if (gpu.legacyFlag === "enabled") {
      this.#note(gpu, "warn", legacyFlagNote(gpu.index));
    }
  }

  async #readNuma(gpu: Entry, fd: number): Promise<void> {
    try {
      gpu.numa = await this.#o.effects.readNuma(fd);
      for (const [level, text] of numaNotes(gpu.numa)) this.#note(gpu, level, text);
    } catch (err) {
      // Older drivers and stand-ins without the query: no coherent memory is assumed.
      gpu.numa = null;
      this.#note(gpu, "debug", `no NUMA information: ${errorText(err)}`);
    }
  }

  /** A UVM registration kept with the GPU; a failure is a per-GPU warning, the GPU stays held. */
  async #registerUvm(gpu: Entry): Promise<void> {
    gpu.uvm = "registering";
    try {
      gpu.uvmFd = await this.#o.effects.registerUvm(gpu, () => this.#closed);
      gpu.uvm = "registered";
      gpu.uvmFault = null;
      this.#note(gpu, "info", "UVM registration held (--uvm-persistence-mode)");
    } catch (err) {
      gpu.uvm = "failed";
      gpu.uvmFault = err as Error;
      this.#note(gpu, "warn", uvmFailureNote(err));
    }
  }

  /**
   * Lets go of the GPU, off the event loop: the UVM registration first, then the node.
   * `forGood` (every case but the daemon's stop): no copy stays in systemd's fd store.
   */
  async #close(gpu: Entry, forGood = true): Promise<void> {
    const { fd, uvmFd } = gpu;
    gpu.fd = null;
    gpu.uvmFd = null;
    gpu.uvm = "off";
    await gpu.probing?.catch(() => {});
    const { effects } = this.#o;
    if (uvmFd !== null)
      await effects
        .close(uvmFd, forGood)
        .catch((err) => this.#note(gpu, "warn", `closing the UVM fd: ${errorText(err)}`));
    if (fd !== null)
      await effects.close(fd, forGood).catch((err) => this.#note(gpu, "warn", `closing the node: ${errorText(err)}`));
  }

  /** NVML, an Xid or the driver said the GPU is gone: let go of it until the daemon restarts. */
  markLost(gpu: Gpu, cause: Error): Promise<void> {
    return this.#serial(gpu, async (entry) => {
      if (entry.state === "lost" || this.#closed) return;
      await this.#close(entry);
      entry.fault = cause;
      entry.claims = new Set();
      this.#move(entry, "lost", "error", lostNote(cause));
    });
  }

  /**
   * Asks the driver about a held GPU through its own node, without NVML (NV_ESC_NUMA_INFO):
   * "answered"; "not held" (nothing to ask); "no query" (this driver lacked the query when
   * the GPU was held). KernelCallError or KernelTimeoutError when the driver does not answer.
   */
  async probe(gpu: Gpu): Promise<"answered" | "not held" | "no query"> {
    const entry = this.#entry(gpu);
    if (entry.fd === null) return "not held";
    if (entry.numa === null) return "no query";
    const probing = this.#o.effects.readNuma(entry.fd);
    entry.probing = probing;
    try {
      entry.numa = await probing;
    } catch (err) {
      // A timed-out ioctl still runs on the pool: the fd is closed only once it returned.
      if (err instanceof KernelTimeoutError && entry.probing === probing) entry.probing = err.returned;
      throw err;
    }
    if (entry.probing === probing) entry.probing = null;
    return "answered";
  }

  /**
   * NVML's recovery action DRAIN_P2P: NVIDIA's recovery guide wants UVM persistence dropped
   * before the driver can go on. Closes the GPU's UVM fd (for good); the node stays held. The
   * next hold of the GPU (after a reset) registers again.
   */
  dropUvm(gpu: Gpu, why: string): Promise<void> {
    return this.#serial(gpu, async (entry) => {
      const fd = entry.uvmFd;
      if (fd === null) return;
      entry.uvmFd = null;
      entry.uvm = "off";
      await this.#o.effects
        .close(fd, true)
        .catch((err) => this.#note(entry, "warn", `closing the UVM fd: ${errorText(err)}`));
      this.#note(entry, "warn", `UVM registration dropped: ${why}`);
    });
  }

  recordXid(gpu: Gpu, xid: number): void {
    const entry = this.#entry(gpu);
    entry.xids.set(xid, (entry.xids.get(xid) ?? 0) + 1);
  }

  /** After the NVML session was started again: its handles are new. */
  async refreshHandles(nvml: Nvml): Promise<void> {
    await Promise.all(
      this.#gpus.map(async (gpu) => {
        if (gpu.pci === null) return;
        try {
          gpu.handle = await nvml.handleByPciBusId(formatPciAddress(gpu.pci));
        } catch (err) {
          // The old session's handle means nothing now: NVML is not asked about this GPU.
          gpu.handle = null;
          this.#note(gpu, "warn", `cannot look the GPU up again after the NVML session restarted: ${errorText(err)}`);
        }
      }),
    );
  }

  /**
   * At stop: closes every node now, without waiting for queued transitions; none opens
   * after. Under systemd the fd store keeps holding them: a restart finds them there, and a
   * stop for good flushes the store.
   */
  releaseAll(): void {
    this.#closed = true;
    for (const gpu of this.#gpus) {
      const { fd, uvmFd } = gpu;
      if (fd === null) continue;
      gpu.fd = null;
      gpu.uvmFd = null;
      gpu.uvm = "off";
      if (uvmFd !== null) this.#o.effects.closeNow(uvmFd);
      this.#o.effects.closeNow(fd);
      this.#move(gpu, "identified", "debug", "released the GPU: the daemon stops");
    }
  }
}
