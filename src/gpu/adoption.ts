// What systemd hands back at start (LISTEN_FDS): the fds the previous run kept in the fd
// store (each GPU's node and UVM registration, each lease's pidfd, and the state record) and
// the socket units' listening sockets. Each is checked before it is used: a GPU's fd must be
// its node (the NVIDIA character device of its minor, or the simulator's stand-in for it), a
// lease's a pidfd; anything that fits nothing is closed, dropped from the store, and logged
// with the reason.
import { closeSync, fstatSync, readlinkSync, type Stats, statSync } from "node:fs";
import { join } from "node:path";
import { unixSocketPath } from "../../native-bindings/libc.js";
import type { Log } from "../log.js";
import { formatPciAddress, type PciAddress, parsePciAddress, samePciDevice } from "../selection/pci-address.js";
import { type FdStore, type KeptState, readKeptState, STATE_FD_NAME } from "../systemd/fd-store.js";
import type { PassedFd } from "../systemd/listen-fds.js";
import { deviceNodePath } from "./device-node.js";
import type { Identity } from "./gpu-model.js";

/** The NVIDIA driver's character-device major for /dev/nvidiaN and /dev/nvidiactl. */
const NVIDIA_MAJOR = 195;

/** The fd store's name for a GPU's node or UVM fd: the PCI address (FDNAME may not hold ':'). */
export function fdName(kind: "gpu" | "uvm", pci: PciAddress): string {
  return `${kind}-${formatPciAddress(pci).replaceAll(":", "-")}`;
}

export interface Handed {
  /** By GPU index: the fd on its node, and the one carrying its UVM registration. */
  nodes: Map<number, number>;
  uvm: Map<number, number>;
  /** Listening sockets from the socket unit, by the path they are bound to. */
  sockets: Map<string, number>;
  /** Pidfds on the clients of leases in force at the restart, by PID (release-leases.ts). */
  leases: Map<number, number>;
}

export interface AdoptOptions {
  /** Where the GPUs' nodes are (/dev, or the simulator's stand-ins). */
  deviceDir: string;
  simulated: boolean;
  store: FdStore;
  log: Log;
  /** The unix socket paths this daemon serves: a handed socket bound elsewhere is closed. */
  socketPaths: readonly string[];
}

const major = (rdev: number) => Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn);
const minor = (rdev: number) => Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn);

function sameFile(a: Stats, b: Stats): boolean {
  return a.dev === b.dev && a.ino === b.ino;
}

/** Why `st` is not GPU `minorNumber`'s node, or null when it is. */
function nodeProblem(st: Stats, minorNumber: number, o: AdoptOptions): string | null {
  if (o.simulated) {
    const path = deviceNodePath(o.deviceDir, minorNumber);
    try {
      return sameFile(st, statSync(path)) ? null : `it is not the simulator's stand-in ${path}`;
    } catch {
      return `the stand-in ${path} does not exist`;
    }
  }
  if (!st.isCharacterDevice()) return "it is not a character device";
  if (major(st.rdev) !== NVIDIA_MAJOR || minor(st.rdev) !== minorNumber) {
    return `it is device ${major(st.rdev)}:${minor(st.rdev)}, not ${NVIDIA_MAJOR}:${minorNumber}`;
  }
  return null;
}

/** Whether `fd` is a pidfd ("anon_inode:[pidfd]", or pidfs' "pidfd:[...]" from Linux 6.9). */
function isPidfd(fd: number): boolean {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`).includes("pidfd");
  } catch {
    return false;
  }
}

/** Why `st` is not nvidia-uvm, or null when it is. */
function uvmProblem(st: Stats, o: AdoptOptions): string | null {
  const path = join(o.deviceDir, "nvidia-uvm");
  let uvm: Stats;
  try {
    uvm = statSync(path);
  } catch {
    return `${path} does not exist`;
  }
  const fits = o.simulated ? sameFile(st, uvm) : st.isCharacterDevice() && st.rdev === uvm.rdev;
  return fits ? null : `it is not ${path}`;
}

/**
 * The state record the previous run kept, read (and its fd closed) before anything else:
 * which GPUs were released, and the GPUs themselves. Null when none was handed over; a
 * record that cannot be read is dropped from the store, with a warning saying why. Should
 * more than one come back, the newest (the last) is read and every one is closed.
 */
export function keptState(passed: readonly PassedFd[], store: FdStore, log: Log): KeptState | null {
  const records = passed.filter((p) => p.name === STATE_FD_NAME);
  const record = records.at(-1);
  if (!record) return null;
  try {
    const { state, malformed } = readKeptState(record.fd);
    if (malformed > 0) log.warn(`dropped ${malformed} malformed GPU intents from the state record systemd handed back`);
    return state;
  } catch (err) {
    log.warn(`dropped the state record systemd handed back: ${(err as Error).message}`);
    store.drop(STATE_FD_NAME);
    return null;
  } finally {
    for (const { fd } of records) closeSync(fd);
    if (records.length > 1) log.warn(`systemd handed back ${records.length} state records: read the last, closed all`);
  }
}

/**
 * Sorts what systemd handed over by what it is for, against the GPUs NVML identified. Every
 * fd that fits nothing is closed and dropped from the store, with a warning saying why.
 */
export function adoptHanded(passed: readonly PassedFd[], gpus: readonly (Identity | Error)[], o: AdoptOptions): Handed {
  const handed: Handed = { nodes: new Map(), uvm: new Map(), sockets: new Map(), leases: new Map() };
  const byPci = (pci: string) => {
    const address = parsePciAddress(pci);
    const index = address ? gpus.findIndex((g) => !(g instanceof Error) && samePciDevice(g.pci, address)) : -1;
    return index;
  };
  /** Names under which a wrong fd came back: dropped from the store once sorting is done. */
  const rejected = new Set<string>();
  const kept = new Map<string, number>();
  for (const { fd, name } of passed) {
    if (name === STATE_FD_NAME) continue; // read (and closed) first, by keptState()
    const reject = (why: string): void => {
      o.log.warn(`closed the file descriptor systemd handed back as '${name}': ${why}`);
      closeSync(fd);
      if (name !== "unknown") rejected.add(name);
    };
    let st: Stats;
    try {
      st = fstatSync(fd);
    } catch (err) {
      o.log.warn(`file descriptor ${fd} ('${name}') handed back by systemd cannot be read: ${(err as Error).message}`);
      continue;
    }
    if (st.isSocket()) {
      const path = unixSocketPath(fd);
      if (!path) reject("it is a socket, but not a listening unix socket");
      else if (!o.socketPaths.includes(path)) reject(`it is bound to ${path}, which this daemon does not serve`);
      else if (handed.sockets.has(path)) reject(`another socket bound to ${path} came back first`);
      else handed.sockets.set(path, fd);
      continue;
    }
    const lease = /^lease-([1-9][0-9]{0,9})$/.exec(name);
    if (lease) {
      const pid = Number(lease[1]);
      if (!isPidfd(fd)) reject("it is not a pidfd");
      else if (handed.leases.has(pid)) reject("another fd came back under the same name");
      else {
        handed.leases.set(pid, fd);
        kept.set(name, fd);
      }
      continue;
    }
    const match = /^(gpu|uvm)-([0-9a-fA-F]{1,8})-([0-9a-fA-F]{2})-([0-9a-fA-F]{2})\.0$/.exec(name);
    const index = match ? byPci(`${match[2]}:${match[3]}:${match[4]}.0`) : -1;
    const gpu = gpus[index];
    if (!match || index < 0 || gpu === undefined || gpu instanceof Error) {
      reject(match ? "no GPU with that PCI address is present" : "the name is not one gpu-persistd stores");
      continue;
    }
    const kind = match[1] === "gpu" ? handed.nodes : handed.uvm;
    const problem = match[1] === "gpu" ? nodeProblem(st, gpu.minor, o) : uvmProblem(st, o);
    if (problem) reject(problem);
    else if (kind.has(index)) reject("another fd came back under the same name");
    else {
      kind.set(index, fd);
      kept.set(name, fd);
    }
  }
  // PID 1 drops every fd of a name at once: the right one, if any, goes back in alone.
  for (const name of rejected) {
    o.store.drop(name);
    const fd = kept.get(name);
    if (fd !== undefined) o.store.keep(name, fd);
  }
  return handed;
}
