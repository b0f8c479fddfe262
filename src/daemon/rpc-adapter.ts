// Program 35006's backend: translates the protocol's GPU addresses, modes and NUMA states
// into registry requests, and the registry's answers into NvPdStatus. No state of its own.
// Semantics as the original's: version 1's Set moves persistence and NUMA together (and
// rolls persistence back when NUMA fails); version 2 moves each alone. Every answer waits
// for the NVML session to settle: a GPU reported released is pinned by nothing of ours.
import { NUMA_ONLINE_FAILED } from "../../native-bindings/nvidia-kernel.js";
import { fixes } from "../fixes.js";
import { describeError } from "../gpu/describe-error.js";
import type { Claim, Gpu, GpuRegistry } from "../gpu/gpu-registry.js";
import { hasCoherentMemory } from "../gpu/gpu-registry.js";
import { NvPdStatus, type PersistenceBackend } from "../rpc/persistence-program.js";
import { rpcPersistence } from "../status/daemon-status.js";
import type { DaemonContext } from "./context.js";

/** The registry, the coordinator and the leases an answer needs; null before bring-up ended. */
function parts(ctx: DaemonContext) {
  const { registry, coordinator } = ctx;
  return registry && coordinator ? { registry, coordinator, leases: ctx.leases } : null;
}

export function rpcBackend(ctx: DaemonContext): PersistenceBackend {
  /** A hold during a `release -- COMMAND` would pin a GPU its command may be resetting. */
  const leased = (gpu: Gpu, what: string): boolean => {
    const lease = ctx.leases.of(gpu);
    if (!lease) return false;
    ctx.log.warn(
      { gpuIndex: gpu.index },
      `RPC: refused to ${what}: the GPU is released by 'gpu-persistd release' (pid ${lease.pid}) until that ends`,
    );
    return true;
  };

  /** The journal says why a client's hold failed: the protocol's answer is one number. */
  const refusedHold = (gpu: Gpu): void => {
    const why = gpu.fault ? describeError(gpu.fault) : gpu.state;
    const fix = gpu.state === "lost" ? `; to recover it: ${fixes.lostGpu}` : "";
    ctx.log.warn({ gpuIndex: gpu.index }, `RPC: cannot hold the GPU: it is ${gpu.state} (${why})${fix}`);
  };

  /** Drops claims at a client's request; a release the session cannot follow is taken back. */
  async function letGo(registry: GpuRegistry, gpu: Gpu, claims: Claim[]): Promise<NvPdStatus> {
    const p = parts(ctx);
    if (!p) return NvPdStatus.UNKNOWN;
    const lease = ctx.leases.of(gpu);
    if (lease) {
      // Released by the lease (answered once that release is done); its end must not take these back.
      for (const claim of claims) ctx.leases.forget(gpu, claim);
      await lease.releasing;
      await p.coordinator.settle();
      return NvPdStatus.SUCCESS;
    }
    let had = [...gpu.claims];
    // Nothing left to hold it: released outright, so that no NVML session pins it either.
    if (had.every((c) => claims.includes(c))) had = (await registry.release(gpu)).claims;
    else for (const claim of claims) await registry.relinquish(gpu, claim, "request");
    const session = await p.coordinator.settle();
    if (gpu.state === "released" && session.open) {
      ctx.log.warn(
        { gpuIndex: gpu.index },
        `RPC: cannot release the GPU: ${session.problem ?? "the NVML session stays open"}; holding it again`,
      );
      await registry.restore(gpu, had);
      await p.coordinator.settle();
      return NvPdStatus.DRIVER;
    }
    return NvPdStatus.SUCCESS;
  }

  async function setNuma(registry: GpuRegistry, gpu: Gpu, online: boolean): Promise<NvPdStatus> {
    const p = parts(ctx);
    if (!p) return NvPdStatus.UNKNOWN;
    if (!online) return letGo(registry, gpu, ["numa"]);
    if (leased(gpu, "bring NUMA memory online")) return NvPdStatus.IO;
    const wasHeld = gpu.state === "held";
    const state = await registry.acquire(gpu, "numa", "request");
    await p.coordinator.settle();
    if (state === "lost") return NvPdStatus.DRIVER;
    if (!hasCoherentMemory(gpu)) return NvPdStatus.SUCCESS;
    if (state === "held" && gpu.numa?.status !== NUMA_ONLINE_FAILED) return NvPdStatus.SUCCESS;
    // The memory did not come online: keep nothing open for it.
    await registry.relinquish(gpu, "numa", wasHeld ? "request" : "undo");
    await p.coordinator.settle();
    return NvPdStatus.NUMA_FAILURE;
  }

  return {
    mode: (address) => {
      const gpu = ctx.registry?.byPci(address);
      return gpu ? rpcPersistence(gpu) : null;
    },
    setMode: async (address, enabled, withNuma) => {
      await ctx.broughtUp.promise;
      const p = parts(ctx);
      const gpu = p?.registry.byPci(address);
      if (!p || !gpu) return NvPdStatus.DEVICE_NOT_FOUND;
      const { registry, coordinator } = p;
      if (!enabled) return letGo(registry, gpu, withNuma ? ["numa", "persistence"] : ["persistence"]);
      if (leased(gpu, "hold it")) return NvPdStatus.IO;
      const held = gpu.claims.has("persistence") && gpu.state === "held";
      const state = await registry.acquire(gpu, "persistence", "request");
      await coordinator.settle();
      if (state !== "held") {
        refusedHold(gpu);
        return state === "lost" ? NvPdStatus.DRIVER : NvPdStatus.IO;
      }
      if (!withNuma) return NvPdStatus.SUCCESS;
      const numa = await setNuma(registry, gpu, true);
      if (numa !== NvPdStatus.SUCCESS && !held) {
        await registry.relinquish(gpu, "persistence", "undo");
        await coordinator.settle();
      }
      return numa;
    },
    setNuma: async (address, online) => {
      await ctx.broughtUp.promise;
      const gpu = ctx.registry?.byPci(address);
      return gpu && ctx.registry ? setNuma(ctx.registry, gpu, online) : null;
    },
  };
}
