// GPU selectors, as --devices and the release/hold commands take them.
import { type PciAddress, parsePciAddress, samePciDevice } from "./pci-address.js";

export type GpuSelector =
  | { kind: "index"; index: number; text: string }
  | { kind: "uuid"; uuid: string; text: string }
  | { kind: "pci"; address: PciAddress; text: string };

/** Parses one selector; returns null when it is none of an index, a UUID or a PCI bus id. */
export function parseGpuSelector(text: string): GpuSelector | null {
  const t = text.trim();
  if (/^\d{1,4}$/.test(t)) return { kind: "index", index: Number(t), text: t };
  if (/^(GPU|MIG)-[0-9a-f-]+$/i.test(t)) return { kind: "uuid", uuid: t, text: t };
  const address = parsePciAddress(t);
  return address ? { kind: "pci", address, text: t } : null;
}

export interface GpuIdentity {
  index: number;
  uuid: string;
  pci: PciAddress | null;
}

/** Compares on domain, bus and device, as NVML and the RPC protocol do (function ignored). */
export function selectorMatches(selector: GpuSelector, gpu: GpuIdentity): boolean {
  switch (selector.kind) {
    case "index":
      return gpu.index === selector.index;
    case "uuid":
      return gpu.uuid.toLowerCase() === selector.uuid.toLowerCase();
    case "pci":
      return gpu.pci !== null && samePciDevice(gpu.pci, selector.address);
  }
}

/** What a selector names, for messages: "index", "UUID" or "PCI bus id". */
export function selectorKindName(selector: GpuSelector): string {
  return selector.kind === "index" ? "index" : selector.kind === "uuid" ? "UUID" : "PCI bus id";
}
