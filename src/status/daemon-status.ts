// The one status type: what the daemon answers on its control socket, and what `status`,
// `doctor`, the metrics and the tests read. Clients validate it at run time, so a daemon of
// another version is named as such instead of being misread.

import { numaStatusName } from "../../native-bindings/nvidia-kernel.js";
import { NvmlError } from "../../native-bindings/nvml-errors.js";
import { describeError } from "../gpu/describe-error.js";
import {
  type Claim,
  type Gpu,
  type GpuState,
  hasCoherentMemory,
  type PersistenceReading,
  type UvmState,
} from "../gpu/gpu-registry.js";
import type { GpuReadings } from "../health/gpu-telemetry.js";
import type { RecoveryAction } from "../health/recovery-action.js";
import { formatPciAddress } from "../selection/pci-address.js";

/** Bumped whenever a field changes meaning or disappears. */
export const STATUS_FORMAT = 2;

/** What the daemon knows of a GPU beyond its registry entry (src/daemon/gpu-facts.ts). */
export interface GpuFacts {
  /**
   * The configuration wants the GPU held: selected, and persistence mode on. A GPU selected
   * but not wanted is deliberately not persistent (persistenceMode false), never a fault.
   */
  wanted: boolean;
  /** When the GPU entered its present state (ISO 8601): released since, lost at, failed at. */
  since: string | null;
  /**
   * Who released it, while released, and since when: a lease's client (`release -- COMMAND`,
   * by PID) or a plain release (RPC Set, `release`, by uid; null when recorded by an older version).
   */
  releasedBy: { kind: "lease" | "request"; uid: number | null; pid: number | null; since: string } | null;
  /** What an admin does about a GPU lost, failed or released (null: nothing to do). */
  fix: string | null;
}

export interface GpuStatus extends GpuFacts {
  index: number;
  uuid: string;
  name: string;
  /** NVML's form, `00000000:1B:00.0`; "" when the GPU could not be identified. */
  pciBusId: string;
  minor: number;
  state: GpuState;
  claims: Claim[];
  selected: boolean;
  /** The daemon keeps the GPU's node open. */
  held: boolean;
  lost: boolean;
  /**
   * The persistence mode as NVML's clients read it: the driver's legacy flag combined with the
   * daemon's RPC answer (enabled while it holds the GPU for persistence).
   */
  persistence: PersistenceReading;
  /** The driver's legacy flag, set by someone before the daemon: it keeps the GPU initialised anyway. */
  legacyFlag: PersistenceReading;
  xids: Record<string, number>;
  /** Why the GPU is not as wanted, as one line (NVML's error name first where NVML said so). */
  error: string | null;
  /** NVML's error name behind `error` (NVML_ERROR_NO_PERMISSION), when NVML said so. */
  errorCode: string | null;
  /** The UVM registration kept with the GPU (--uvm-persistence-mode), and why it failed. */
  uvm: UvmState;
  uvmError: string | null;
  /** Coherent memory as a NUMA node (GH200, GB200): null for GPUs without it or not yet opened. */
  numa: { nid: number; status: string; autoOnline: boolean; memSizeBytes: number } | null;
  /** Power draw in watts as the last health round read it while held; null when unknown or not supported. */
  powerWatts: number | null;
  /** Performance state, 0 (P0) to 15, as last read while held; null when unknown. */
  pstate: number | null;
  /** Energy the GPU used since the daemon held it, in joules; null when unknown or not supported. */
  energyJoules: number | null;
  /**
   * What the daemon paid to initialise the GPU at its first attach: "paid" (initSeconds says
   * how long), "already-initialised" (another holder, the legacy flag or the previous run kept
   * it up), "unknown" (not measured: no NVML at start).
   */
  initialisation: GpuReadings["initialisation"];
  initSeconds: number | null;
  /**
   * NVML's recovery action as the driver last reported it: "none", "gpu-reset",
   * "node-reboot", "drain-p2p", "drain-and-reset" ("action-N" for one this version does not
   * know); null where the driver does not report it.
   */
  recoveryAction: RecoveryAction | null;
}

export interface DaemonStatus {
  format: typeof STATUS_FORMAT;
  pid: number;
  version: string;
  simulated: boolean;
  dryRun: boolean;
  uid: number;
  /** READY=1 was sent: every selected GPU has settled. */
  ready: boolean;
  /** False while a GPU released at a client's request must not be pinned by an NVML session. */
  nvmlSession: boolean;
  /**
   * Set while NVML cannot start because its libraries and the loaded kernel module differ:
   * the GPUs held stay held, watched through their nodes. Null otherwise.
   */
  nvmlDegraded: { libraryVersion: string | null; moduleVersion: string | null; message: string } | null;
  rpcRequests: number;
  /** The running configuration's persistenceMode: false holds no GPU, deliberately. */
  persistenceMode: boolean;
  /** The running configuration's --devices selectors that match no GPU here: each is a missing GPU. */
  unmatchedSelectors: string[];
  /** The last reload (SIGHUP): when, and why it was refused (null: applied). Null before any. */
  lastReload: { at: string; refused: string | null } | null;
  /** Bytes, from process.memoryUsage(): external is what koffi and buffers hold outside V8's heap. */
  memory: { rss: number; heapUsed: number; external: number };
  devices: GpuStatus[];
}

/** What RPC Get answers for the GPU: the daemon holds it for persistence. */
export function rpcPersistence(gpu: Gpu): boolean {
  return gpu.state === "held" && gpu.claims.has("persistence");
}

/** NVML's answer to its clients: the legacy flag, or the daemon's RPC answer. */
function persistenceAsNvmlReports(gpu: Gpu): PersistenceReading {
  if (rpcPersistence(gpu) || gpu.legacyFlag === "enabled") return "enabled";
  return gpu.legacyFlag;
}

export function gpuStatus(gpu: Gpu, facts: GpuFacts, readings: GpuReadings): GpuStatus {
  const fault = gpu.fault;
  return {
    ...facts,
    index: gpu.index,
    uuid: gpu.uuid,
    name: gpu.name,
    pciBusId: gpu.pci ? formatPciAddress(gpu.pci) : "",
    minor: gpu.minor,
    state: gpu.state,
    claims: [...gpu.claims],
    selected: gpu.selected,
    held: gpu.state === "held",
    lost: gpu.state === "lost",
    persistence: persistenceAsNvmlReports(gpu),
    legacyFlag: gpu.legacyFlag,
    xids: Object.fromEntries([...gpu.xids].map(([xid, n]) => [String(xid), n])),
    error: fault ? describeError(fault) : null,
    errorCode: fault instanceof NvmlError ? fault.codeName : null,
    uvm: gpu.uvm,
    uvmError: gpu.uvmFault ? describeError(gpu.uvmFault) : null,
    numa:
      gpu.numa && hasCoherentMemory(gpu)
        ? {
            nid: gpu.numa.nid,
            status: numaStatusName(gpu.numa.status),
            autoOnline: gpu.numa.useAutoOnline,
            memSizeBytes: Number(gpu.numa.memSizeBytes),
          }
        : null,
    ...readings,
  };
}

/** The node's draw now, over the GPUs held that report it; null when none does. */
export function heldDrawWatts(devices: readonly GpuStatus[]): number | null {
  const drawing = devices.filter((d) => d.held && d.powerWatts !== null);
  return drawing.length === 0 ? null : drawing.reduce((sum, d) => sum + (d.powerWatts ?? 0), 0);
}

type Shape = "number" | "string" | "boolean" | "string|null" | "number|null" | "object" | "object|null";

const GPU_SHAPE: Record<keyof GpuStatus, Shape> = {
  index: "number",
  uuid: "string",
  name: "string",
  pciBusId: "string",
  minor: "number",
  state: "string",
  claims: "object",
  selected: "boolean",
  held: "boolean",
  lost: "boolean",
  persistence: "string",
  legacyFlag: "string",
  xids: "object",
  error: "string|null",
  errorCode: "string|null",
  uvm: "string",
  uvmError: "string|null",
  numa: "object|null",
  wanted: "boolean",
  since: "string|null",
  releasedBy: "object|null",
  fix: "string|null",
  powerWatts: "number|null",
  pstate: "number|null",
  energyJoules: "number|null",
  initialisation: "string",
  initSeconds: "number|null",
  recoveryAction: "string|null",
};

const DAEMON_SHAPE: Record<Exclude<keyof DaemonStatus, "devices">, Shape> = {
  format: "number",
  pid: "number",
  version: "string",
  simulated: "boolean",
  dryRun: "boolean",
  uid: "number",
  ready: "boolean",
  nvmlSession: "boolean",
  nvmlDegraded: "object|null",
  rpcRequests: "number",
  persistenceMode: "boolean",
  unmatchedSelectors: "object",
  lastReload: "object|null",
  memory: "object",
};

function mismatch(shape: Record<string, Shape>, value: Record<string, unknown>): string | null {
  for (const [key, want] of Object.entries(shape)) {
    const v = value[key];
    const ok =
      want === "string|null" || want === "number|null"
        ? v === null || typeof v === want.slice(0, -5)
        : want === "object|null"
          ? typeof v === "object"
          : want === "object"
            ? typeof v === "object" && v !== null
            : typeof v === want;
    if (!ok) return `'${key}' is ${v === undefined ? "missing" : JSON.stringify(v)}, expected ${want}`;
  }
  return null;
}

/**
 * Checks a status reply; throws an Error that names the daemon's version when it is not a
 * status this client understands (a daemon left running across an upgrade).
 */
export function parseDaemonStatus(value: unknown, clientVersion: string): DaemonStatus {
  const fail = (why: string): never => {
    const daemon =
      typeof value === "object" && value !== null && typeof (value as { version?: unknown }).version === "string"
        ? `gpu-persistd ${(value as { version: string }).version}`
        : "the running daemon";
    throw new Error(
      `${daemon} answered a status that this gpu-persistd ${clientVersion} cannot read (${why}); ` +
        "restart the daemon after an upgrade (systemctl restart gpu-persistd)",
    );
  };
  if (typeof value !== "object" || value === null) return fail("not a JSON object");
  const record = value as Record<string, unknown>;
  if (record.format !== STATUS_FORMAT) return fail(`status format ${String(record.format)}, expected ${STATUS_FORMAT}`);
  const top = mismatch(DAEMON_SHAPE, record);
  if (top) return fail(top);
  if (!Array.isArray(record.devices)) return fail("'devices' is not a list");
  for (const [i, d] of record.devices.entries()) {
    if (typeof d !== "object" || d === null) return fail(`device ${i} is not an object`);
    const bad = mismatch(GPU_SHAPE, d as Record<string, unknown>);
    if (bad) return fail(`device ${i}: ${bad}`);
  }
  return value as DaemonStatus;
}
