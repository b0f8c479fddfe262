// The fields every log line about one GPU carries (src/log.ts prints them first in text lines
// and journald stores them as GPU_INDEX, GPU_UUID, GPU_PCI_BUS_ID for filtering).
import { formatPciAddress, type PciAddress } from "../selection/pci-address.js";

export interface GpuLogFields {
  gpuIndex: number;
  gpuUuid: string;
  gpuPciBusId: string;
}

/** The fields every line about `gpu` carries. */
export function gpuFields(gpu: { index: number; uuid: string; pci: PciAddress | null }): GpuLogFields {
  return { gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pci ? formatPciAddress(gpu.pci) : "" };
}
