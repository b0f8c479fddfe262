// GPU selectors, as --devices and the release/hold commands take them.
export type GpuSelector =
  | { kind: "index"; index: number; text: string }
  | { kind: "uuid"; uuid: string; text: string }
  | { kind: "pci"; domain: number; bus: number; device: number; text: string };

// NVML's accepted bus id forms: domain:bus:device.function, domain:bus:device, bus:device.function.
const PCI_FORMS = [
  /^([0-9a-f]{1,8}):([0-9a-f]{1,2}):([0-9a-f]{1,2})\.[0-7]$/i,
  /^([0-9a-f]{1,8}):([0-9a-f]{1,2}):([0-9a-f]{1,2})$/i,
  /^()([0-9a-f]{1,2}):([0-9a-f]{1,2})\.[0-7]$/i,
];

/** Parses one selector; returns null when it is none of an index, a UUID or a PCI bus id. */
export function parseGpuSelector(text: string): GpuSelector | null {
  const t = text.trim();
  if (/^\d{1,4}$/.test(t)) return { kind: "index", index: Number(t), text: t };
  if (/^(GPU|MIG)-[0-9a-f-]+$/i.test(t)) return { kind: "uuid", uuid: t, text: t };
  for (const form of PCI_FORMS) {
    const m = form.exec(t);
    if (m) {
      return {
        kind: "pci",
        domain: Number.parseInt(m[1] || "0", 16),
        bus: Number.parseInt(m[2] as string, 16),
        device: Number.parseInt(m[3] as string, 16),
        text: t,
      };
    }
  }
  return null;
}

export interface GpuIdentity {
  index: number;
  uuid: string;
  pciBusId: string;
}

/** Compares on domain, bus and device, as NVML and the RPC protocol do (function ignored). */
export function selectorMatches(selector: GpuSelector, gpu: GpuIdentity): boolean {
  switch (selector.kind) {
    case "index":
      return gpu.index === selector.index;
    case "uuid":
      return gpu.uuid.toLowerCase() === selector.uuid.toLowerCase();
    case "pci": {
      const own = parseGpuSelector(gpu.pciBusId);
      return (
        own?.kind === "pci" &&
        own.domain === selector.domain &&
        own.bus === selector.bus &&
        own.device === selector.device
      );
    }
  }
}
