// The one writer of what holds a GPU: it turns each GPU's intents (intents.ts) and the
// configuration into a target, and has the registry converge on it. Adapters (RPC, control
// socket, reload, leases, start-up) change intents and then await reconcile(); none of them
// holds or lets go of a GPU itself. The target is computed inside the GPU's transition queue,
// so the last change of intents always wins, whatever order the requests come in.
import { forEachLimited } from "../concurrency.js";
import type { Gpu, GpuRegistry, GpuState } from "./gpu-registry.js";
import { type GpuIntents, type IntentBook, type IntentChange, targetOf } from "./intents.js";

export class Reconciler {
  readonly #registry: GpuRegistry;
  readonly #intents: IntentBook;
  readonly #persistenceMode: () => boolean;

  /** `persistenceMode`: the running configuration's, read at each reconcile (a reload changes it). */
  constructor(registry: GpuRegistry, intents: IntentBook, persistenceMode: () => boolean) {
    this.#registry = registry;
    this.#intents = intents;
    this.#persistenceMode = persistenceMode;
  }

  get registry(): GpuRegistry {
    return this.#registry;
  }

  intentsOf(gpu: Gpu): GpuIntents {
    return this.#intents.of(gpu.index);
  }

  /** Changes some of the GPU's intents (not yet its effects); returns the change, to take back. */
  change(gpu: Gpu, patch: Partial<GpuIntents>): IntentChange {
    return this.#intents.change(gpu.index, patch);
  }

  /** Takes back a change (see IntentBook.revert): what changed since stands. */
  revert(change: IntentChange, fields?: readonly (keyof GpuIntents)[]): void {
    this.#intents.revert(change, fields);
  }

  /** Brings the GPU's effects in line with its intents; resolves with its state after. */
  reconcile(gpu: Gpu): Promise<GpuState> {
    return this.#registry.converge(gpu, () =>
      targetOf(this.#intents.of(gpu.index), { persistenceMode: this.#persistenceMode(), selected: gpu.selected }),
    );
  }

  /** Every GPU, `concurrency` at once (start-up, reload). */
  async reconcileAll(concurrency: number): Promise<void> {
    await forEachLimited(this.#registry.list(), concurrency, async (gpu) => {
      await this.reconcile(gpu);
    });
  }
}
