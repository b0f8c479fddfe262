// Program 35006's backend: translates the protocol's GPU addresses, modes and NUMA states
// into registry requests, and the registry's answers into NvPdStatus. No state of its own.
// Semantics as the original's: version 1's Set moves persistence and NUMA together (and
// rolls persistence back when NUMA fails); version 2 moves each alone.
import { type Gpu, type GpuRegistry, hasCoherentMemory } from "../gpu/gpu-registry.js";
import { NvPdStatus, type PersistenceBackend } from "../rpc/persistence-program.js";

const NUMA_ONLINE_FAILED = 4;

async function setNuma(registry: GpuRegistry, gpu: Gpu, online: boolean): Promise<NvPdStatus> {
  const wasHeld = gpu.state === "held";
  if (!online) {
    await registry.relinquish(gpu, "numa", "request");
    return NvPdStatus.SUCCESS;
  }
  const state = await registry.acquire(gpu, "numa", "request");
  if (state === "lost") return NvPdStatus.DRIVER;
  if (!hasCoherentMemory(gpu)) return NvPdStatus.SUCCESS;
  if (state === "held" && gpu.numa?.status !== NUMA_ONLINE_FAILED) return NvPdStatus.SUCCESS;
  // The memory did not come online: keep nothing open for it.
  await registry.relinquish(gpu, "numa", wasHeld ? "request" : "undo");
  return NvPdStatus.NUMA_FAILURE;
}

export function rpcBackend(registry: GpuRegistry): PersistenceBackend {
  return {
    mode: (address) => {
      const gpu = registry.byPci(address);
      return gpu ? gpu.state === "held" && gpu.claims.has("persistence") : null;
    },
    setMode: async (address, enabled, withNuma) => {
      const gpu = registry.byPci(address);
      if (!gpu) return NvPdStatus.DEVICE_NOT_FOUND;
      if (!enabled) {
        if (withNuma) await registry.relinquish(gpu, "numa", "request");
        await registry.relinquish(gpu, "persistence", "request");
        return NvPdStatus.SUCCESS;
      }
      const held = gpu.claims.has("persistence") && gpu.state === "held";
      const state = await registry.acquire(gpu, "persistence", "request");
      if (state !== "held") return state === "lost" ? NvPdStatus.DRIVER : NvPdStatus.IO;
      if (!withNuma) return NvPdStatus.SUCCESS;
      const numa = await setNuma(registry, gpu, true);
      if (numa !== NvPdStatus.SUCCESS && !held) await registry.relinquish(gpu, "persistence", "undo");
      return numa;
    },
    setNuma: async (address, online) => {
      const gpu = registry.byPci(address);
      return gpu ? setNuma(registry, gpu, online) : null;
    },
  };
}
