// Program 35006, versions 1 and 2: what NVML (nvidia-smi, pynvml, DCGM) asks the persistence
// daemon. Types and procedures as in NVIDIA's nvidia-persistenced source (its pre-generated
// rpcgen files, nvpd_rpc*), checked against driver 580's NVML client.
import type { PeerCredentials } from "../../native-bindings/peer-credentials.js";
import { formatPciAddress, type PciAddress } from "../selection/pci-address.js";
import { AcceptStat, acceptedReply, progMismatchReply, type RpcCall } from "./rpc-message.js";
import { XdrError, type XdrReader, XdrWriter } from "./xdr.js";

export const PERSISTENCE_PROGRAM = 35006;
export const LOWEST_VERSION = 1;
export const HIGHEST_VERSION = 2;

export const NvPdStatus = {
  SUCCESS: 0,
  DAEMON_NOT_PRESENT: 1,
  DEVICE_NOT_FOUND: 2,
  DRIVER: 3,
  INSUFFICIENT_RESOURCES: 4,
  INVALID_ARGUMENT: 5,
  IO: 6,
  PERMISSIONS: 7,
  RPC: 8,
  USER_NOT_FOUND: 9,
  NUMA_FAILURE: 10,
  UNKNOWN: 11,
} as const;
export type NvPdStatus = (typeof NvPdStatus)[keyof typeof NvPdStatus];

export const PROC_NULL = 0;
export const PROC_SET_PERSISTENCE = 1;
/** Version 1: get persistence mode; version 2: set NUMA status. */
export const PROC_2 = 2;

export interface PersistenceBackend {
  /** true: held (persistence on), false: released, null: no such GPU. */
  mode(address: PciAddress): boolean | null;
  /**
   * Holds or releases the GPU (with its NUMA status too for version 1) for client `peer`;
   * resolves the status to answer.
   */
  setMode(address: PciAddress, enabled: boolean, withNuma: boolean, peer: PeerCredentials): Promise<NvPdStatus>;
  /** NUMA online/offline for GPUs with coherent memory (a no-op on others); null: no such GPU. */
  setNuma(address: PciAddress, online: boolean, peer: PeerCredentials): Promise<NvPdStatus | null>;
}

/** Procedure names as metrics label them. */
export type ProcedureName = "null" | "set_persistence_mode" | "get_persistence_mode" | "set_numa_status" | "unknown";

export interface Handled {
  reply: Buffer;
  procedure: ProcedureName;
  /** How the call ended, for metrics: "ok", or what refused it (an NvPdStatus or AcceptStat, in lower case). */
  result: string;
  /** Set when the request was refused or malformed: what to log about the peer. */
  rejected?: string;
  /** Set when the request changed a GPU's state. */
  changed?: string;
  /** Set for queries: what was asked and answered, for the debug log. */
  answered?: string;
}

function readAddress(args: XdrReader): PciAddress {
  const domain = args.i32("domain");
  const bus = args.i32("bus");
  const device = args.i32("slot");
  // Read, then ignored by the backend's match, as the original does.
  const fn = args.i32("function");
  return { domain, bus, device, function: fn };
}

const status = (xid: number, value: number): Buffer =>
  acceptedReply(xid, AcceptStat.SUCCESS, new XdrWriter().i32(value).bytes());

function describe(address: PciAddress): string {
  return formatPciAddress({ ...address, function: 0 });
}

/** Answers one call for program 35006 (or says why not), deciding root-only from `peer`. */
export async function handlePersistenceCall(
  call: RpcCall,
  peer: PeerCredentials,
  backend: PersistenceBackend,
): Promise<Handled> {
  const { xid } = call;
  if (call.prog !== PERSISTENCE_PROGRAM) {
    return {
      reply: acceptedReply(xid, AcceptStat.PROG_UNAVAIL),
      procedure: "unknown",
      result: "prog_unavail",
      rejected: `unknown program ${call.prog}`,
    };
  }
  if (call.vers < LOWEST_VERSION || call.vers > HIGHEST_VERSION) {
    return {
      reply: progMismatchReply(xid, LOWEST_VERSION, HIGHEST_VERSION),
      procedure: "unknown",
      result: "prog_mismatch",
      rejected: `unsupported version ${call.vers}`,
    };
  }
  if (call.proc === PROC_NULL)
    return { reply: acceptedReply(xid, AcceptStat.SUCCESS), procedure: "null", result: "ok" };
  const isSet = call.proc === PROC_SET_PERSISTENCE;
  const isGet = call.proc === PROC_2 && call.vers === 1;
  const isNuma = call.proc === PROC_2 && call.vers === 2;
  if (!isSet && !isGet && !isNuma) {
    return {
      reply: acceptedReply(xid, AcceptStat.PROC_UNAVAIL),
      procedure: "unknown",
      result: "proc_unavail",
      rejected: `unknown procedure ${call.proc} of version ${call.vers}`,
    };
  }
  const procedure: ProcedureName = isSet ? "set_persistence_mode" : isGet ? "get_persistence_mode" : "set_numa_status";
  /** A reply carrying `value`, labelled with its status name. */
  const statusReply = (value: NvPdStatus, extra: Partial<Handled> = {}): Handled => ({
    reply: status(xid, value),
    procedure,
    result: resultName(value),
    ...extra,
  });
  let address: PciAddress;
  let value = 0;
  try {
    address = readAddress(call.args);
    if (!isGet) value = call.args.i32(isSet ? "mode" : "NUMA status");
  } catch (err) {
    if (!(err instanceof XdrError)) throw err;
    return {
      reply: acceptedReply(xid, AcceptStat.GARBAGE_ARGS),
      procedure,
      result: "garbage_args",
      rejected: `undecodable arguments: ${err.message}`,
    };
  }
  if (isGet) {
    const mode = backend.mode(address);
    const body =
      mode === null ? new XdrWriter().i32(NvPdStatus.DEVICE_NOT_FOUND) : new XdrWriter().i32(0).i32(mode ? 1 : 0);
    const answer = mode === null ? "DEVICE_NOT_FOUND" : mode ? "enabled" : "disabled";
    return {
      reply: acceptedReply(xid, AcceptStat.SUCCESS, body.bytes()),
      procedure,
      result: mode === null ? "device_not_found" : "ok",
      answered: `get persistence of ${describe(address)} (v${call.vers}): ${answer}`,
    };
  }
  const what = isSet
    ? `set persistence ${value === 1 ? "on" : "off"}`
    : `set NUMA ${value === 1 ? "online" : "offline"}`;
  if (peer.uid !== 0) {
    return statusReply(NvPdStatus.PERMISSIONS, {
      rejected: `${what} for ${describe(address)} refused: only root may change it`,
    });
  }
  if (value !== 0 && value !== 1) {
    return statusReply(NvPdStatus.INVALID_ARGUMENT, { rejected: `${what}: invalid value ${value}` });
  }
  if (isNuma) {
    const result = await backend.setNuma(address, value === 1, peer);
    return statusReply(result ?? NvPdStatus.DEVICE_NOT_FOUND);
  }
  const before = backend.mode(address);
  if (before === null) return statusReply(NvPdStatus.DEVICE_NOT_FOUND);
  const result = await backend.setMode(address, value === 1, call.vers === 1, peer);
  const after = backend.mode(address);
  return statusReply(
    result,
    before !== after ? { changed: `${describe(address)} ${after ? "held" : "released"} (pid ${peer.pid})` } : {},
  );
}

/** "ok" for SUCCESS, else the status's name in lower case ("permissions"). */
function resultName(value: NvPdStatus): string {
  if (value === NvPdStatus.SUCCESS) return "ok";
  const name = Object.entries(NvPdStatus).find(([, v]) => v === value)?.[0] ?? "unknown";
  return name.toLowerCase();
}
