// The health loop: one timer that, each interval, asks NVML one cheap question (the
// persistence mode of the next held GPU in turn; the GPU count when none is held) on the
// thread pool with a time limit, then lets the systemd watchdog ping if NVML answered within
// the watchdog interval: a hung NVML stops the pings, so systemd restarts the daemon. Where
// NVML has just answered by itself (the Xid event wait returned in time), up to three rounds
// in four need no call of their own. One call at most per round keeps an idle daemon's
// wake-ups near zero; a driver that hangs hangs every call (the Xid wait then no longer
// returns, and the rounds call again), and a GPU that falls off the bus is also reported by
// its Xid event. What a round finds about a GPU (persistence, loss) goes to the registry.
import type { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlTimeoutError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_GPU_IS_LOST } from "../../native-bindings/nvml-return-codes.js";
import { describeError } from "../gpu/describe-error.js";
import { gpuFields } from "../gpu/gpu-log-fields.js";
import type { Gpu, GpuRegistry } from "../gpu/gpu-registry.js";
import type { Log } from "../log.js";

export interface HealthOptions {
  nvml: Nvml;
  registry: GpuRegistry;
  /** Whether the NVML session is open; while closed, there is nothing to ask NVML. */
  nvmlOpen(): boolean;
  /** A round that asked NVML ended: its duration, and whether every call answered. */
  onRound(seconds: number, healthy: boolean): void;
  /** After each tick: the watchdog pings or withholds (absent without a watchdog). */
  afterTick?(): void;
  /**
   * When an NVML call last returned in time by itself (the Xid event wait ending): proof that
   * NVML answers, which spares a round its own call. -Infinity when nothing proves it.
   */
  nvmlAnsweredAt?(): number;
  log: Log;
}

/** Rounds in a row that may go without a call of their own while NVML keeps answering. */
const SPARE_AT_MOST = 3;

export class HealthMonitor {
  readonly #o: HealthOptions;
  #intervalMs: number;
  #timer: NodeJS.Timeout | null = null;
  #running = false;
  #lastHealthyAt: number = performance.now();
  #passedOnce = false;
  /** The held GPU asked next: rounds take the held GPUs in turn. */
  #next = 0;
  /** Rounds in a row that NVML's own recent answer spared a call. */
  #spared = 0;
  /** Calls that timed out and were logged; cleared when the same check succeeds again. */
  readonly #reportedHangs = new Set<string>();
  /** Checks whose timed-out call still blocks a pool thread (not repeated until it returns), and when it does. */
  readonly #stuck = new Map<string, Promise<void>>();

  constructor(options: HealthOptions, intervalMs: number) {
    this.#o = options;
    this.#intervalMs = intervalMs;
  }

  /** performance.now() of the last round in which NVML answered every call. */
  get lastHealthyAt(): number {
    return this.#lastHealthyAt;
  }

  get intervalMs(): number {
    return this.#intervalMs;
  }

  start(): void {
    this.stop();
    this.#timer = setInterval(() => void this.tick(), this.#intervalMs);
    this.#timer.unref();
  }

  /** One timer tick: a round (unless one is still stuck), then the watchdog's turn. */
  async tick(): Promise<void> {
    await this.round();
    this.#o.afterTick?.();
  }

  /** A reload changed the interval: the next round comes one new interval from now. */
  reschedule(intervalMs: number): void {
    this.#intervalMs = intervalMs;
    if (this.#timer) this.start();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  #hung(key: string, err: NvmlTimeoutError, gpu?: Gpu): void {
    this.#stuck.set(
      key,
      err.returned.then(() => {
        this.#stuck.delete(key);
      }),
    );
    if (this.#reportedHangs.has(key)) return;
    this.#reportedHangs.add(key);
    this.#o.log.error(
      gpu ? gpuFields(gpu) : {},
      `health check: ${err.message}; withholding watchdog pings until NVML answers`,
    );
  }

  /** Resolves once every call that timed out in a round has returned (a hung one: never). */
  async whenUnstuck(): Promise<void> {
    await Promise.all(this.#stuck.values());
  }

  /** One round; never overlaps the previous one, so a hung NVML cannot pile up calls. */
  async round(): Promise<boolean> {
    if (this.#running) return false;
    if (!this.#o.nvmlOpen()) {
      // The session was closed on purpose (a GPU released over RPC): the daemon is alive.
      this.#lastHealthyAt = performance.now();
      return true;
    }
    // NVML answered within this interval by itself (the Xid wait returned): no call needed,
    // but every SPARE_AT_MOST + 1-th round still asks a GPU (persistence, loss).
    const answeredAt = this.#o.nvmlAnsweredAt?.() ?? Number.NEGATIVE_INFINITY;
    if (performance.now() - answeredAt <= this.#intervalMs && this.#spared < SPARE_AT_MOST && this.#stuck.size === 0) {
      this.#spared++;
      this.#lastHealthyAt = performance.now();
      return true;
    }
    this.#spared = 0;
    this.#running = true;
    const started = performance.now();
    try {
      const { registry, nvml } = this.#o;
      const held = registry.list().filter((g) => g.state === "held" && g.handle !== null);
      const gpu = held.length ? held[this.#next++ % held.length] : undefined;
      const answered = gpu ? await this.#checkGpu(gpu) : await this.#check("count", () => nvml.deviceCount());
      // A call still stuck from an earlier round keeps every round unhealthy until it returns.
      const healthy = answered && this.#stuck.size === 0;
      if (healthy) {
        if (!this.#passedOnce) this.#o.log.debug("health check passed");
        this.#passedOnce = true;
        this.#lastHealthyAt = performance.now();
      }
      this.#o.onRound((performance.now() - started) / 1000, healthy);
      return healthy;
    } finally {
      this.#running = false;
    }
  }

  #checkGpu(gpu: Gpu): Promise<boolean> {
    const handle = gpu.handle;
    if (handle === null) return Promise.resolve(true);
    return this.#check(
      `gpu:${gpu.index}`,
      async () => this.#o.registry.recordPersistence(gpu, await this.#o.nvml.persistenceMode(handle)),
      gpu,
    );
  }

  /**
   * Whether NVML answered `call` in time. A call still stuck from an earlier round is not
   * repeated (one blocked thread per check at most). Any answer counts as healthy: a GPU's
   * own trouble is logged, and a lost GPU handed to the registry, but NVML itself answers.
   */
  async #check(key: string, call: () => Promise<unknown>, gpu?: Gpu): Promise<boolean> {
    if (this.#stuck.has(key)) return false;
    try {
      await call();
      this.#reportedHangs.delete(key);
      return true;
    } catch (err) {
      if (err instanceof NvmlTimeoutError) {
        this.#hung(key, err, gpu);
        return false;
      }
      if (gpu && err instanceof NvmlError && err.code === NVML_ERROR_GPU_IS_LOST) {
        await this.#o.registry.markLost(gpu, err);
        return true;
      }
      this.#o.log.warn(gpu ? gpuFields(gpu) : {}, `health check: ${describeError(err)}`);
      return true;
    }
  }
}
