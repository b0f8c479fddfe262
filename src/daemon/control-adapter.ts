// The control socket's commands: `status` for anyone, and `release` (root only) which lets
// GPUs go completely for as long as the client's connection lasts: when the client ends
// its side, or dies, the daemon holds them again (gpu-persistd release GPU... -- COMMAND).
import type { PeerCredentials } from "../../native-bindings/peer-credentials.js";
import { clientText } from "../connections/client-text.js";
import { BadRequest, type ControlRequest, Lease } from "../control/control-server.js";
import type { Claim, Gpu, GpuRegistry } from "../gpu/gpu-registry.js";
import { parseGpuSelector, selectorMatches } from "../gpu/gpu-selector.js";
import { gpuStatus } from "../status/daemon-status.js";
import type { DaemonContext } from "./context.js";
import { daemonStatus } from "./status-snapshot.js";

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

/** Releases `gpus` completely; the lease's end holds again what was held. */
async function releaseLease(registry: GpuRegistry, gpus: Gpu[]): Promise<Lease> {
  const held = new Map<Gpu, Claim[]>(gpus.map((g) => [g, g.state === "held" ? [...g.claims] : []]));
  for (const gpu of gpus) {
    for (const claim of [...gpu.claims]) await registry.relinquish(gpu, claim, "request");
  }
  return new Lease({ released: gpus.map(gpuStatus) }, async () => {
    for (const [gpu, claims] of held) {
      for (const claim of claims) await registry.acquire(gpu, claim, "request");
    }
    return { held: gpus.map(gpuStatus) };
  });
}

export function controlHandler(ctx: DaemonContext): (request: ControlRequest, peer: PeerCredentials) => unknown {
  return (request, peer) => {
    if (request.command === "status") return daemonStatus(ctx);
    if (request.command === "release") {
      if (peer.uid !== 0) throw new BadRequest("only root may release GPUs (run with sudo)");
      const registry = ctx.registry;
      if (!registry || !ctx.ready) throw new BadRequest("the daemon is still starting; try again once it is ready");
      return releaseLease(registry, namedGpus(registry, request.gpus));
    }
    throw new BadRequest(`unknown command ${clientText(request.command)} (known: status, release)`);
  };
}
