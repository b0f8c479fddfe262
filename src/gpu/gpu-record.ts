import type { DeviceHandle } from "../../native-bindings/nvml.js";

/** What the daemon knows of one GPU; status reports it as-is. */
export interface GpuRecord {
  index: number;
  uuid: string;
  name: string;
  pciBusId: string;
  minor: number;
  handle: DeviceHandle | null;
  persistence: "enabled" | "disabled" | "unknown";
  /** Chosen by --devices (every GPU when none is given). */
  selected: boolean;
  /** NVML said the GPU is lost (Xid 79): released, and left alone until the daemon restarts. */
  lost: boolean;
  /** Xid events seen since start, by Xid number. */
  xids: Record<number, number>;
  /** The fd held open on the GPU's device node, or null when released. */
  fd: number | null;
  /** The node `fd` was opened from. */
  nodePath: string | null;
  /** Why the GPU is not held as wanted: includes NVML's error name where NVML said so. */
  error: string | null;
}

export interface GpuStatus {
  index: number;
  uuid: string;
  pciBusId: string;
  minor: number;
  name: string;
  persistence: GpuRecord["persistence"];
  selected: boolean;
  held: boolean;
  lost: boolean;
  xids: Record<number, number>;
  error: string | null;
}

export function gpuStatus(gpu: GpuRecord): GpuStatus {
  return {
    index: gpu.index,
    uuid: gpu.uuid,
    pciBusId: gpu.pciBusId,
    minor: gpu.minor,
    name: gpu.name,
    persistence: gpu.persistence,
    selected: gpu.selected,
    held: gpu.fd !== null,
    lost: gpu.lost,
    xids: gpu.xids,
    error: gpu.error,
  };
}
