// NVML's recovery action (NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, nvmlDeviceGpuRecoveryAction_t):
// what a GPU needs after a fault, as the driver reports it, and what an admin runs for it.
// One table, read by the journal line, `status`, the metrics and the Slurm drain reason.

/** The action's name in status and metrics; unknown values (a newer driver's) keep their number. */
export type RecoveryAction =
  | "none"
  | "gpu-reset"
  | "node-reboot"
  | "drain-p2p"
  | "drain-and-reset"
  | `action-${number}`;

/** nvml.h's values, in order: NONE 0, GPU_RESET 1, NODE_REBOOT 2, DRAIN_P2P 3, DRAIN_AND_RESET 4. */
const NAMES: readonly RecoveryAction[] = ["none", "gpu-reset", "node-reboot", "drain-p2p", "drain-and-reset"];

export function recoveryActionName(value: number): RecoveryAction {
  return NAMES[value] ?? `action-${value}`;
}

/** NVML's number for a name (the metric's value), the inverse of recoveryActionName. */
export function recoveryActionValue(action: RecoveryAction): number {
  const known = NAMES.indexOf(action);
  return known >= 0 ? known : Number(action.slice("action-".length));
}

/** The step for it, short: the exact command where there is one (a drain reason carries it). */
export function recoveryStep(action: RecoveryAction, index: number): string {
  const reset = `gpu-persistd release ${index} -- nvidia-smi -r -i ${index}`;
  switch (action) {
    case "none":
      return "nothing to do";
    case "gpu-reset":
      return `stop its jobs, then run: ${reset}`;
    case "node-reboot":
      return "reboot the node (a GPU reset is not enough)";
    case "drain-p2p":
      return "stop its NVLink and P2P traffic; the driver then reports the next action";
    case "drain-and-reset":
      return `let running jobs end, then run: ${reset}`;
    default:
      return "see NVIDIA's GPU recovery guide";
  }
}
