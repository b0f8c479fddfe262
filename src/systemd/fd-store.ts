// systemd's file descriptor store, for what must outlive the daemon's process: the fds
// that hold GPUs (so a restart, a crash or an upgrade never lets a GPU go), a pidfd on each
// lease's client, and a small state record (every GPU's intents, so that a restart resumes
// them: a client's release or hold, a NUMA request, a lease).
// PID 1 keeps them across restarts and soft reboots (FileDescriptorStorePreserve=yes); the
// daemon empties the store itself when it stops for good (stop-kind.ts).
// Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
import { closeSync, fstatSync, readSync, writeSync } from "node:fs";
import { memoryFile } from "../../native-bindings/libc.js";
import type { PassedFd } from "./listen-fds.js";
import type { SystemdNotifier } from "./notify.js";

export const STATE_FD_NAME = "state";
/** The longest state record read back: the GPUs, their intents and what was released. */
const STATE_MAX_BYTES = 256 * 1024;

/** A GPU as the previous run identified it, for a start where NVML cannot (a version mismatch). */
export interface KeptGpu {
  busId: string;
  minor: number;
  uuid: string;
  name: string;
}

/** One GPU's intents (src/gpu/intents.ts), by its PCI bus id; times in ISO 8601. */
export interface KeptIntents {
  busId: string;
  client?: { mode: "hold" | "release"; uid: number | null; since: string };
  numa?: { uid: number | null; since: string };
  lease?: { pid: number; since: string };
}

/** What the previous run recorded. */
export interface KeptState {
  /**
   * PCI bus ids (NVML's form) of GPUs a client released. Written for a downgrade's sake, read
   * only from a record without `intents` (one an earlier version wrote at an upgrade).
   */
  released: string[];
  gpus: KeptGpu[];
  /** Every GPU's intents that are not the configuration's alone. */
  intents?: KeptIntents[];
}

/**
 * The names under which systemd handed back what its store kept: every passed fd but the
 * socket unit's listening sockets (which are not in the store), and those without a name.
 */
export function storedNames(passed: readonly PassedFd[]): string[] {
  return passed
    .filter(({ fd, name }) => {
      if (name === "unknown") return false;
      try {
        return !fstatSync(fd).isSocket();
      } catch {
        return false;
      }
    })
    .map((p) => p.name);
}

export class FdStore {
  readonly #notifier: SystemdNotifier;
  /** What the store holds for this unit now, by name: handed back at start, or kept since. */
  readonly #names: Set<string>;

  /** `handedBack`: the names the store held at start (storedNames()). */
  constructor(notifier: SystemdNotifier, handedBack: readonly string[] = []) {
    this.#notifier = notifier;
    this.#names = new Set(handedBack);
  }

  get enabled(): boolean {
    return this.#notifier.enabled;
  }

  /** Hands a copy of `fd` to PID 1 under `name` (replacing nothing: names are per GPU and per lease). */
  keep(name: string, fd: number): void {
    // FDPOLL=0: PID 1 must not drop a GPU's fd on a hang-up it reports; nvidia-uvm and the
    // simulator's stand-ins cannot be polled at all.
    if (this.#notifier.storeFd(name, fd, false)) this.#names.add(name);
  }

  /** PID 1 closes its copies of `name`. */
  drop(name: string): void {
    this.#notifier.removeFd(name);
    this.#names.delete(name);
  }

  /** PID 1 closes everything it holds for this unit: the stop is for good. */
  dropAll(): void {
    for (const name of [...this.#names]) this.drop(name);
  }

  /** Replaces the state record. */
  keepState(state: KeptState): void {
    if (!this.enabled) return;
    const fd = memoryFile("gpu-persistd-state");
    try {
      writeSync(fd, JSON.stringify(state));
      this.drop(STATE_FD_NAME);
      this.keep(STATE_FD_NAME, fd);
    } finally {
      closeSync(fd);
    }
  }
}

/**
 * Reads a state record handed back, and how many of its GPU intents were malformed (dropped,
 * the rest kept); Error saying what is wrong with it when the record itself is unusable.
 */
export function readKeptState(fd: number): { state: KeptState; malformed: number } {
  const buffer = Buffer.alloc(STATE_MAX_BYTES);
  const length = readSync(fd, buffer, 0, buffer.length, 0);
  let value: unknown;
  try {
    value = JSON.parse(buffer.subarray(0, length).toString("utf8"));
  } catch {
    throw new Error("the state record is not JSON");
  }
  const { released, gpus } = (value ?? {}) as Partial<KeptState>;
  if (!Array.isArray(released) || !released.every((p) => typeof p === "string")) {
    throw new Error('the state record has no "released" list of PCI bus ids');
  }
  const gpu = (g: KeptGpu) =>
    typeof g?.busId === "string" &&
    Number.isInteger(g.minor) &&
    typeof g.uuid === "string" &&
    typeof g.name === "string";
  if (!Array.isArray(gpus) || !gpus.every(gpu)) throw new Error('the state record has no "gpus" list');
  const { intents } = value as Partial<KeptState>;
  if (intents === undefined) return { state: { released, gpus }, malformed: 0 };
  if (!Array.isArray(intents)) throw new Error('the state record\'s "intents" is not a list');
  const valid = intents.filter(keptIntents);
  return { state: { released, gpus, intents: valid }, malformed: intents.length - valid.length };
}

const isTime = (t: unknown): boolean => typeof t === "string" && !Number.isNaN(Date.parse(t));
const isUid = (u: unknown): boolean => u === null || (Number.isInteger(u) && (u as number) >= 0);

function keptIntents(i: KeptIntents): boolean {
  if (typeof i?.busId !== "string") return false;
  const { client, numa, lease } = i;
  if (
    client !== undefined &&
    !(["hold", "release"].includes(client?.mode) && isUid(client.uid) && isTime(client.since))
  )
    return false;
  if (numa !== undefined && !(isUid(numa?.uid) && isTime(numa.since))) return false;
  return lease === undefined || (Number.isInteger(lease?.pid) && lease.pid > 0 && isTime(lease.since));
}
