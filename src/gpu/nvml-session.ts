// The NVML session: loading the library, nvmlInit (waiting for a late driver), and closing
// and reopening the session while a GPU is released at a client's request (an open session
// attaches, and so pins, every GPU). Opening and closing run one at a time. Nothing calls
// nvmlShutdown while another call is inside NVML: real NVML crashes then.
import { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlLoadError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_NO_PERMISSION } from "../../native-bindings/nvml-return-codes.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { fixes } from "../fixes.js";
import type { Log } from "../log.js";
import type { SystemdNotifier } from "../systemd/notify.js";
import { describeError } from "./describe-error.js";
import { initWhenDriverLoads } from "./driver-wait.js";
import type { SessionControl } from "./gpu-registry.js";

export interface SessionHooks {
  /** Before nvmlShutdown for a release: stop whatever calls NVML on its own (the Xid waiter). */
  beforeSuspend(): Promise<void>;
  /** After nvmlInit again: look the GPUs up again, restart the Xid waiter. */
  afterResume(): Promise<void>;
}

export class NvmlSession implements SessionControl {
  readonly nvml: Nvml;
  readonly #log: Log;
  #open = false;
  #hooks: SessionHooks | null = null;
  #queue: Promise<void> = Promise.resolve();
  /** How long a release waits for calls in flight before it leaves the session open. */
  idleLimitMs: number;

  constructor(nvml: Nvml, log: Log, idleLimitMs: number) {
    this.nvml = nvml;
    this.#log = log;
    this.idleLimitMs = idleLimitMs;
  }

  /** Loads the library; FatalError (69) naming the path and the fix when it cannot. */
  static load(path: string, timeoutMs: number, log: Log, idleLimitMs: number): NvmlSession {
    try {
      return new NvmlSession(Nvml.load(path, timeoutMs), log, idleLimitMs);
    } catch (err) {
      if (err instanceof NvmlLoadError) throw new FatalError(ExitCode.UNAVAILABLE, err.message);
      throw err;
    }
  }

  get open(): boolean {
    return this.#open;
  }

  setHooks(hooks: SessionHooks): void {
    this.#hooks = hooks;
  }

  /**
   * nvmlInit, waiting up to `driverWaitMs` for the driver to load. Throws FatalError: 77 when
   * NVML says we lack permission, 69 otherwise, each with the fix.
   */
  async start(driverWaitMs: number, notifier: SystemdNotifier): Promise<void> {
    try {
      await initWhenDriverLoads(this.nvml, driverWaitMs, this.#log, notifier);
    } catch (err) {
      if (err instanceof FatalError) throw err;
      const code = err instanceof NvmlError ? err.code : -1;
      const fix =
        code === NVML_ERROR_DRIVER_NOT_LOADED
          ? ` To fix: ${fixes.loadDriver}.`
          : code === NVML_ERROR_NO_PERMISSION
            ? ` To fix: ${fixes.runAsRoot}.`
            : "";
      throw new FatalError(
        code === NVML_ERROR_NO_PERMISSION ? ExitCode.NO_PERMISSION : ExitCode.UNAVAILABLE,
        `cannot initialise NVML from ${this.nvml.path}: ${describeError(err)}.${fix}`,
      );
    }
    this.#open = true;
  }

  #serial(step: () => Promise<void>): Promise<void> {
    const run = this.#queue.then(step);
    this.#queue = run.catch(() => {});
    return run;
  }

  suspend(): Promise<void> {
    return this.#serial(async () => {
      if (!this.#open) return;
      // No new calls from here; the Xid wait and any health call in flight must return first.
      this.#open = false;
      await this.#hooks?.beforeSuspend();
      if (!(await this.nvml.idle(this.idleLimitMs))) {
        this.#open = true;
        this.#log.warn("NVML calls are still in flight: the NVML session stays open, so it still pins every GPU");
        await this.#hooks?.afterResume();
        return;
      }
      try {
        await this.nvml.shutdown();
        this.#log.info("NVML session closed while a GPU is released; health checks pause until it is held again");
      } catch (err) {
        this.#log.warn(`nvmlShutdown failed: ${describeError(err)}`);
      }
    });
  }

  resume(): Promise<void> {
    return this.#serial(async () => {
      if (this.#open) return;
      try {
        await this.nvml.init();
      } catch (err) {
        this.#log.error(`cannot reopen the NVML session: ${describeError(err)}; health checks stay paused`);
        return;
      }
      this.#open = true;
      this.#log.info("every released GPU is held again: NVML session reopened, health checks resume");
      await this.#hooks?.afterResume();
    });
  }

  /**
   * At stop: nvmlShutdown if no call is in flight within `limitMs`, else leave the session to
   * the kernel. Resolves a warning to log, or "" after a clean shutdown.
   */
  async end(limitMs: number): Promise<string> {
    if (!this.#open) return "";
    this.#open = false;
    const started = performance.now();
    if (!(await this.nvml.idle(limitMs))) return `NVML calls still in flight after ${limitMs} ms`;
    const left = Math.max(1, limitMs - (performance.now() - started));
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve(`nvmlShutdown did not return within ${limitMs} ms`), left);
    });
    const outcome = await Promise.race([this.nvml.shutdown().then(() => "", describeError), limit]);
    clearTimeout(timer);
    return outcome;
  }
}
