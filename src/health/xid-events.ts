// The Xid event waiter: NVML's blocking nvmlEventSetWait_v2 on the thread pool, in long
// waits (one wake-up each eventWaitMs when nothing happens). A stop does not wait for it: the
// process exits without nvmlShutdown while it is inside NVML (real NVML crashes when the
// session ends beside it). A release, which must end the session, waits for it to return.
// Each Xid is logged with the GPU and its meaning, at most a few lines per GPU and Xid a
// minute during a storm; Xid 79 (the GPU fell off the bus) marks the GPU lost.
import type { DeviceHandle, EventSetHandle, Nvml } from "../../native-bindings/nvml.js";
import { EVENT_XID_CRITICAL_ERROR } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlTimeoutError } from "../../native-bindings/nvml-errors.js";
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

export class XidWaiter {
  readonly #nvml: Nvml;
  readonly #registry: GpuRegistry;
  readonly #log: Log;
  #set: EventSetHandle | null = null;
  #running = false;
  #waiting = false;
  #answeredAt = Number.NEGATIVE_INFINITY;
  #loop: Promise<void> | null = null;
  readonly #windows = new Map<string, { start: number; logged: number; suppressed: number }>();

  /** One wait (eventWaitMs): a reload may change it; the wait in flight keeps its own. */
  waitMs: number;

  constructor(nvml: Nvml, registry: GpuRegistry, log: Log, waitMs: number) {
    this.waitMs = waitMs;
    this.#nvml = nvml;
    this.#registry = registry;
    this.#log = log;
  }

  /** Registers every GPU that supports Xid events; returns how many were registered. */
  async start(gpus: readonly Gpu[]): Promise<number> {
    this.#set = await this.#nvml.eventSetCreate();
    let registered = 0;
    for (const gpu of gpus) {
      if (gpu.handle === null) continue;
      const fields = gpuFields(gpu);
      try {
        const supported = await this.#nvml.supportedEventTypes(gpu.handle);
        if (!(supported & EVENT_XID_CRITICAL_ERROR)) {
          this.#log.info(fields, "this GPU reports no Xid events: none will be logged for it");
          continue;
        }
        await this.#nvml.registerEvents(gpu.handle, EVENT_XID_CRITICAL_ERROR, this.#set);
        registered++;
      } catch (err) {
        this.#log.warn(fields, `cannot watch Xid events: ${describeError(err)}`);
      }
    }
    this.#running = true;
    this.#loop = this.#run();
    return registered;
  }

  async #run(): Promise<void> {
    while (this.#running && this.#set !== null) {
      try {
        this.#waiting = true;
        const event = await this.#nvml.eventSetWait(this.#set, this.waitMs).finally(() => {
          this.#waiting = false;
        });
        this.#answeredAt = performance.now();
        if (event && this.#running) this.#handle(event.device, Number(event.eventData));
      } catch (err) {
        if (!this.#running) return;
        // A hung wait is the health loop's business; a failing one must not spin.
        if (!(err instanceof NvmlTimeoutError)) this.#log.warn(`Xid event wait failed: ${describeError(err)}`);
        if (err instanceof NvmlError || err instanceof NvmlTimeoutError) await new Promise((r) => setTimeout(r, 1000));
      }
    }
  }

  #handle(device: DeviceHandle, xid: number): void {
    const gpu = this.#registry.byHandle(device);
    if (!gpu) return;
    this.#registry.recordXid(gpu, xid);
    const meaning = XID_MEANINGS[xid];
    const key = `${gpu.uuid}:${xid}`;
    const now = performance.now();
    let window = this.#windows.get(key);
    if (!window || now - window.start >= WINDOW_MS) {
      if (window && window.suppressed > 0) {
        this.#log.warn(
          { ...gpuFields(gpu), xid },
          `Xid ${xid} occurred ${window.suppressed} more times in the last minute`,
        );
      }
      window = { start: now, logged: 0, suppressed: 0 };
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

  /** When a wait last returned in time (an event or NVML's own time-out): NVML answers. */
  get answeredAt(): number {
    return this.#answeredAt;
  }

  /** Whether a wait is inside NVML now. */
  get waiting(): boolean {
    return this.#waiting;
  }

  /** Stops the loop; resolves once the wait in flight returned (within eventWaitMs) and the set is freed. */
  async stop(): Promise<void> {
    this.#running = false;
    const set = this.#set;
    this.#set = null;
    await this.#loop?.catch(() => {});
    if (set !== null) await this.#nvml.eventSetFree(set).catch(() => {});
  }
}
