// When each GPU entered its present state, for the status record's "since": a transition's time.
import type { Gpu, GpuRegistry } from "./gpu-registry.js";

/** When each GPU entered its present state (a transition's time). */
export class StateSince {
  readonly #at = new WeakMap<Gpu, Date>();

  /** From now on, every transition of `registry`'s GPUs is timed. */
  follow(registry: GpuRegistry): void {
    registry.on("transition", (t) => this.#at.set(t.gpu, new Date()));
  }

  of(gpu: Gpu): Date | null {
    return this.#at.get(gpu) ?? null;
  }
}
