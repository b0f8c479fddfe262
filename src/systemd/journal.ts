// journald's native protocol: one datagram of KEY=value fields per entry to
// /run/systemd/journal/socket, so every log field becomes a journal field
// (`journalctl GPU_PCI_BUS_ID=00000000:1B:00.0`). Shares the datagram code with sd_notify.
import { UnixDatagramSender, unixAddress } from "../../native-bindings/unix-datagram.js";

export const JOURNAL_SOCKET = "/run/systemd/journal/socket";
const MAX_VALUE_BYTES = 64 * 1024;

/** A journal field name from a log key: camelCase to UPPER_SNAKE, [A-Z0-9_] only. */
export function journalFieldName(key: string): string {
  const name = key
    .replace(/([a-z0-9])([A-Z])/g, "$1_$2")
    .toUpperCase()
    .replace(/[^A-Z0-9_]/g, "_")
    .replace(/^[^A-Z]+/, "");
  return name.slice(0, 64) || "FIELD";
}

/** Encodes fields; values with a newline use the binary form (name, LE64 length, data). */
export function encodeJournalEntry(fields: Record<string, string>): Buffer {
  const parts: Buffer[] = [];
  for (const [key, raw] of Object.entries(fields)) {
    const value = Buffer.from(raw, "utf8").subarray(0, MAX_VALUE_BYTES);
    if (value.includes(0x0a)) {
      const length = Buffer.alloc(8);
      length.writeBigUInt64LE(BigInt(value.length));
      parts.push(Buffer.from(`${key}\n`), length, value, Buffer.from("\n"));
    } else {
      parts.push(Buffer.from(`${key}=`), value, Buffer.from("\n"));
    }
  }
  return Buffer.concat(parts);
}

export class JournalSender {
  readonly #sender = new UnixDatagramSender();
  readonly #address: Buffer;

  constructor(path: string = JOURNAL_SOCKET) {
    this.#address = unixAddress(path);
  }

  /** Throws DatagramError when journald cannot take the entry (absent, or full: EAGAIN). */
  send(fields: Record<string, string>): void {
    this.#sender.send(this.#address, encodeJournalEntry(fields));
  }
}
