// Who the GPUs are: NVML's identity of each, asked for in parallel at start-up.
import type { Nvml } from "../../native-bindings/nvml.js";
import { forEachLimited } from "../concurrency.js";
import type { Identity } from "./gpu-model.js";

/**
 * Asks NVML for every GPU, `concurrency` at once: an Identity each, or the error that kept
 * NVML from telling (the GPU then stays "unidentified"; the others are not held up by it).
 */
export async function identifyGpus(nvml: Nvml, count: number, concurrency: number): Promise<(Identity | Error)[]> {
  const found: (Identity | Error)[] = Array.from({ length: count }, () => new Error("not asked"));
  await forEachLimited(
    found.map((_, index) => index),
    concurrency,
    async (index) => {
      try {
        const lookUpStarted = performance.now();
        const handle = await nvml.handleByIndex(index);
        const lookUpMs = performance.now() - lookUpStarted;
        const [uuid, name, pci, minor] = await Promise.all([
          nvml.uuid(handle),
          nvml.name(handle),
          nvml.pciInfo(handle),
          nvml.minorNumber(handle),
        ]);
        found[index] = {
          handle,
          uuid,
          name,
          minor,
          pci: { domain: pci.domain, bus: pci.bus, device: pci.device, function: 0 },
          lookUpMs,
        };
      } catch (err) {
        found[index] = err as Error;
      }
    },
  );
  return found;
}
