// Whether the NVML session is open follows from the registry's state: it is open unless a
// GPU is released at a client's request (an open session attaches every GPU, so it would
// pin the released one). This coordinator alone closes and reopens it, one step at a time,
// with the watchers that use NVML on their own (the Xid event set) stopped before a close
// and started after a reopen. Adapters await settle() before they answer a client.
import type { Log } from "../log.js";
import { describeError } from "./describe-error.js";
import type { GpuRegistry } from "./gpu-registry.js";
import type { NvmlSession } from "./nvml-session.js";
import { isVersionMismatch, mismatchText, type VersionMismatch } from "./version-mismatch.js";

export interface SessionWatchers {
  /** Before nvmlShutdown: stop whatever calls NVML on its own. */
  beforeClose(): Promise<void>;
  /** After nvmlInit again: look the GPUs up again, start the Xid watch again. */
  afterOpen(): Promise<void>;
}

/** How the session stands once settled: `open` as wanted, or the reason it is not. */
export interface SessionState {
  open: boolean;
  wanted: boolean;
  /** Why the last close or reopen failed, while the session is not as wanted. */
  problem: string | null;
}

/** Names both versions when nvmlInit reports a version mismatch. */
export type DescribeMismatch = () => Promise<VersionMismatch>;

export class SessionCoordinator {
  readonly #session: NvmlSession;
  readonly #registry: GpuRegistry;
  readonly #log: Log;
  #watchers: SessionWatchers | null = null;
  #running: Promise<SessionState> | null = null;
  #again = false;
  #problem: string | null = null;
  /** NVML cannot start again while the old module stays loaded: no more nvmlInit is tried. */
  #mismatch: VersionMismatch | null = null;
  readonly #describeMismatch: DescribeMismatch;

  constructor(session: NvmlSession, registry: GpuRegistry, log: Log, describeMismatch: DescribeMismatch) {
    this.#session = session;
    this.#registry = registry;
    this.#log = log;
    this.#describeMismatch = describeMismatch;
    // Any GPU entering or leaving "released" may change what the session should be.
    registry.on("transition", (t) => {
      if (t.from === "released" || t.to === "released") void this.settle();
    });
  }

  /** The Xid watch, once it exists (start-up creates it after the coordinator). */
  setWatchers(watchers: SessionWatchers): void {
    this.#watchers = watchers;
  }

  /** Whether the session should be open now. */
  get wanted(): boolean {
    return !this.#registry.anyReleasedByRequest();
  }

  /** The version mismatch that keeps NVML from starting, once one was seen. */
  get mismatch(): VersionMismatch | null {
    return this.#mismatch;
  }

  /** nvmlInit failed at start with a version mismatch: the session stays closed for good. */
  degraded(mismatch: VersionMismatch): void {
    this.#mismatch = mismatch;
    this.#problem = mismatchText(mismatch);
  }

  get state(): SessionState {
    const open = this.#session.open;
    return { open, wanted: this.wanted, problem: open === this.wanted ? null : this.#problem };
  }

  /**
   * Closes or reopens the session until it is as the registry's state wants it, one step at
   * a time; resolves with the state reached. A step that fails leaves the session as it is
   * (`problem` says why); the next settle (a transition, a health round) tries again.
   */
  settle(): Promise<SessionState> {
    if (this.#running) {
      this.#again = true;
      return this.#running;
    }
    this.#running = this.#drain().finally(() => {
      this.#running = null;
    });
    return this.#running;
  }

  async #drain(): Promise<SessionState> {
    do {
      this.#again = false;
      const wanted = this.wanted;
      if (this.#session.open !== wanted && !(wanted && this.#mismatch)) {
        await (wanted ? this.#reopen() : this.#close());
        // A step that failed is tried once: a settle asked for meanwhile wanting the same waits for the next one.
        if (this.#problem !== null && this.wanted === wanted) break;
      }
    } while (this.#again || (this.#session.open !== this.wanted && this.#problem === null && !this.#mismatch));
    return this.state;
  }

  async #close(): Promise<void> {
    await this.#watchers?.beforeClose();
    try {
      await this.#session.close();
      this.#problem = null;
      this.#log.info("NVML session closed while a GPU is released; the held GPUs are watched through their own nodes");
    } catch (err) {
      this.#problem = `cannot end the NVML session: ${describeError(err)}`;
      if (this.#session.open) {
        this.#log.warn(`${this.#problem}; it stays open, so it still pins every GPU`);
        await this.#watchers?.afterOpen();
      } else {
        // nvmlShutdown itself failed: NVML holds nothing either way.
        this.#log.warn(this.#problem);
        this.#problem = null;
      }
    }
  }

  async #reopen(): Promise<void> {
    try {
      await this.#session.reopen(() => this.#watchers?.afterOpen() ?? Promise.resolve());
    } catch (err) {
      if (isVersionMismatch(err)) {
        this.degraded(await this.#describeMismatch());
        this.#log.error(`cannot reopen the NVML session: ${this.#problem}`);
        return;
      }
      const problem = `cannot reopen the NVML session: ${describeError(err)}`;
      if (problem !== this.#problem) {
        this.#log.error(
          `${problem}; the held GPUs stay held and watched through their nodes; retrying each health round`,
        );
      }
      this.#problem = problem;
      return;
    }
    this.#problem = null;
    this.#log.info("no GPU is released any more: NVML session reopened");
  }
}
