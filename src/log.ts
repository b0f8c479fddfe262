// Logging: pino, written synchronously to stdout (no transports: they add threads and
// memory). The line format follows --log-format: pino's JSON, readable text for a terminal,
// or journal lines ("<N>" priority prefix) when stdout is the journal.
import pino, { type Logger } from "pino";
import type { Config } from "./config/schema.js";
import { type JournalSender, journalFieldName } from "./systemd/journal.js";

export type Log = Logger;

const LEVEL_NAMES: Record<number, string> = {
  10: "TRACE",
  20: "DEBUG",
  30: "INFO",
  40: "WARN",
  50: "ERROR",
  60: "FATAL",
};
/** syslog priorities, as journald stores them. */
const JOURNAL_PRIORITY: Record<number, number> = { 10: 7, 20: 7, 30: 6, 40: 4, 50: 3, 60: 2 };
const STANDARD_KEYS = new Set(["level", "time", "pid", "hostname", "msg", "gpuIndex", "gpuUuid", "gpuPciBusId"]);

type Entry = Record<string, unknown> & { level: number; time: number; msg?: string };

function extras(entry: Entry): string {
  const parts: string[] = [];
  for (const [key, value] of Object.entries(entry)) {
    if (STANDARD_KEYS.has(key) || value === undefined) continue;
    const text = typeof value === "string" ? value : JSON.stringify(value);
    parts.push(`${key}=${/\s/.test(text) ? JSON.stringify(text) : text}`);
  }
  return parts.length ? ` (${parts.join(" ")})` : "";
}

function gpuPrefix(entry: Entry): string {
  return entry.gpuIndex === undefined ? "" : `GPU ${entry.gpuIndex} ${entry.gpuPciBusId}: `;
}

/** One human-readable line, without the time (journald adds its own). */
export function describe(entry: Entry): string {
  return `${gpuPrefix(entry)}${entry.msg ?? ""}${extras(entry)}`;
}

function textLine(entry: Entry): string {
  const level = (LEVEL_NAMES[entry.level] ?? "INFO").padEnd(5);
  return `${new Date(entry.time).toISOString()} ${level} ${describe(entry)}\n`;
}

/** A stdout line journald stores at the given priority (SyslogLevelPrefix=, on by default). */
function prefixedLine(entry: Entry): string {
  return `<${JOURNAL_PRIORITY[entry.level] ?? 6}>${describe(entry)}\n`;
}

/** The entry as journal fields: MESSAGE, PRIORITY, GPU_INDEX/GPU_UUID/GPU_PCI_BUS_ID, the rest. */
export function journalFields(entry: Entry): Record<string, string> {
  const fields: Record<string, string> = {
    MESSAGE: describe(entry),
    PRIORITY: String(JOURNAL_PRIORITY[entry.level] ?? 6),
    SYSLOG_IDENTIFIER: "gpu-persistd",
  };
  for (const [key, value] of Object.entries(entry)) {
    if (key === "level" || key === "time" || key === "msg" || key === "pid" || value === undefined) continue;
    const name = key.startsWith("gpu") ? `GPU_${journalFieldName(key.slice(3))}` : journalFieldName(key);
    fields[name] = typeof value === "string" ? value : JSON.stringify(value);
  }
  return fields;
}

/** stdout is the journal when JOURNAL_STREAM names its device and inode (systemd.exec(5)). */
export function stdoutIsJournal(env: NodeJS.ProcessEnv, stat: { dev: number; ino: number } | undefined): boolean {
  if (!env.JOURNAL_STREAM || !stat) return false;
  return env.JOURNAL_STREAM === `${stat.dev}:${stat.ino}`;
}

export function resolveLogFormat(format: Config["logFormat"], journal: boolean): "text" | "json" | "journal" {
  if (format !== "auto") return format;
  return journal ? "journal" : "text";
}

/**
 * A synchronous pino logger. In journal format each entry goes to journald natively when
 * `journal` is given; an entry journald cannot take is written to stdout (the journal
 * stream) with its priority prefix instead, and the first such fallback says so.
 */
export function createLog(
  level: Config["logLevel"],
  format: "text" | "json" | "journal",
  journal?: JournalSender,
): Log {
  const out = pino.destination({ dest: 1, sync: true });
  let fallbackNoted = false;
  const write = (line: string): void => {
    const entry = JSON.parse(line) as Entry;
    if (format === "text") {
      out.write(textLine(entry));
      return;
    }
    if (journal) {
      try {
        journal.send(journalFields(entry));
        return;
      } catch (err) {
        if (!fallbackNoted) {
          out.write(
            `<4>journald's native socket refused an entry (${(err as Error).message}); such entries go to stdout without structured fields\n`,
          );
        }
        fallbackNoted = true;
      }
    }
    out.write(prefixedLine(entry));
  };
  const stream = format === "json" ? out : { write };
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.epochTime }, stream);
}
