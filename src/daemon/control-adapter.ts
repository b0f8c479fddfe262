// The control socket's commands: `status` for anyone, and `release` (root only) which lets
// GPUs go completely for as long as the client's connection lasts: when the client ends
// its side, or dies, the daemon holds them again (gpu-persistd release GPU... -- COMMAND).
import type { PeerCredentials } from "../../native-bindings/peer-credentials.js";
import { clientText } from "../connections/client-text.js";
import { BadRequest, type ControlRequest, Lease } from "../control/control-server.js";
import type { Gpu, GpuRegistry } from "../gpu/gpu-registry.js";
import { parseGpuSelector, selectorMatches } from "../selection/gpu-selector.js";
import type { DaemonContext } from "./context.js";
import { LeasedElsewhere, type LeaseRecord } from "./release-leases.js";
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
 * Releases `gpus` completely: no fd of the daemon's on them, and no NVML session (which
 * attaches every GPU) once the coordinator has settled. The reply goes out only then, so
 * COMMAND never starts while anything of the daemon's pins a GPU. A release that cannot be
 * completed is taken back before the error goes out. The lease's end takes back what each
 * GPU had.
 */
async function releaseLease(ctx: DaemonContext, registry: GpuRegistry, gpus: Gpu[], pid: number): Promise<Lease> {
  const coordinator = ctx.coordinator;
  if (!coordinator) throw new BadRequest("the daemon is still starting; try again once it is ready");
  let record: LeaseRecord;
  try {
    record = ctx.leases.open(gpus, pid);
  } catch (err) {
    if (err instanceof LeasedElsewhere) throw new BadRequest(err.message);
    throw err;
  }
  const end = async (): Promise<void> => {
    await ctx.leases.close(record, registry);
    await coordinator.settle();
  };
  let problem: string | null = null;
  try {
    await ctx.leases.release(record, registry);
    const kept = gpus.filter((g) => g.state !== "released");
    if (kept.length > 0) {
      problem = kept.map((g) => `GPU ${g.index} is ${g.state}: there is nothing to release`).join("; ");
    } else {
      const session = await coordinator.settle();
      if (session.open)
        problem = `${session.problem ?? "the NVML session could not be ended"}, so it still pins every GPU`;
    }
  } catch (err) {
    await end();
    throw err;
  }
  if (problem !== null) {
    await end();
    throw new BadRequest(`cannot release: ${problem}; nothing was released`);
  }
  const statusOf = (gpu: Gpu) => gpuStatusOf(ctx, gpu);
  return new Lease({ released: gpus.map(statusOf) }, async () => {
    await end();
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
      return releaseLease(ctx, registry, namedGpus(registry, request.gpus), peer.pid);
    }
    throw new BadRequest(`unknown command ${clientText(request.command)} (known: status, release)`);
  };
}
