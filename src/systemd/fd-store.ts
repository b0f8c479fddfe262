// systemd's file descriptor store, for what must outlive the daemon's process: the fds
// that hold GPUs (so a restart, a crash or an upgrade never lets a GPU go) and a small
// state record (which GPUs a client released, so that they stay released across a restart).
// PID 1 keeps them across restarts and soft reboots (FileDescriptorStorePreserve=yes); the
// daemon empties the store itself when it stops for good (stop-kind.ts).
// Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
import { closeSync, fstatSync, readSync, writeSync } from "node:fs";
import { memoryFile } from "../../native-bindings/libc.js";
import type { PassedFd } from "./listen-fds.js";
import type { SystemdNotifier } from "./notify.js";

export const STATE_FD_NAME = "state";
/** The longest state record read back: PCI addresses of released GPUs. */
const STATE_MAX_BYTES = 64 * 1024;

/** A GPU as the previous run identified it, for a start where NVML cannot (a version mismatch). */
export interface KeptGpu {
  busId: string;
  minor: number;
  uuid: string;
  name: string;
}

/** What the previous run recorded. */
export interface KeptState {
  /** PCI bus ids (NVML's form) of GPUs released at a client's request. */
  released: string[];
  gpus: KeptGpu[];
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

  /** Hands a copy of `fd` to PID 1 under `name` (replacing nothing: names are per GPU). */
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

/** Reads a state record handed back; Error saying what is wrong with it otherwise. */
export function readKeptState(fd: number): KeptState {
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
  return { released, gpus };
}
