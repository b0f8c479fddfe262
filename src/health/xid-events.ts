// Xid events: a set registered for every GPU that reports them, drained without waiting
// (nvmlEventSetWait_v2 with a 0 ms timeout: events queue in the set between rounds) at the
// start of each health round, and one last time before the set is freed. No call ever stays
// inside NVML for long, so a release can end the NVML session at once; an Xid is seen at most
// one health interval late. Each Xid is logged with the GPU and its meaning, at most a few
// lines per GPU and Xid a minute during a storm (the rest summed up at the end of that
// minute); Xid 79 (the GPU fell off the bus) marks the GPU lost.
import { PoolCallTimeoutError } from "../../native-bindings/libuv-pool.js";
import type { DeviceHandle, EventData, EventSetHandle, Nvml } from "../../native-bindings/nvml.js";
import { EVENT_XID_CRITICAL_ERROR } from "../../native-bindings/nvml.js";
import { describeError } from "../gpu/describe-error.js";
import { gpuFields } from "../gpu/gpu-log-fields.js";
import { type Gpu, GpuLostError, type GpuRegistry } from "../gpu/gpu-registry.js";
import type { Log } from "../log.js";

/** The Xids admins meet most, from NVIDIA's Xid catalogue; `error` ones need action. */
export const XID_MEANINGS: Readonly<Record<number, { text: string; error: boolean }>> = {
  13: { text: "graphics engine exception", error: false },
  31: { text: "GPU memory page fault", error: false },
  43: { text: "GPU stopped processing", error: false },
  45: { text: "preemptive cleanup, due to previous errors", error: false },
  48: { text: "double-bit ECC error", error: true },
  61: { text: "internal micro-controller breakpoint/warning", error: false },
  62: { text: "internal micro-controller halt", error: true },
  63: { text: "ECC page retirement or row remapping recorded", error: false },
  64: { text: "ECC page retirement or row remapping failed", error: true },
  74: { text: "NVLink error", error: true },
  79: { text: "GPU has fallen off the bus", error: true },
  92: { text: "high single-bit ECC error rate", error: false },
  94: { text: "contained ECC error", error: false },
  95: { text: "uncontained ECC error", error: true },
  119: { text: "GSP RPC timeout", error: true },
  120: { text: "GSP error", error: true },
};

export const XID_GPU_FALLEN_OFF_THE_BUS = 79;
/** Lines per GPU and Xid in one window; the rest are counted and summed up. */
const LOGS_PER_WINDOW = 5;
const WINDOW_MS = 60_000;

/** Events taken from the set in one drain at most: a storm cannot hold a round up. */
const DRAIN_AT_MOST = 64;

interface StormWindow {
  gpu: Gpu;
  xid: number;
  start: number;
  logged: number;
  suppressed: number;
}

export class XidEvents {
  readonly #nvml: Nvml;
  readonly #registry: GpuRegistry;
  readonly #log: Log;
  #set: EventSetHandle | null = null;
  #draining: Promise<void> | null = null;
  /** While set: a wait that outlived its time limit is still inside NVML (resolves when it returns). */
  #late: Promise<void> | null = null;
  /** A reload's registrations in flight: the set is not freed under them. */
  #registering: Promise<number> | null = null;
  /** The GPUs registered (or found unable to report Xids) with this set. */
  readonly #watched = new Set<Gpu>();
  readonly #windows = new Map<string, StormWindow>();

  constructor(nvml: Nvml, registry: GpuRegistry, log: Log) {
    this.#nvml = nvml;
    this.#registry = registry;
    this.#log = log;
  }

  /** Registers every GPU in `gpus` that supports Xid events; returns how many were registered. */
  async start(gpus: readonly Gpu[]): Promise<number> {
    const set = await this.#nvml.eventSetCreate();
    this.#set = set;
    return this.#register(set, gpus);
  }

  /** Watches the GPUs of `gpus` not watched yet (a reload selected them); returns how many were registered. */
  async watch(gpus: readonly Gpu[]): Promise<number> {
    const set = this.#set;
    if (set === null) return 0;
    const registering = this.#register(set, gpus);
    this.#registering = registering;
    try {
      return await registering;
    } finally {
      if (this.#registering === registering) this.#registering = null;
    }
  }

  async #register(set: EventSetHandle, gpus: readonly Gpu[]): Promise<number> {
    let registered = 0;
    for (const gpu of gpus) {
      if (gpu.handle === null || this.#watched.has(gpu)) continue;
      this.#watched.add(gpu);
      const fields = gpuFields(gpu);
      try {
        const supported = await this.#nvml.supportedEventTypes(gpu.handle);
        if (!(supported & EVENT_XID_CRITICAL_ERROR)) {
          this.#log.info(fields, "this GPU reports no Xid events: none will be logged for it");
          continue;
        }
        await this.#nvml.registerEvents(gpu.handle, EVENT_XID_CRITICAL_ERROR, set);
        registered++;
      } catch (err) {
        this.#log.warn(fields, `cannot watch Xid events: ${describeError(err)}`);
      }
    }
    return registered;
  }

  /**
   * Takes every event queued in the set, without waiting. Rejects with NVML's error (or
   * NvmlTimeoutError) when the wait fails: the health round counts it as NVML not answering.
   */
  drain(): Promise<void> {
    const set = this.#set;
    if (set === null) return Promise.resolve();
    this.#draining ??= this.#drain(set).finally(() => {
      this.#draining = null;
    });
    return this.#draining;
  }

  async #drain(set: EventSetHandle): Promise<void> {
    this.#summarise(performance.now());
    for (let n = 0; n < DRAIN_AT_MOST; n++) {
      const event = await this.#wait(set);
      if (!event) return;
      this.#handle(event.device, Number(event.eventData));
    }
  }

  /** One wait without waiting; one that outlives its time limit is remembered until it returns. */
  async #wait(set: EventSetHandle): Promise<EventData | null> {
    try {
      return await this.#nvml.eventSetWait(set, 0);
    } catch (err) {
      if (err instanceof PoolCallTimeoutError) {
        const late: Promise<void> = err.returned.then(() => {
          if (this.#late === late) this.#late = null;
        });
        this.#late = late;
      }
      throw err;
    }
  }

  /** Logs what a storm window suppressed once its minute is over. */
  #summarise(now: number): void {
    for (const [key, w] of this.#windows) {
      if (now - w.start < WINDOW_MS) continue;
      if (w.suppressed > 0) {
        this.#log.warn(
          { ...gpuFields(w.gpu), xid: w.xid },
          `Xid ${w.xid} occurred ${w.suppressed} more times in the last minute`,
        );
      }
      this.#windows.delete(key);
    }
  }

  #handle(device: DeviceHandle, xid: number): void {
    const gpu = this.#registry.byHandle(device);
    if (!gpu) return;
    this.#registry.recordXid(gpu, xid);
    const meaning = XID_MEANINGS[xid];
    const key = `${gpu.uuid}:${xid}`;
    let window = this.#windows.get(key);
    if (!window) {
      window = { gpu, xid, start: performance.now(), logged: 0, suppressed: 0 };
      this.#windows.set(key, window);
    }
    if (window.logged < LOGS_PER_WINDOW) {
      window.logged++;
      const fields = { ...gpuFields(gpu), xid };
      const text = `Xid ${xid}: ${meaning?.text ?? "see NVIDIA's Xid catalogue"}`;
      if (meaning?.error) this.#log.error(fields, text);
      else this.#log.warn(fields, text);
      if (window.logged === LOGS_PER_WINDOW)
        this.#log.warn(fields, `Xid ${xid} storm: further ones are counted, not logged, for a minute`);
    } else {
      window.suppressed++;
    }
    if (xid === XID_GPU_FALLEN_OFF_THE_BUS) {
      void this.#registry.markLost(gpu, new GpuLostError(`Xid ${xid}: GPU has fallen off the bus`));
    }
  }

  /**
   * Reads the events queued since the last round one last time, then frees the set: never
   * while a wait may still be inside NVML (real NVML crashes when the set goes under it).
   * A wait that outlived its time limit keeps the set: it is left to NVML, not freed.
   */
  async stop(): Promise<void> {
    const set = this.#set;
    // From here on no drain starts.
    this.#set = null;
    await Promise.all([this.#draining?.catch(() => {}), this.#registering]);
    if (set === null) return;
    if (this.#late === null) {
      await this.#drain(set).catch((err: unknown) => {
        this.#log.warn(`cannot read the last Xid events before the set is freed: ${describeError(err)}`);
      });
    }
    if (this.#late !== null) {
      this.#log.warn(
        "an Xid event wait is still inside NVML after its time limit: its event set is left to NVML, not freed under it",
      );
      return;
    }
    await this.#nvml.eventSetFree(set).catch(() => {});
  }
}
