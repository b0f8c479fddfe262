// The NVML session: loading the library, nvmlInit (waiting for a late driver), and the
// close and reopen that the session coordinator runs while a GPU is released (an open
// session attaches, and so pins, every GPU). Nothing calls nvmlShutdown while another call
// is inside NVML: real NVML crashes then.
import { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlLoadError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_NO_PERMISSION } from "../../native-bindings/nvml-return-codes.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { fixes } from "../fixes.js";
import type { Log } from "../log.js";
import type { SystemdNotifier } from "../systemd/notify.js";
import { describeError } from "./describe-error.js";
import { initWhenDriverLoads } from "./driver-wait.js";
import { isVersionMismatch } from "./version-mismatch.js";

/** nvmlShutdown was not called: calls were still inside NVML after the limit. */
export class SessionBusyError extends Error {
  constructor(limitMs: number) {
    super(`NVML calls were still in flight after ${limitMs} ms (driver hung?)`);
    this.name = "SessionBusyError";
  }
}

export class NvmlSession {
  readonly nvml: Nvml;
  readonly #log: Log;
  #open = false;
  /** How long a close waits for calls in flight before it leaves the session open. */
  idleLimitMs: number;
  /** How long the first nvmlInit took (ms), where real NVML attaches every GPU; null before it. */
  firstInitMs: number | null = null;

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
      if (err instanceof NvmlLoadError)
        throw new FatalError(ExitCode.UNAVAILABLE, `${err.message}. To fix: ${fixes.installNvml}.`);
      throw err;
    }
  }

  /** Whether NVML may be asked now. */
  get open(): boolean {
    return this.#open;
  }

  /**
   * nvmlInit, waiting up to `driverWaitMs` for the driver to load (initWhenDriverLoads
   * names the missing driver itself). Throws NVML's own error for a version mismatch, and
   * FatalError otherwise: 77 when NVML says we lack permission, 69 for the rest.
   */
  async start(driverWaitMs: number, notifier: SystemdNotifier): Promise<void> {
    try {
      this.firstInitMs = await initWhenDriverLoads(this.nvml, driverWaitMs, this.#log, notifier);
    } catch (err) {
      // The daemon degrades instead (version-mismatch.ts): the caller decides.
      if (err instanceof FatalError || isVersionMismatch(err)) throw err;
      const permission = err instanceof NvmlError && err.code === NVML_ERROR_NO_PERMISSION;
      throw new FatalError(
        permission ? ExitCode.NO_PERMISSION : ExitCode.UNAVAILABLE,
        `cannot initialise NVML from ${this.nvml.path}: ${describeError(err)}.${permission ? ` To fix: ${fixes.runAsRoot}.` : ""}`,
      );
    }
    this.#open = true;
  }

  /**
   * Ends the session so that it pins no GPU: no new call from here, then nvmlShutdown once
   * the calls in flight returned. SessionBusyError (the session stays open) when they do not
   * within idleLimitMs; nvmlShutdown's own error otherwise (NVML then holds nothing either).
   */
  async close(): Promise<void> {
    if (!this.#open) return;
    this.#open = false;
    if (!(await this.nvml.idle(this.idleLimitMs))) {
      this.#open = true;
      throw new SessionBusyError(this.idleLimitMs);
    }
    await this.nvml.shutdown();
  }

  /**
   * nvmlInit again, then `prepare` (new handles, the Xid set) before the session reads open:
   * nothing else asks NVML with the old session's handles. NVML's error when nvmlInit fails
   * (the session stays closed).
   */
  async reopen(prepare: () => Promise<void> = async () => {}): Promise<void> {
    if (this.#open) return;
    await this.nvml.init();
    try {
      await prepare();
    } finally {
      this.#open = true;
    }
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
