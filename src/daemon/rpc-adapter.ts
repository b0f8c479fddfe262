// Program 35006's backend: translates the protocol's GPU addresses and modes into registry
// requests and the registry's answers into NvPdStatus. No state of its own.
import type { GpuRegistry } from "../gpu/gpu-registry.js";
import { NvPdStatus, type PersistenceBackend } from "../rpc/persistence-program.js";

export function rpcBackend(registry: GpuRegistry): PersistenceBackend {
  return {
    mode: (address) => {
      const gpu = registry.byPci(address);
      return gpu ? gpu.state === "held" : null;
    },
    setMode: async (address, enabled) => {
      const gpu = registry.byPci(address);
      if (!gpu) return NvPdStatus.DEVICE_NOT_FOUND;
      if (!enabled) {
        await registry.relinquish(gpu, "persistence", "request");
        return NvPdStatus.SUCCESS;
      }
      const state = await registry.acquire(gpu, "persistence", "request");
      return state === "held" ? NvPdStatus.SUCCESS : state === "lost" ? NvPdStatus.DRIVER : NvPdStatus.IO;
    },
    // No simulated or supported GPU has coherent (NUMA) memory: nothing to online or offline.
    setNuma: (address) => (registry.byPci(address) ? NvPdStatus.SUCCESS : null),
  };
}
