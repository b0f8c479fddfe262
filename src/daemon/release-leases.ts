// Releases that last as long as a client process (`gpu-persistd release GPU... -- COMMAND`):
// a lease is an intent on each of its GPUs (intents.ts), owned by the client's PID. While the
// daemon runs, the lease ends with the client's control connection. Each lease also keeps a
// pidfd on its client in systemd's fd store, so that a restart, a crash or an upgrade of the
// daemon during COMMAND (a GPU reset, say) keeps the GPUs released: the next run resumes the
// lease from the state record and ends it once that process has ended (polled once a second,
// and only while such a lease exists). A GPU is in at most one lease; a plain release during a
// lease outlives it; a hold during a lease is refused (see rpc-adapter.ts).
import { closeSync } from "node:fs";
import { pidfdOpen, readableNow } from "../../native-bindings/libc.js";
import type { Gpu } from "../gpu/gpu-registry.js";
import type { Log } from "../log.js";
import type { FdStore } from "../systemd/fd-store.js";
import { type ChangeParts, changeIntents } from "./intent-change.js";

/** How often a lease resumed from the previous run looks at its client. */
const ORPHAN_CHECK_MS = 1000;

/** The fd store's name for the pidfd of lease client `pid`. */
export function leaseFdName(pid: number): string {
  return `lease-${pid}`;
}

export class ReleaseLeases {
  readonly #store: FdStore;
  readonly #log: Log;
  /** Each lease's pidfd, by its client's PID (none where pidfd_open failed). */
  readonly #pidfds = new Map<number, number>();
  /** Leases resumed from the previous run: no connection ends them, their pidfd does. */
  readonly #orphans = new Set<number>();
  #timer: NodeJS.Timeout | null = null;
  #stopped = false;

  constructor(store: FdStore, log: Log) {
    this.#store = store;
    this.#log = log;
  }

  /**
   * Releases `gpus` for client `pid` (answered once nothing of ours pins them); the problem
   * when it could not be done whole (nothing is released then). A GPU already in a lease
   * fails it at once, naming that lease.
   */
  async open(parts: ChangeParts, gpus: readonly Gpu[], pid: number): Promise<string | null> {
    for (const gpu of gpus) {
      const other = parts.reconciler.intentsOf(gpu).lease;
      if (other) {
        return `GPU ${gpu.index} is already released by another 'gpu-persistd release' (pid ${other.pid}, since ${other.since.toISOString()}); it is held again when that one ends`;
      }
    }
    const since = new Date();
    const outcome = changeIntents(parts, gpus, () => ({ lease: { pid, since } }), true);
    this.#keepPidfd(pid);
    const { problem } = await outcome;
    if (
      problem !== null &&
      !parts.reconciler.registry.list().some((g) => parts.reconciler.intentsOf(g).lease?.pid === pid)
    )
      this.#dropPidfd(pid);
    return problem;
  }

  /**
   * Ends client `pid`'s lease on `gpus` (all of its GPUs when not named): each is then as its
   * other intents want it. The pidfd goes once no GPU is leased by `pid` any more.
   */
  async close(parts: ChangeParts, pid: number, gpus?: readonly Gpu[]): Promise<void> {
    // At stop the lease stays recorded, and its pidfd in the store, for the next run.
    if (this.#stopped) return;
    const { reconciler } = parts;
    const ending = (gpus ?? reconciler.registry.list()).filter((g) => reconciler.intentsOf(g).lease?.pid === pid);
    for (const gpu of ending) reconciler.change(gpu, { lease: null });
    if (!this.#leases(parts, pid)) this.#dropPidfd(pid);
    await Promise.all(ending.map((gpu) => reconciler.reconcile(gpu)));
    await parts.coordinator.settle();
  }

  /**
   * At start-up, for a lease the state record names: whether its client still runs, by the
   * pidfd the previous run kept (undefined: none came back, so nobody can tell, and the GPUs
   * are held again). A live one is watched from watchOrphans() on.
   */
  resume(pid: number, pidfd: number | undefined): boolean {
    if (pidfd === undefined) {
      this.#log.warn(
        `the release by PID ${pid} ('gpu-persistd release -- COMMAND') was in force at the restart, but its pidfd did not come back from systemd's fd store: holding its GPUs again`,
      );
      return false;
    }
    this.#pidfds.set(pid, pidfd);
    if (readableNow(pidfd)) {
      this.#log.info(`PID ${pid} ended while the daemon restarted: its release ends, its GPUs are held again`);
      this.#dropPidfd(pid);
      return false;
    }
    this.#orphans.add(pid);
    this.#log.info(`PID ${pid} still runs: its GPUs stay released until it ends ('gpu-persistd release -- COMMAND')`);
    return true;
  }

  /** Starts looking at the resumed leases' clients, once a second, while any is left. */
  watchOrphans(parts: ChangeParts): void {
    if (this.#orphans.size === 0 || this.#timer) return;
    this.#timer = setInterval(() => void this.checkOrphans(parts), ORPHAN_CHECK_MS);
    this.#timer.unref();
  }

  /** Ends every resumed lease whose client has ended (the watch's tick; tests call it too). */
  async checkOrphans(parts: ChangeParts): Promise<void> {
    for (const pid of this.#orphans) {
      const pidfd = this.#pidfds.get(pid);
      if (pidfd !== undefined && !readableNow(pidfd)) continue;
      this.#orphans.delete(pid);
      this.#log.info(`PID ${pid} ended: its release ends, its GPUs are held again as configured`);
      await this.close(parts, pid);
    }
    if (this.#orphans.size === 0 && this.#timer) {
      clearInterval(this.#timer);
      this.#timer = null;
    }
  }

  /**
   * At stop: no more watching, and no lease ends any more (the connections close with the
   * process): the pidfds stay in the store for the next run, or go with it for good.
   */
  stop(): void {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Whether client `pid` still leases any GPU. */
  #leases(parts: ChangeParts, pid: number): boolean {
    return parts.reconciler.registry.list().some((g) => parts.reconciler.intentsOf(g).lease?.pid === pid);
  }

  /**
   * Closes, and drops from the store, the pidfds the previous run kept that no recorded lease
   * named (the record was lost, or its GPU is not here): nobody can tell what they were for.
   */
  discardUnused(handed: ReadonlyMap<number, number>, resumed: ReadonlySet<number>): void {
    for (const [pid, fd] of handed) {
      if (resumed.has(pid)) continue;
      this.#log.warn(
        `closed the pidfd on PID ${pid} the previous run kept: no recorded release by it names a GPU here`,
      );
      this.#store.drop(leaseFdName(pid));
      closeSync(fd);
    }
  }

  /** A pidfd on the client, kept in the store; a lease without one still ends with its connection. */
  #keepPidfd(pid: number): void {
    // Without systemd's store nothing outlives the process: the connection is enough. One
    // pidfd serves every lease of the same client.
    if (!this.#store.enabled || this.#pidfds.has(pid)) return;
    let fd: number;
    try {
      fd = pidfdOpen(pid);
    } catch (err) {
      this.#log.warn(
        `the release by PID ${pid} cannot outlive a restart of the daemon: ${(err as Error).message}; it still ends with its connection`,
      );
      return;
    }
    this.#pidfds.set(pid, fd);
    this.#store.keep(leaseFdName(pid), fd);
  }

  #dropPidfd(pid: number): void {
    this.#orphans.delete(pid);
    const fd = this.#pidfds.get(pid);
    if (fd === undefined) return;
    this.#pidfds.delete(pid);
    this.#store.drop(leaseFdName(pid));
    closeSync(fd);
  }
}
