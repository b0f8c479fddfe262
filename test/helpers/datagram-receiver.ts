import { type ChildProcess, spawn } from "node:child_process";
import { join } from "node:path";
import { ROOT } from "./daemon.js";

export interface Datagram {
  pid: number;
  uid: number;
  gid: number;
  text: string;
  /** KEY=value fields (the sd_notify format, and journald's text form). */
  fields: Record<string, string>;
}

function parseFields(text: string): Record<string, string> {
  const fields: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) fields[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return fields;
}

/** A stand-in for systemd's notify or journal socket that records each sender's credentials. */
export class DatagramReceiver {
  readonly address: string;
  readonly received: Datagram[] = [];
  readonly #child: ChildProcess;
  readonly #ready: Promise<void>;

  constructor(address: string) {
    this.address = address;
    this.#child = spawn("python3", [join(ROOT, "test/helpers/datagram-receiver.py"), address], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let buffered = "";
    this.#ready = new Promise((resolve, reject) => {
      this.#child.on("exit", (code) => reject(new Error(`datagram receiver exited with ${code}`)));
      this.#child.stdout?.on("data", (chunk: Buffer) => {
        buffered += chunk.toString();
        let newline = buffered.indexOf("\n");
        while (newline >= 0) {
          const line = buffered.slice(0, newline);
          buffered = buffered.slice(newline + 1);
          if (line === "listening") resolve();
          else {
            const raw = JSON.parse(line) as { pid: number; uid: number; gid: number; data: string };
            const text = Buffer.from(raw.data, "base64").toString("utf8");
            this.received.push({ pid: raw.pid, uid: raw.uid, gid: raw.gid, text, fields: parseFields(text) });
          }
          newline = buffered.indexOf("\n");
        }
      });
    });
  }

  ready(): Promise<void> {
    return this.#ready;
  }

  /** Waits for a datagram matching `predicate`, returning it. */
  async waitFor(predicate: (d: Datagram) => boolean, timeoutMs = 15_000): Promise<Datagram> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.received.find(predicate);
      if (found) return found;
      if (Date.now() > deadline) {
        throw new Error(`no matching datagram; received:\n${this.received.map((d) => d.text).join("\n---\n")}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  close(): void {
    this.#child.kill("SIGKILL");
  }
}
