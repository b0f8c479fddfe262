// The only path to NVML's persistence setter. Two guards live here and nowhere else:
// --dry-run (never call it) and the RPC socket (once it listens, NVML routes the setter to
// this very daemon: a deadlock or a recursion).
import type { DeviceHandle, Nvml } from "../../native-bindings/nvml.js";
import { PERSISTENCE_ENABLED } from "../../native-bindings/nvml.js";

/** "closed": the RPC socket listens, so the GPU is held by its node alone, NVML untouched. */
export type SetOutcome = "enabled" | "dry-run" | "closed";

export class PersistenceSetter {
  readonly #dryRun: boolean;
  #rpcListening = false;

  constructor(dryRun: boolean) {
    this.#dryRun = dryRun;
  }

  /** Called just before the RPC socket starts listening; the setter is closed from then on. */
  closeForRpc(): void {
    this.#rpcListening = true;
  }

  /**
   * Enables persistence through NVML. Without calling NVML, returns "dry-run" under
   * --dry-run and "closed" once the RPC socket listens; rethrows NVML's error otherwise.
   */
  async enable(nvml: Nvml, device: DeviceHandle): Promise<SetOutcome> {
    if (this.#dryRun) return "dry-run";
    if (this.#rpcListening) return "closed";
    await nvml.setPersistenceMode(device, PERSISTENCE_ENABLED);
    return "enabled";
  }
}
