// A GPU's PCI address as integers, with the one parser, formatter and comparison that
// selectors, the RPC protocol, status and the clients share.

export interface PciAddress {
  domain: number;
  bus: number;
  device: number;
  function: number;
}

// NVML's accepted bus id forms: domain:bus:device.function, domain:bus:device, bus:device.function.
const FORMS = [
  /^([0-9a-f]{1,8}):([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$/i,
  /^([0-9a-f]{1,8}):([0-9a-f]{1,2}):([0-9a-f]{1,2})()$/i,
  /^()([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$/i,
];

/** Parses one of NVML's bus id forms; null when `text` is none of them. */
export function parsePciAddress(text: string): PciAddress | null {
  const t = text.trim();
  for (const form of FORMS) {
    const m = form.exec(t);
    if (m) {
      return {
        domain: Number.parseInt(m[1] || "0", 16),
        bus: Number.parseInt(m[2] as string, 16),
        device: Number.parseInt(m[3] as string, 16),
        function: Number.parseInt(m[4] || "0", 16),
      };
    }
  }
  return null;
}

const hex = (n: number, width: number): string => n.toString(16).toUpperCase().padStart(width, "0");

/** NVML's own form: `00000000:1B:00.0`. */
export function formatPciAddress(a: PciAddress): string {
  return `${hex(a.domain, 8)}:${hex(a.bus, 2)}:${hex(a.device, 2)}.${hex(a.function, 1)}`;
}

/** Same GPU: domain, bus and device agree (the function is ignored, as NVML and the RPC protocol do). */
export function samePciDevice(a: PciAddress, b: PciAddress): boolean {
  return a.domain === b.domain && a.bus === b.bus && a.device === b.device;
}
