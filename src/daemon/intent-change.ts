// A client's change of intents, as one transaction: change, reconcile, and wait for the NVML
// session to follow. A release is answered only once nothing of ours pins the GPU (the
// session attaches every GPU); one that cannot get there is taken back whole before the
// error goes out. Every release goes through here: RPC Set DISABLED, NUMA offline and
// `release -- COMMAND`.
import type { Gpu, GpuState } from "../gpu/gpu-registry.js";
import type { GpuIntents } from "../gpu/intents.js";
import type { Reconciler } from "../gpu/reconciler.js";
import type { SessionCoordinator } from "../gpu/session-coordinator.js";

/** What a change of intents goes through: the reconciler, and the NVML session's coordinator. */
export interface ChangeParts {
  reconciler: Reconciler;
  coordinator: SessionCoordinator;
}

/** The state each GPU ended in; `problem` says why the change was taken back (null: it took). */
export interface ChangeOutcome {
  states: GpuState[];
  problem: string | null;
}

/**
 * Applies `patch(gpu)` to each GPU's intents, reconciles them and settles the session.
 * `mustRelease`: every GPU has to end "released" (a lease; a lost GPU cannot be). One of them
 * still released while the session pins it fails the change too. On failure the change is
 * taken back (what another request changed since stands) and the GPUs reconciled again.
 */
export async function changeIntents(
  { reconciler, coordinator }: ChangeParts,
  gpus: readonly Gpu[],
  patch: (gpu: Gpu) => Partial<GpuIntents>,
  mustRelease: boolean,
): Promise<ChangeOutcome> {
  const patches = gpus.map(patch);
  const changes = gpus.map((gpu, i) => reconciler.change(gpu, patches[i] as Partial<GpuIntents>));
  const states = await Promise.all(gpus.map((gpu) => reconciler.reconcile(gpu)));
  let problem: string | null = null;
  const kept = mustRelease ? gpus.filter((_, i) => states[i] !== "released") : [];
  if (kept.length > 0) {
    problem = kept.map((g) => `GPU ${g.index} is ${g.state}: there is nothing to release`).join("; ");
  } else if (states.includes("released")) {
    const session = await coordinator.settle();
    // Another request may have held a GPU again meanwhile: that is not this change's failure.
    if (session.open && gpus.some((g) => g.state === "released")) {
      problem = `${session.problem ?? "the NVML session could not be ended"}, so it still pins every GPU`;
    }
  }
  if (problem === null) return { states, problem };
  for (const change of changes) reconciler.revert(change);
  await Promise.all(gpus.map((gpu) => reconciler.reconcile(gpu)));
  await coordinator.settle();
  return { states, problem };
}
