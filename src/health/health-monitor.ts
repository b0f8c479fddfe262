// The health loop: a cheap NVML call per held GPU (and one for NVML itself) at a fixed
// interval, each on the thread pool with a time limit. Its last success gates the systemd
// watchdog: a hung or failing NVML stops the pings, so systemd restarts the daemon. What it
// finds about a GPU (drift, persistence, loss) it hands to the registry.
import type { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlTimeoutError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_GPU_IS_LOST } from "../../native-bindings/nvml-return-codes.js";
import { describeError } from "../gpu/describe-error.js";
import type { Gpu, GpuRegistry } from "../gpu/gpu-registry.js";
import { gpuFields, type Log } from "../log.js";

export interface HealthOptions {
  nvml: Nvml;
  registry: GpuRegistry;
  /** Whether the NVML session is open; while closed, there is nothing to ask NVML. */
  nvmlOpen(): boolean;
  /** A round that asked NVML ended: its duration, and whether every call answered. */
  onRound(seconds: number, healthy: boolean): void;
  log: Log;
}

export class HealthMonitor {
  readonly #o: HealthOptions;
  #intervalMs: number;
  #timer: NodeJS.Timeout | null = null;
  #running = false;
  #lastHealthyAt: number = performance.now();
  #passedOnce = false;
  /** Calls that timed out and were logged; cleared when the same check succeeds again. */
  readonly #reportedHangs = new Set<string>();
  /** Checks whose timed-out call still blocks a pool thread: not repeated until it returns. */
  readonly #stuck = new Set<string>();

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
    this.#timer = setInterval(() => void this.round(), this.#intervalMs);
    this.#timer.unref();
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
    this.#stuck.add(key);
    void err.returned.then(() => this.#stuck.delete(key));
    if (this.#reportedHangs.has(key)) return;
    this.#reportedHangs.add(key);
    this.#o.log.error(
      gpu ? gpuFields(gpu) : {},
      `health check: ${err.message}; withholding watchdog pings until NVML answers`,
    );
  }

  /** One round; never overlaps the previous one, so a hung NVML cannot pile up calls. */
  async round(): Promise<boolean> {
    if (this.#running) return false;
    if (!this.#o.nvmlOpen()) {
      // The session was closed on purpose (a GPU released over RPC): the daemon is alive.
      this.#lastHealthyAt = performance.now();
      return true;
    }
    this.#running = true;
    const started = performance.now();
    try {
      const { registry, nvml } = this.#o;
      const held = registry.list().filter((g) => g.state === "held");
      await Promise.all(held.map((gpu) => registry.verifyHold(gpu)));
      const results = await Promise.all([
        this.#check("count", () => nvml.deviceCount()),
        ...held.map((gpu) => this.#checkGpu(gpu)),
      ]);
      const healthy = results.every(Boolean);
      if (healthy) {
        if (!this.#passedOnce) this.#o.log.debug(`health check passed (${held.length} GPUs)`);
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
