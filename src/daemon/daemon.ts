// The composition root: one DaemonContext, the start-up sequence, reloads queued behind it,
// and the stop. What each step does lives in its own module:
//   start-up.ts   NVML, GPUs, sockets, holds, privilege drop, health, READY (in that order)
//   reload.ts     SIGHUP: which settings apply live, and applying them
//   shutdown.ts   releasing everything and exiting
//   *-adapter.ts  RPC and control requests translated into intents (release-leases.ts for
//                 `release -- COMMAND`, intent-change.ts for a client's change as one step)
// What is wanted of each GPU is in src/gpu/intents.ts; src/gpu/reconciler.ts turns it into
// holds, and src/gpu/gpu-registry.ts owns the GPUs' state and fds.
import type { Config } from "../config/schema.js";
import { letWaitingClientsGo } from "../connections/waiting-clients.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { UnsafePathError } from "../safe-files.js";
import type { StopKind } from "../systemd/stop-kind.js";
import { DaemonContext, type DaemonDeps } from "./context.js";
import { ReloadQueue, reload } from "./reload.js";
import { shutdown } from "./shutdown.js";
import { StartAbandoned, startUp } from "./start-up.js";

export class Daemon {
  readonly context: DaemonContext;
  readonly #reloads: ReloadQueue;

  constructor(config: Config, deps: DaemonDeps) {
    this.context = new DaemonContext(config, deps);
    this.#reloads = new ReloadQueue(() => reload(this.context));
  }

  /**
   * Starts; on failure logs why and stops with the failure's exit code. Reloads asked for
   * meanwhile run once, after READY.
   */
  async run(): Promise<void> {
    try {
      await startUp(this.context);
    } catch (err) {
      if (err instanceof StartAbandoned) return;
      const fatal =
        err instanceof FatalError
          ? err
          : err instanceof UnsafePathError
            ? new FatalError(ExitCode.CONFIG, err.message)
            : new FatalError(ExitCode.FAILURE, (err as Error).stack ?? String(err));
      this.context.log.fatal(`start-up failed: ${fatal.message}`);
      const waiting = letWaitingClientsGo(this.context.passedFds);
      if (waiting > 0)
        this.context.log.info(
          `closed ${waiting} connections that waited for this start: NVML reads the driver instead`,
        );
      // As a crash: Restart= may bring it back to what the store kept.
      await this.stop(fatal.exitCode, "start-up failed", "keep");
      return;
    }
    this.#reloads.ready();
  }

  /** SIGHUP. */
  reload(): void {
    if (!this.context.stopping) this.#reloads.request();
  }

  /** Resolves once no reload runs or waits. */
  reloadsSettled(): Promise<void> {
    return this.#reloads.settled();
  }

  /** A stop signal at any time (stop-kind.ts says which does what); also the end of a failed start. */
  stop(code: ExitCode, reason: string, kind: StopKind): Promise<never> {
    return shutdown(this.context, code, reason, kind);
  }
}
