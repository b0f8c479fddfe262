// Program 35006's backend: translates the protocol's GPU addresses, modes and NUMA states
// into intents (intents.ts), and the outcome into NvPdStatus. No state of its own.
// Semantics as the original's: version 1's Set moves persistence and NUMA together (and
// takes persistence back when NUMA fails); version 2 moves each alone. Every answer waits
// for the NVML session to settle: a GPU reported released is pinned by nothing of ours.
import { NUMA_ONLINE_FAILED } from "../../native-bindings/nvidia-kernel.js";
import type { PeerCredentials } from "../../native-bindings/peer-credentials.js";
import { fixes } from "../fixes.js";
import { describeError } from "../gpu/describe-error.js";
import type { Gpu } from "../gpu/gpu-registry.js";
import { hasCoherentMemory } from "../gpu/gpu-registry.js";
import { type IntentChange as Change, type GpuIntents, targetOf } from "../gpu/intents.js";
import { NvPdStatus, type PersistenceBackend } from "../rpc/persistence-program.js";
import type { PciAddress } from "../selection/pci-address.js";
import { rpcPersistence } from "../status/daemon-status.js";
import type { DaemonContext } from "./context.js";
import { wanted } from "./hold-policy.js";
import { type ChangeParts, changeIntents } from "./intent-change.js";

export function rpcBackend(ctx: DaemonContext): PersistenceBackend {
  /** The GPU and what changes it, once bring-up ended (a change waits for it); null: no such GPU. */
  async function target(address: PciAddress): Promise<{ gpu: Gpu; parts: ChangeParts } | null> {
    await ctx.broughtUp.promise;
    const { reconciler, coordinator } = ctx;
    const gpu = reconciler?.registry.byPci(address);
    return gpu && reconciler && coordinator ? { gpu, parts: { reconciler, coordinator } } : null;
  }

  /** A hold during a `release -- COMMAND` would pin a GPU its command may be resetting. */
  const leased = (gpu: Gpu, intents: GpuIntents, what: string): boolean => {
    if (!intents.lease) return false;
    ctx.log.warn(
      { gpuIndex: gpu.index },
      `RPC: refused to ${what}: the GPU is released by 'gpu-persistd release' (pid ${intents.lease.pid}) until that ends`,
    );
    return true;
  };

  /** A change the session could not follow was taken back: the journal says why. */
  const takenBack = (gpu: Gpu, problem: string): NvPdStatus => {
    ctx.log.warn({ gpuIndex: gpu.index }, `RPC: cannot release the GPU: ${problem}; holding it again`);
    return NvPdStatus.DRIVER;
  };

  /** The journal says why a client's hold failed: the protocol's answer is one number. */
  const refusedHold = (gpu: Gpu): NvPdStatus => {
    const why = gpu.fault ? describeError(gpu.fault) : gpu.state;
    const fix = gpu.state === "lost" ? `; to recover it: ${fixes.lostGpu}` : "";
    ctx.log.warn({ gpuIndex: gpu.index }, `RPC: cannot hold the GPU: it is ${gpu.state} (${why})${fix}`);
    return gpu.state === "lost" ? NvPdStatus.DRIVER : NvPdStatus.IO;
  };

  const owner = (peer: PeerCredentials) => ({ uid: peer.uid, since: new Date() });

  /** Lets go at a client's request; NUMA offline too when `withNuma`. */
  async function release(gpu: Gpu, parts: ChangeParts, withNuma: boolean, peer: PeerCredentials) {
    const patch: Partial<GpuIntents> = { client: { mode: "release", ...owner(peer) } };
    if (withNuma) Object.assign(patch, { numa: null });
    const { problem } = await changeIntents(parts, [gpu], () => patch, false);
    return problem === null ? NvPdStatus.SUCCESS : takenBack(gpu, problem);
  }

  /**
   * Holds at a client's request (with NUMA online when `withNuma`). A hold the configuration
   * already wants ends the client's choice instead: the configuration decides again.
   */
  async function hold(gpu: Gpu, parts: ChangeParts, withNuma: boolean, peer: PeerCredentials) {
    const { reconciler, coordinator } = parts;
    if (leased(gpu, reconciler.intentsOf(gpu), "hold it")) return NvPdStatus.IO;
    const client = wanted(ctx.config, gpu) ? null : ({ mode: "hold", ...owner(peer) } as const);
    const numa = reconciler.intentsOf(gpu).numa ?? owner(peer);
    const patch: Partial<GpuIntents> = withNuma ? { client, numa } : { client };
    const change = reconciler.change(gpu, patch);
    const state = await reconciler.reconcile(gpu);
    await coordinator.settle();
    if (state !== "held") {
      // The NUMA request goes with the hold that failed; the hold itself stays asked for.
      if (withNuma) reconciler.revert(change, ["numa"]);
      return refusedHold(gpu);
    }
    return withNuma ? numaOutcome(gpu, parts, change) : NvPdStatus.SUCCESS;
  }

  /**
   * After a NUMA-online request (`change`): no coherent memory makes it a no-op (the NUMA
   * intent goes), memory that did not come online takes the whole request back.
   */
  async function numaOutcome(gpu: Gpu, { reconciler, coordinator }: ChangeParts, change: Change) {
    const failed = hasCoherentMemory(gpu) && gpu.numa?.status === NUMA_ONLINE_FAILED;
    if (hasCoherentMemory(gpu) && !failed) return NvPdStatus.SUCCESS;
    reconciler.revert(change, failed ? undefined : ["numa"]);
    await reconciler.reconcile(gpu);
    await coordinator.settle();
    return failed ? NvPdStatus.NUMA_FAILURE : NvPdStatus.SUCCESS;
  }

  async function numaOnline(gpu: Gpu, parts: ChangeParts, peer: PeerCredentials) {
    const { reconciler, coordinator } = parts;
    const current = reconciler.intentsOf(gpu);
    if (leased(gpu, current, "bring NUMA memory online")) return NvPdStatus.IO;
    const patch: Partial<GpuIntents> = { numa: current.numa ?? owner(peer) };
    const change = reconciler.change(gpu, patch);
    const state = await reconciler.reconcile(gpu);
    await coordinator.settle();
    if (state === "held") return numaOutcome(gpu, parts, change);
    // Not held: lost, a hold that failed, or a lease that came in meanwhile.
    reconciler.revert(change);
    if (state === "lost") return NvPdStatus.DRIVER;
    return leased(gpu, reconciler.intentsOf(gpu), "bring NUMA memory online") ? NvPdStatus.IO : refusedHold(gpu);
  }

  /**
   * NUMA offline; with nothing else wanting the GPU held it is released, as the original's.
   * A lease does not count: what is wanted once it ends is what counts.
   */
  async function numaOffline(gpu: Gpu, parts: ChangeParts, peer: PeerCredentials) {
    const after = { ...parts.reconciler.intentsOf(gpu), numa: null, lease: null };
    const config = { persistenceMode: ctx.config.persistenceMode, selected: gpu.selected };
    const patch: Partial<GpuIntents> = { numa: null };
    if (targetOf(after, config).claims.length === 0)
      Object.assign(patch, { client: { mode: "release", ...owner(peer) } });
    const { problem } = await changeIntents(parts, [gpu], () => patch, false);
    return problem === null ? NvPdStatus.SUCCESS : takenBack(gpu, problem);
  }

  return {
    mode: (address) => {
      const gpu = ctx.registry?.byPci(address);
      return gpu ? rpcPersistence(gpu) : null;
    },
    setMode: async (address, enabled, withNuma, peer) => {
      const found = await target(address);
      if (!found) return NvPdStatus.DEVICE_NOT_FOUND;
      return enabled ? hold(found.gpu, found.parts, withNuma, peer) : release(found.gpu, found.parts, withNuma, peer);
    },
    setNuma: async (address, online, peer) => {
      const found = await target(address);
      if (!found) return null;
      return online ? numaOnline(found.gpu, found.parts, peer) : numaOffline(found.gpu, found.parts, peer);
    },
  };
}
