// What holding each GPU costs and saves, and what the driver says it needs: power draw,
// P-state and energy used since the daemon held it, the initialisation the daemon paid at
// its first attach, and NVML's recovery action. Read through read-only NVML calls that real
// NVML never routes to the persistence socket (unlike the persistence mode), so they ask the
// driver, not this daemon. Health rounds read it; status and metrics show it.
import { PoolCallTimeoutError } from "../../native-bindings/libuv-pool.js";
import { type DeviceHandle, FI_DEV_GET_GPU_RECOVERY_ACTION, type Nvml } from "../../native-bindings/nvml.js";
import { NvmlError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_GPU_IS_LOST, NVML_ERROR_NOT_SUPPORTED } from "../../native-bindings/nvml-return-codes.js";
import type { Gpu, GpuRegistry } from "../gpu/gpu-registry.js";
import { type RecoveryAction, recoveryActionName } from "./recovery-action.js";

/**
 * A cold GPU's attach takes one to several seconds; a GPU already initialised (another
 * holder, the legacy flag, the previous run's fds) attaches in microseconds to a few ms
 * (nvmlInit p50 1.7 ms, max 13.7 ms on the H100 here). Below this, nothing was paid.
 */
export const ALREADY_INITIALISED_BELOW_SECONDS = 0.1;

/**
 * Power, P-state and energy are read at the first round after a hold, then at most once a
 * minute; the recovery action every round. Each figure is a pool call that wakes a thread and
 * the loop: all four every 15 s measured 5.4 context switches per idle second with 8 GPUs (the
 * persistence read they replaced: 1.4); figures that change over minutes need not pay that.
 */
export const FIGURES_EVERY_MS = 60_000;

/** "paid": the daemon's first attach initialised the GPU; "unknown": not measured (no NVML at start). */
export type Initialisation = "paid" | "already-initialised" | "unknown";

export interface GpuReadings {
  /** Watts, as last read while held; null when not read or not supported. */
  powerWatts: number | null;
  /** 0 (P0, the highest) to 15; null when unknown. */
  pstate: number | null;
  /** Joules used since the daemon held the GPU; null when unknown. */
  energyJoules: number | null;
  initialisation: Initialisation;
  /** Seconds the first attach took, when it was "paid". */
  initSeconds: number | null;
  /** As the driver last reported it; null when it does not report it (or not read yet). */
  recoveryAction: RecoveryAction | null;
}

interface Entry extends GpuReadings {
  /** The energy counter (mJ) when the GPU was held; null until read. */
  energyAtHoldMj: number | null;
  /** When power, P-state and energy were last read (performance.now()); null: at the next round. */
  figuresAt: number | null;
}

/** What one round read: the recovery action known after it, and an error to report (or null). */
export interface Reading {
  action: RecoveryAction | null;
  failure: unknown;
}

/** Thrown inside read() to stop asking once the session closed. */
const SESSION_CLOSED = Symbol("the NVML session closed");

const NO_READING = {
  powerWatts: null,
  pstate: null,
  energyJoules: null,
  energyAtHoldMj: null,
  figuresAt: null,
} as const;

/** NOT_SUPPORTED means the figure does not exist here: null. Anything else is the caller's. */
async function optional<T>(call: Promise<T>): Promise<T | null> {
  try {
    return await call;
  } catch (err) {
    if (err instanceof NvmlError && err.code === NVML_ERROR_NOT_SUPPORTED) return null;
    throw err;
  }
}

export class GpuTelemetry {
  readonly #gpus = new Map<number, Entry>();

  #entry(index: number): Entry {
    let entry = this.#gpus.get(index);
    if (!entry) {
      entry = { ...NO_READING, initialisation: "unknown", initSeconds: null, recoveryAction: null };
      this.#gpus.set(index, entry);
    }
    return entry;
  }

  of(index: number): GpuReadings {
    const { energyAtHoldMj: _baseline, figuresAt: _at, ...readings } = this.#entry(index);
    return readings;
  }

  /** The daemon's first attach of GPU `index` took `seconds` (the first nvmlInit and the GPU's first look-up). */
  recordAttach(index: number, seconds: number): void {
    const entry = this.#entry(index);
    const paid = seconds >= ALREADY_INITIALISED_BELOW_SECONDS;
    entry.initialisation = paid ? "paid" : "already-initialised";
    entry.initSeconds = paid ? seconds : null;
  }

  /**
   * Follows the registry: a GPU held starts its energy count (the counter read at once where
   * NVML may be asked, else at the next round); one let go drops what was read while held.
   */
  follow(registry: GpuRegistry, nvml: Nvml, nvmlOpen: () => boolean): void {
    registry.on("transition", ({ gpu, from, to }) => {
      if (to === "held") {
        const handle = gpu.handle;
        if (handle === null || !nvmlOpen()) return;
        // A failure leaves the baseline to the next round's reading.
        optional(nvml.totalEnergyMj(handle)).then(
          (mj) => {
            const entry = this.#entry(gpu.index);
            if (gpu.state === "held" && entry.energyAtHoldMj === null) entry.energyAtHoldMj = mj;
          },
          () => {},
        );
      } else if (from === "held") {
        Object.assign(this.#entry(gpu.index), NO_READING);
      }
    });
  }

  /**
   * One health round's reading of a held GPU, one call at a time (a hung call holds one pool
   * thread, and stops the rest): the recovery action, and the figures when due
   * (FIGURES_EVERY_MS). `open()` is asked before each call: none while the session is
   * closed (what was read stays). NOT_SUPPORTED leaves that figure absent. A time-out or
   * GPU_IS_LOST is thrown at once; another error leaves that figure absent and comes back as
   * `failure` once the rest was read, so one failing call hides no recovery action.
   */
  async read(nvml: Nvml, gpu: Gpu, open: () => boolean): Promise<Reading> {
    const handle = gpu.handle;
    const entry = this.#entry(gpu.index);
    let failure: unknown = null;
    const ask = async <T>(call: (handle: DeviceHandle) => Promise<T>): Promise<T | null> => {
      if (handle === null || !open()) throw SESSION_CLOSED;
      try {
        return await optional(call(handle));
      } catch (err) {
        if (err instanceof PoolCallTimeoutError || (err instanceof NvmlError && err.code === NVML_ERROR_GPU_IS_LOST))
          throw err;
        failure ??= err;
        return null;
      }
    };
    try {
      const now = performance.now();
      if (entry.figuresAt === null || now - entry.figuresAt >= FIGURES_EVERY_MS) {
        entry.figuresAt = now;
        const milliwatts = await ask((h) => nvml.powerUsageMw(h));
        entry.powerWatts = milliwatts === null ? null : milliwatts / 1000;
        entry.pstate = await ask((h) => nvml.performanceState(h));
        const mj = await ask((h) => nvml.totalEnergyMj(h));
        // The first reading while held is the baseline; a counter that went back (a driver reload) starts again.
        if (mj !== null && (entry.energyAtHoldMj === null || mj < entry.energyAtHoldMj)) entry.energyAtHoldMj = mj;
        entry.energyJoules = mj === null || entry.energyAtHoldMj === null ? null : (mj - entry.energyAtHoldMj) / 1000;
      }
      const failedBefore = failure;
      const action = await ask((h) => nvml.fieldValue(h, FI_DEV_GET_GPU_RECOVERY_ACTION));
      // A field that failed keeps the last action known; NOT_SUPPORTED clears it.
      if (failure === failedBefore) entry.recoveryAction = action === null ? null : recoveryActionName(action);
    } catch (err) {
      if (err !== SESSION_CLOSED) throw err;
    }
    return { action: entry.recoveryAction, failure };
  }
}
