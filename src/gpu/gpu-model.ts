// The GPU as the rest of the daemon sees it: its states, its claims, what it reads, and the
// errors that say it is gone. The registry (gpu-registry.ts) is the only writer, on the
// reconciler's word (reconciler.ts) or the GPU's own fate (lost).
import type { NumaInfo } from "../../native-bindings/nvidia-kernel.js";
import type { DeviceHandle } from "../../native-bindings/nvml.js";
import type { PciAddress } from "../selection/pci-address.js";

/**
 * unidentified: NVML could not tell what the GPU is; identified: known, not held (not
 * selected, or not wanted); holding: its node is being opened; held: the daemon keeps its
 * node open; released: a client wants it free (a release or a lease: see intents.ts), and
 * nothing of the daemon's holds it; lost: it fell off the bus (a reset or reboot is
 * needed); failed: wanted, but it could not be held (see `fault`).
 */
export type GpuState = "unidentified" | "identified" | "holding" | "held" | "released" | "lost" | "failed";

/**
 * What keeps a GPU's node open, as the reconciler's target says; the node is held while any
 * claim is. "persistence": the persistence mode (the configuration's or a client's hold);
 * "numa": a client's NUMA request for a GPU with coherent memory (GH200), whose memory is a
 * NUMA node only while the GPU is initialised.
 */
export type Claim = "persistence" | "numa";

/** The UVM registration kept with a held GPU under --uvm-persistence-mode. */
export type UvmState = "off" | "registering" | "registered" | "failed";

/**
 * The driver's legacy persistence flag, as NVML reads it in the daemon's own process: our
 * RPC server closes our own connections unanswered, so NVML reports the kernel's flag alone
 * (docs/architecture.md, "How NVML reaches the daemon"). "unknown" until read.
 */
export type PersistenceReading = "enabled" | "disabled" | "unknown";

/** What NVML told about one GPU when the registry was made. */
export interface Identity {
  /** Null when the GPU is known without NVML (a version mismatch at start). */
  handle: DeviceHandle | null;
  uuid: string;
  name: string;
  pci: PciAddress;
  minor: number;
  /** How long the first handle look-up took (ms): a driver that attaches lazily initialises the GPU there. */
  lookUpMs?: number;
}

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
  /** Set by someone before the daemon (it never sets it): it keeps the GPU initialised whatever the daemon does. */
  readonly legacyFlag: PersistenceReading;
  /** Xid events seen since start, by Xid number. */
  readonly xids: ReadonlyMap<number, number>;
  /** Why the GPU is not as wanted: NvmlError, NvmlTimeoutError, DeviceNodeError, KernelCallError or GpuLostError. */
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

/** NVML, an Xid or the driver said the GPU is gone; `cause` is the error that said so. */
export class GpuLostError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "GpuLostError";
  }
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
