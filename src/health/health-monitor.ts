// The health loop: one timer that, each interval, checks every held GPU, then lets the
// systemd watchdog ping if every check answered within the watchdog interval (a hung driver
// stops the pings, so systemd restarts the daemon). With the NVML session open a round
// drains the Xid events queued since the last one and reads each held GPU's telemetry and
// recovery action (gpu-telemetry.ts: read-only calls NVML never routes to the persistence
// socket, so the driver answers, never this daemon's own RPC server); while a GPU is released
// (the session closed, so nothing pins that GPU) it asks the driver about each held GPU
// through the GPU's own node instead. All checks of a round run at once on the thread pool,
// each with its time limit. What a round finds (loss, a recovery action) goes to the
// registry and the journal; a round also retries an NVML session that could not be closed
// or reopened.
import { PoolCallTimeoutError } from "../../native-bindings/libuv-pool.js";
import { KernelCallError } from "../../native-bindings/nvidia-kernel.js";
import type { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_GPU_IS_LOST } from "../../native-bindings/nvml-return-codes.js";
import { describeError } from "../gpu/describe-error.js";
import { gpuFields } from "../gpu/gpu-log-fields.js";
import { type Gpu, GpuLostError, type GpuRegistry } from "../gpu/gpu-registry.js";
import type { SessionCoordinator } from "../gpu/session-coordinator.js";
import type { Log } from "../log.js";
import type { GpuTelemetry } from "./gpu-telemetry.js";
import { type RecoveryAction, recoveryStep } from "./recovery-action.js";
import type { XidEvents } from "./xid-events.js";

export interface HealthOptions {
  nvml: Nvml;
  registry: GpuRegistry;
  coordinator: SessionCoordinator;
  telemetry: GpuTelemetry;
  /** Whether the NVML session is open now. */
  nvmlOpen(): boolean;
  /** The Xid event set, while there is one. */
  xid(): XidEvents | null;
  /** A round ended: its duration, whether every check answered, and how many GPUs it checked. */
  onRound(seconds: number, healthy: boolean, checked: number): void;
  /** After each tick: the watchdog pings or withholds (absent without a watchdog). */
  afterTick?(): void;
  log: Log;
}

type Outcome = "answered" | "hung";

export class HealthMonitor {
  readonly #o: HealthOptions;
  #intervalMs: number;
  #timer: NodeJS.Timeout | null = null;
  #running = false;
  #lastHealthyAt: number = performance.now();
  #passedOnce = false;
  /** What each check last reported (a hang, an error), so a lasting problem is logged once. */
  readonly #reported = new Map<string, string>();
  /** Checks whose timed-out call still blocks a pool thread: not repeated until it returns. */
  readonly #stuck = new Set<string>();

  constructor(options: HealthOptions, intervalMs: number) {
    this.#o = options;
    this.#intervalMs = intervalMs;
  }

  /** performance.now() of the last round in which every check answered. */
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

  /** One timer tick: a round (unless the previous one still runs), then the watchdog's turn. */
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

  /** One round; never overlaps the previous one, so a hung driver cannot pile up calls. */
  async round(): Promise<boolean> {
    if (this.#running) return false;
    this.#running = true;
    const started = performance.now();
    try {
      const { registry, coordinator, nvml } = this.#o;
      const session = coordinator.state;
      if (session.open !== session.wanted) await coordinator.settle();
      const held = registry.list().filter((g) => g.state === "held");
      const checks: Promise<Outcome>[] = [];
      if (this.#o.nvmlOpen()) {
        const xid = this.#o.xid();
        if (xid) checks.push(this.#check("xid", () => xid.drain()));
        for (const gpu of held) checks.push(this.#checkByNvml(gpu));
        if (held.length === 0) checks.push(this.#check("count", () => nvml.deviceCount()));
      } else {
        for (const gpu of held) checks.push(this.#checkByNode(gpu));
      }
      const outcomes = await Promise.all(checks);
      // A call still stuck from an earlier round keeps every round unhealthy until it returns.
      const healthy = outcomes.every((o) => o === "answered") && this.#stuck.size === 0;
      if (healthy) {
        if (!this.#passedOnce) this.#o.log.debug("health check passed");
        this.#passedOnce = true;
        this.#lastHealthyAt = performance.now();
      }
      this.#o.onRound((performance.now() - started) / 1000, healthy, held.length);
      return healthy;
    } finally {
      this.#running = false;
    }
  }

  #checkByNvml(gpu: Gpu): Promise<Outcome> {
    if (gpu.handle === null) return this.#checkByNode(gpu);
    const { telemetry, nvml, nvmlOpen } = this.#o;
    return this.#check(
      `gpu:${gpu.index}`,
      async () => {
        const before = telemetry.of(gpu.index).recoveryAction;
        const { action, failure } = await telemetry.read(nvml, gpu, nvmlOpen);
        if (action !== null && action !== before) await this.#actOn(gpu, action, before);
        if (failure !== null) throw failure;
      },
      gpu,
    );
  }

  /** The driver's recovery action changed: the journal says what to do; DRAIN_P2P drops UVM. */
  async #actOn(gpu: Gpu, action: RecoveryAction, before: RecoveryAction | null): Promise<void> {
    const fields = { ...gpuFields(gpu), recoveryAction: action };
    if (action === "none") {
      if (before !== null) this.#o.log.info(fields, "recovery action cleared: the driver reports none");
      return;
    }
    const step = recoveryStep(action, gpu.index);
    this.#o.log.error(fields, `NVML reports recovery action ${action}: ${step}`);
    // NVIDIA's recovery guide: P2P drains need UVM persistence dropped before the driver can go on.
    if (action === "drain-p2p") await this.#o.registry.dropUvm(gpu, "NVML reports recovery action drain-p2p");
  }

  #checkByNode(gpu: Gpu): Promise<Outcome> {
    return this.#check(
      `node:${gpu.index}`,
      async () => {
        if ((await this.#o.registry.probe(gpu)) === "no query") {
          throw new Error(
            "this driver answers no NV_ESC_NUMA_INFO: the GPU cannot be checked while the NVML session is closed",
          );
        }
      },
      gpu,
    );
  }

  #report(key: string, message: string, gpu: Gpu | undefined, level: "warn" | "error"): void {
    if (this.#reported.get(key) === message) return;
    this.#reported.set(key, message);
    this.#o.log[level](gpu ? gpuFields(gpu) : {}, message);
  }

  /**
   * Whether `call` answered in time. A call still stuck from an earlier round is not
   * repeated (one blocked thread per check at most). Any answer counts: a GPU's own trouble
   * is logged once, and a lost GPU handed to the registry, but the driver itself answered.
   */
  async #check(key: string, call: () => Promise<unknown>, gpu?: Gpu): Promise<Outcome> {
    if (this.#stuck.has(key)) return "hung";
    try {
      await call();
      if (this.#reported.delete(key)) this.#o.log.info(gpu ? gpuFields(gpu) : {}, "health check answers again");
      return "answered";
    } catch (err) {
      if (err instanceof PoolCallTimeoutError) {
        this.#stuck.add(key);
        void err.returned.then(() => this.#stuck.delete(key));
        this.#report(key, `health check: ${err.message}; withholding watchdog pings until it answers`, gpu, "error");
        return "hung";
      }
      if (gpu && err instanceof NvmlError && err.code === NVML_ERROR_GPU_IS_LOST) {
        await this.#o.registry.markLost(gpu, err);
        return "answered";
      }
      if (gpu && err instanceof KernelCallError) {
        // The driver refuses every ioctl on a GPU that left the bus.
        await this.#o.registry.markLost(
          gpu,
          new GpuLostError(`the driver no longer answers on the GPU's node (${err.message})`, { cause: err }),
        );
        return "answered";
      }
      this.#report(key, `health check: ${describeError(err)}`, gpu, "warn");
      return "answered";
    }
  }
}
