// The health loop: a cheap NVML call per held GPU (and one for NVML itself) at a fixed
// interval, each on the thread pool with a time limit. Its last success gates the systemd
// watchdog: a hung or failing NVML stops the pings, so systemd restarts the daemon.
import { fstatSync, type Stats, statSync } from "node:fs";
import type { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlTimeoutError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_GPU_IS_LOST } from "../../native-bindings/nvml-return-codes.js";
import { describeError } from "../gpu/describe-error.js";
import type { GpuRecord } from "../gpu/gpu-record.js";
import type { Log } from "../log.js";

/**
 * Why `gpu.fd` no longer holds the GPU's node, or null when it does: the fd was closed, or
 * the node at the path is another device (char nodes: rdev) or file (stand-ins: inode).
 */
export function fdDrift(gpu: GpuRecord): string | null {
  if (gpu.fd === null || gpu.nodePath === null) return null;
  let held: Stats;
  try {
    held = fstatSync(gpu.fd);
  } catch (err) {
    return `its fd ${gpu.fd} is no longer open (${(err as NodeJS.ErrnoException).code})`;
  }
  let current: Stats;
  try {
    current = statSync(gpu.nodePath);
  } catch (err) {
    return `${gpu.nodePath} is gone (${(err as NodeJS.ErrnoException).code})`;
  }
  const same = held.isCharacterDevice()
    ? held.rdev === current.rdev
    : held.ino === current.ino && held.dev === current.dev;
  return same ? null : `${gpu.nodePath} was replaced since it was opened`;
}

export interface HealthHooks {
  /** The GPUs to check: those held now. */
  heldGpus(): GpuRecord[];
  /** Whether the NVML session is open; while closed, there is nothing to ask NVML. */
  nvmlOpen(): boolean;
  /** NVML said the GPU is lost (Xid 79 and kin): a hardware fault, not a hung daemon. */
  onLost(gpu: GpuRecord, reason: string): void;
  /** The held fd no longer refers to the GPU's node (closed, or the node was replaced). */
  onDrift(gpu: GpuRecord, reason: string): void;
  /** Persistence reads disabled on a GPU the daemon holds. */
  onPersistenceOff(gpu: GpuRecord): void;
  /** A round that asked NVML ended: its duration, and whether every call answered. */
  onRound(seconds: number, healthy: boolean): void;
}

export class HealthMonitor {
  readonly #nvml: Nvml;
  readonly #hooks: HealthHooks;
  readonly #log: Log;
  readonly #intervalMs: number;
  #timer: NodeJS.Timeout | null = null;
  #running = false;
  #lastHealthyAt: number = performance.now();
  #passedOnce = false;
  /** Calls that timed out and were logged; cleared when the same check succeeds again. */
  readonly #reportedHangs = new Set<string>();
  /** Checks whose timed-out call still blocks a pool thread: not repeated until it returns. */
  readonly #stuck = new Set<string>();

  constructor(nvml: Nvml, hooks: HealthHooks, intervalMs: number, log: Log) {
    this.#nvml = nvml;
    this.#hooks = hooks;
    this.#intervalMs = intervalMs;
    this.#log = log;
  }

  /** performance.now() of the last round in which NVML answered every call. */
  get lastHealthyAt(): number {
    return this.#lastHealthyAt;
  }

  get intervalMs(): number {
    return this.#intervalMs;
  }

  start(): void {
    this.#timer = setInterval(() => void this.round(), this.#intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = null;
  }

  #hung(key: string, err: NvmlTimeoutError, gpu?: GpuRecord): void {
    this.#stuck.add(key);
    void err.returned.then(() => this.#stuck.delete(key));
    if (this.#reportedHangs.has(key)) return;
    this.#reportedHangs.add(key);
    const fields = gpu ? { gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pciBusId } : {};
    this.#log.error(fields, `health check: ${err.message}; withholding watchdog pings until NVML answers`);
  }

  /** One round; never overlaps the previous one, so a hung NVML cannot pile up calls. */
  async round(): Promise<boolean> {
    if (this.#running) return false;
    if (!this.#hooks.nvmlOpen()) {
      // The session was closed on purpose (a GPU released over RPC): the daemon is alive.
      this.#lastHealthyAt = performance.now();
      return true;
    }
    this.#running = true;
    const started = performance.now();
    try {
      const held = this.#hooks.heldGpus();
      for (const gpu of held) {
        const drift = fdDrift(gpu);
        if (drift) this.#hooks.onDrift(gpu, drift);
      }
      const results = await Promise.all([
        this.#check("count", () => this.#nvml.deviceCount()),
        ...held.map((gpu) => (gpu.handle === null ? true : this.#checkGpu(gpu, gpu.handle))),
      ]);
      const healthy = results.every(Boolean);
      if (healthy) {
        if (!this.#passedOnce) this.#log.debug(`health check passed (${held.length} GPUs)`);
        this.#passedOnce = true;
        this.#lastHealthyAt = performance.now();
      }
      this.#hooks.onRound((performance.now() - started) / 1000, healthy);
      return healthy;
    } finally {
      this.#running = false;
    }
  }

  #checkGpu(gpu: GpuRecord, handle: bigint): Promise<boolean> {
    return this.#check(
      `gpu:${gpu.uuid}`,
      async () => {
        if ((await this.#nvml.persistenceMode(handle)) === 0) this.#hooks.onPersistenceOff(gpu);
      },
      gpu,
    );
  }

  /**
   * Whether NVML answered `call` in time. A call still stuck from an earlier round is not
   * repeated (one blocked thread per check at most). Any answer counts as healthy: a GPU's
   * own trouble is logged, and a lost GPU handed to onLost, but NVML itself is responsive.
   */
  async #check(key: string, call: () => Promise<unknown>, gpu?: GpuRecord): Promise<boolean> {
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
        this.#hooks.onLost(gpu, describeError(err));
        return true;
      }
      const fields = gpu ? { gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pciBusId } : {};
      this.#log.warn(fields, `health check: ${describeError(err)}`);
      return true;
    }
  }
}
