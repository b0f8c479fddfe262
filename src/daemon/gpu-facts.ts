// What the daemon knows about each GPU beyond its registry entry, for the one status record
// every reader judges from: whether the configuration wants it held, since when it is in its
// state, and who released it. Readers (wait, health-check, status) never re-derive these.
import type { Gpu, GpuRegistry } from "../gpu/gpu-registry.js";
import type { GpuFacts } from "../status/daemon-status.js";
import type { DaemonContext } from "./context.js";
import { wanted } from "./hold-policy.js";

/** When each GPU entered its present state (a transition's time). */
export class StateSince {
  readonly #at = new WeakMap<Gpu, Date>();

  /** From now on, every transition of `registry`'s GPUs is timed. */
  follow(registry: GpuRegistry): void {
    registry.on("transition", (t) => this.#at.set(t.gpu, new Date()));
  }

  of(gpu: Gpu): Date | null {
    return this.#at.get(gpu) ?? null;
  }
}

/** Who a released GPU is released for: a lease's client (by PID), or a plain release (root: only root may release). */
function releasedBy(ctx: DaemonContext, gpu: Gpu): GpuFacts["releasedBy"] {
  if (gpu.state !== "released") return null;
  const lease = ctx.leases.of(gpu);
  // A plain release that came in during the lease outlives it: it is the plain one's.
  if (lease && lease.before.get(gpu)?.state !== "released") return { kind: "lease", uid: 0, pid: lease.pid };
  return { kind: "request", uid: 0, pid: null };
}

export function gpuFacts(ctx: DaemonContext, gpu: Gpu): GpuFacts {
  const since = ctx.since.of(gpu);
  return {
    wanted: wanted(ctx.config, gpu),
    since: since ? since.toISOString() : null,
    releasedBy: releasedBy(ctx, gpu),
  };
}
