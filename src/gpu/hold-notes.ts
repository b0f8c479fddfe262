// What the journal says about a GPU's holds, as pure functions of what was read or went wrong:
// the registry decides when to say it, these say it.
import {
  KernelCallError,
  NUMA_ONLINE_FAILED,
  type NumaInfo,
  NV_ERR_NVLINK_FABRIC_NOT_READY,
  numaStatusName,
} from "../../native-bindings/nvidia-kernel.js";
import { describeError } from "./describe-error.js";
import type { Gpu, Transition } from "./gpu-model.js";

type Note = [Transition["level"], string];

/** NV_ESC_NUMA_INFO as read at a hold: the raw answer, and for coherent memory what it means. */
export function numaNotes(n: NumaInfo): Note[] {
  const notes: Note[] = [
    [
      "debug",
      `NV_ESC_NUMA_INFO: nid ${n.nid}, status ${n.status}, use_auto_online ${n.useAutoOnline}, memory ${n.memSizeBytes} bytes`,
    ],
  ];
  if (n.status === 0) return notes;
  const failed = n.status === NUMA_ONLINE_FAILED;
  notes.push([
    failed ? "warn" : "info",
    `coherent memory: NUMA node ${n.nid}, ${numaStatusName(n.status)}, ` +
      `${Number(n.memSizeBytes / 2n ** 20n)} MiB${n.useAutoOnline ? ", onlined by the driver" : ""}` +
      (failed ? " (check that /sys/devices/system/memory/auto_online_blocks is online_movable)" : ""),
  ]);
  return notes;
}

export function uvmFailureNote(err: unknown): string {
  const fabric = err instanceof KernelCallError && err.nvStatus === NV_ERR_NVLINK_FABRIC_NOT_READY;
  const why = fabric ? " (the NVLink fabric did not become ready while it was retried)" : "";
  return `cannot keep a UVM registration: ${describeError(err)}${why}; the GPU stays held by its node`;
}

/** A GPU let go, to `idle`; `held`: a node was open, `forConfig`: held for the configuration. */
export function letGoNote(from: Gpu, idle: "released" | "identified", held: boolean, forConfig: boolean): string {
  if (idle === "released") {
    return held ? "released the GPU at a client's request: no fd left on its node" : "released at a client's request";
  }
  if (from.state === "released") return "no longer released";
  if (!held) return "no longer wanted";
  if (!forConfig) return "let go of the GPU: the client's request that held it ended or was taken back";
  return `released the GPU (${from.selected ? "persistence mode is off" : "no longer selected"})`;
}

export function lostNote(cause: unknown): string {
  return `GPU is lost (${describeError(cause)}): released it; the other GPUs stay held. A reset or reboot is needed to recover it.`;
}
