// WATCHDOG=1 after each health tick (every WATCHDOG_USEC/2 at most), and only while the
// health loop has succeeded within the last watchdog interval: a bare timer would keep
// pinging from a daemon whose NVML hangs. The health loop's timer drives it: one wake-up for both.
import type { Log } from "../log.js";
import type { SystemdNotifier } from "./notify.js";

export class Watchdog {
  readonly #notifier: SystemdNotifier;
  readonly #intervalMs: number;
  readonly #lastHealthyAt: () => number;
  readonly #log: Log;
  #withholding = false;

  constructor(notifier: SystemdNotifier, usec: number, lastHealthyAt: () => number, log: Log) {
    this.#notifier = notifier;
    this.#intervalMs = usec / 1000;
    this.#lastHealthyAt = lastHealthyAt;
    this.#log = log;
  }

  /** Pings when healthy; returns whether it pinged. */
  tick(): boolean {
    const age = performance.now() - this.#lastHealthyAt();
    if (age <= this.#intervalMs) {
      if (this.#withholding) this.#log.info("NVML answers again: watchdog pings resume");
      this.#withholding = false;
      return this.#notifier.watchdog();
    }
    if (!this.#withholding) {
      this.#log.error(
        `no NVML health check has succeeded for ${Math.round(age)} ms: withholding watchdog pings, so systemd restarts the daemon`,
      );
    }
    this.#withholding = true;
    return false;
  }
}
