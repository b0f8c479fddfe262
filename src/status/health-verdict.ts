// The fleet health check: is this node's GPU set as wanted, judged from the daemon's status
// alone, and what a scheduler should do about it. Pure functions, so the decision table is
// tested without a daemon or a Slurm controller.
import { recoveryStep } from "../health/recovery-action.js";
import type { DaemonStatus, GpuStatus } from "./daemon-status.js";

/** Every drain reason starts with this, and only reasons that do are ever resumed (LBNL NHC's rule). */
export const REASON_PREFIX = "gpu-persistd:";

/** Problems named in a reason; the rest are counted, so the reason stays one readable line. */
const PROBLEMS_SHOWN = 2;

export interface HealthVerdict {
  healthy: boolean;
  /** One line, REASON_PREFIX first: the drain reason when unhealthy, a summary when healthy. */
  reason: string;
}

export interface HealthInput {
  /** The daemon's status, or null when it could not be had. */
  status: DaemonStatus | null;
  /** Why there is no status (the control client's message), when status is null. */
  unavailable?: string;
  /** A GPU an admin released (a reset, a MIG change) counts as unhealthy too. */
  drainReleased: boolean;
}

const gpuName = (g: GpuStatus): string => `GPU ${g.index}${g.pciBusId ? ` ${g.pciBusId}` : ""}`;

function problem(g: GpuStatus, drainReleased: boolean): string | null {
  // Not selected, or deliberately not persistent (persistenceMode false): nothing is wrong.
  if (!g.wanted || g.held) return null;
  switch (g.state) {
    case "released":
      return drainReleased ? `${gpuName(g)} released` : null;
    case "lost":
    case "failed":
      return `${gpuName(g)} ${g.state}${g.error ? `: ${g.error}` : ""}`;
    case "unidentified":
      return `${gpuName(g)} unidentified${g.error ? `: ${g.error}` : ""}`;
    default:
      // identified or holding: the daemon is still bringing it up.
      return `${gpuName(g)} not held yet (${g.state})`;
  }
}

/** The driver reports a recovery action other than none: the GPU takes no jobs until it clears. */
function recovery(g: GpuStatus): string | null {
  if (!g.selected || g.recoveryAction === null || g.recoveryAction === "none") return null;
  return `${gpuName(g)} recovery action ${g.recoveryAction}: ${recoveryStep(g.recoveryAction, g.index)}`;
}

/** The daemon's selectors that match no GPU: each names a GPU the node is missing (status, wait and health-check say it alike). */
export function missingGpus(status: Pick<DaemonStatus, "unmatchedSelectors">): string[] {
  return status.unmatchedSelectors.map((text) => `GPU ${text} missing: NVML reports no such GPU`);
}

/**
 * Whether every selected GPU is held with no recovery action pending, with the one-line
 * reason a drain would carry (the action's exact command in it).
 */
export function healthVerdict(input: HealthInput): HealthVerdict {
  const { status } = input;
  if (!status) return { healthy: false, reason: `${REASON_PREFIX} ${input.unavailable ?? "no daemon status"}` };
  const problems = [
    // CUDA fails on a node whose libraries and module differ, as NVML does: no jobs there.
    ...(status.nvmlDegraded
      ? [
          `NVML ${status.nvmlDegraded.libraryVersion ?? "?"} does not match kernel module ${status.nvmlDegraded.moduleVersion ?? "?"}: reboot`,
        ]
      : []),
    ...missingGpus(status),
    ...status.devices.flatMap((g) => [problem(g, input.drainReleased), recovery(g)].filter((p) => p !== null)),
  ];
  if (problems.length === 0) {
    const wanted = status.devices.filter((g) => g.wanted);
    const held = wanted.filter((g) => g.held).length;
    const released = wanted.length - held;
    const deliberate = status.persistenceMode ? "" : " (persistence mode off, as configured)";
    return {
      healthy: true,
      reason: `${REASON_PREFIX} ${held}/${wanted.length} GPUs held${released ? ` (${released} released by an admin)` : ""}${deliberate}`,
    };
  }
  const shown = problems.slice(0, PROBLEMS_SHOWN);
  if (problems.length > PROBLEMS_SHOWN) shown.push(`${problems.length - PROBLEMS_SHOWN} more`);
  return { healthy: false, reason: `${REASON_PREFIX} ${shown.join("; ")}` };
}

/** The node as the scheduler sees it: drained (or draining, or down) with a reason, or not. */
export interface NodeState {
  /** The node is drained, draining or down: it takes no new jobs. */
  offline: boolean;
  /** The reason set on it ("" for none), without Slurm's [user@time] suffix. */
  reason: string;
}

export type NodeAction = { action: "drain"; reason: string } | { action: "resume" } | { action: "none"; why: string };

/**
 * What to do to the node: drain it when a GPU is not held, resume it once every GPU is,
 * but only ever touch a node whose reason is ours, so an admin's drain (or another
 * check's) is neither overwritten nor undone.
 */
export function nodeAction(verdict: HealthVerdict, node: NodeState): NodeAction {
  const ours = node.reason.startsWith(REASON_PREFIX);
  if (verdict.healthy) {
    if (node.offline && ours) return { action: "resume" };
    return {
      action: "none",
      why: node.offline ? `the node is offline for another reason, left alone: ${node.reason}` : "the node is up",
    };
  }
  if (node.offline && !ours && node.reason !== "") {
    return { action: "none", why: `the node is already offline for another reason, left alone: ${node.reason}` };
  }
  if (node.offline && ours && node.reason === verdict.reason) return { action: "none", why: "already drained" };
  return { action: "drain", reason: verdict.reason };
}
