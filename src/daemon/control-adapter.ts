// The control socket's commands: `status` for anyone, and `release` (root only) which lets
// GPUs go completely for as long as the client lasts (a lease, release-leases.ts): when the
// client ends its side, or dies, the daemon holds them again (gpu-persistd release GPU...
// -- COMMAND).
import type { PeerCredentials } from "../../native-bindings/peer-credentials.js";
import { clientText } from "../connections/client-text.js";
import { BadRequest, type ControlRequest, Lease } from "../control/control-server.js";
import type { Gpu, GpuRegistry } from "../gpu/gpu-registry.js";
import { parseGpuSelector, selectorMatches } from "../selection/gpu-selector.js";
import type { DaemonContext } from "./context.js";
import { daemonStatus, gpuStatusOf } from "./status-snapshot.js";

/** GPUs one release may name. */
const MAX_RELEASE_GPUS = 256;

function namedGpus(registry: GpuRegistry, names: unknown): Gpu[] {
  if (!Array.isArray(names) || names.length === 0 || names.length > MAX_RELEASE_GPUS) {
    throw new BadRequest(`"gpus" is a list of 1 to ${MAX_RELEASE_GPUS} GPU indexes, UUIDs or PCI bus ids`);
  }
  const gpus = new Set<Gpu>();
  for (const name of names) {
    const selector = typeof name === "string" ? parseGpuSelector(name) : null;
    if (!selector) throw new BadRequest(`${clientText(String(name))} is not a GPU index, UUID or PCI bus id`);
    const found = registry.list().filter((g) => selectorMatches(selector, g));
    if (found.length === 0) throw new BadRequest(`no GPU matches ${clientText(String(name))}`);
    for (const gpu of found) gpus.add(gpu);
  }
  return [...gpus];
}

/**
 * Releases `gpus` completely for client `pid`: no fd of the daemon's on them, and no NVML
 * session (which attaches every GPU). The reply goes out only then, so COMMAND never starts
 * while anything of the daemon's pins a GPU. A release that cannot be completed is taken back
 * before the error goes out. The lease's end leaves each GPU as its other intents want it.
 */
async function releaseLease(ctx: DaemonContext, gpus: Gpu[], pid: number): Promise<Lease> {
  const { reconciler, coordinator } = ctx;
  if (!reconciler || !coordinator) throw new BadRequest("the daemon is still starting; try again once it is ready");
  const parts = { reconciler, coordinator };
  const problem = await ctx.leases.open(parts, gpus, pid);
  if (problem !== null) throw new BadRequest(`cannot release: ${problem}; nothing was released`);
  const statusOf = (gpu: Gpu) => gpuStatusOf(ctx, gpu);
  return new Lease({ released: gpus.map(statusOf) }, async () => {
    await ctx.leases.close(parts, pid, gpus);
    return { held: gpus.map(statusOf) };
  });
}

export function controlHandler(ctx: DaemonContext): (request: ControlRequest, peer: PeerCredentials) => unknown {
  return (request, peer) => {
    if (request.command === "status") return daemonStatus(ctx);
    if (request.command === "release") {
      if (peer.uid !== 0) throw new BadRequest("only root may release GPUs (run with sudo)");
      const registry = ctx.registry;
      if (!registry || !ctx.ready) throw new BadRequest("the daemon is still starting; try again once it is ready");
      return releaseLease(ctx, namedGpus(registry, request.gpus), peer.pid);
    }
    throw new BadRequest(`unknown command ${clientText(request.command)} (known: status, release)`);
  };
}
