// The metrics textfile and the listener, in-process: what the failures and the timers do.
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, describe, expect, it } from "vitest";
import { FatalError } from "../../src/fatal-error.js";
import { startMetricsListener } from "../../src/metrics/metrics-listener.js";
import { MetricsTextfile } from "../../src/metrics/metrics-textfile.js";

const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-metrics-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function recordingLog(): { log: pino.Logger; lines: string[] } {
  const lines: string[] = [];
  return { log: pino({ level: "info" }, { write: (line: string) => lines.push(line) }), lines };
}

describe("metrics textfile", () => {
  it("reports the real error when the rename fails (a directory in the file's place) and leaves no temporary file", () => {
    const where = mkdtempSync(join(dir, "rename-"));
    const target = join(where, "gpu.prom");
    mkdirSync(target);
    const { log, lines } = recordingLog();
    const textfile = new MetricsTextfile(target, () => "m 1\n", log, "nobody");
    // A second close of the temporary's fd would surface as EBADF instead of the rename's error.
    expect(() => textfile.open()).toThrow(FatalError);
    expect(() => textfile.open()).toThrow(/EISDIR/);
    expect(readdirSync(where)).toEqual(["gpu.prom"]);
    textfile.writeNow();
    textfile.writeNow();
    expect(readdirSync(where)).toEqual(["gpu.prom"]);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/cannot write .*gpu\.prom: EISDIR/);
    expect(lines[0]).not.toMatch(/EBADF/);
  });

  it("does not rewrite a file whose content did not change", () => {
    const where = mkdtempSync(join(dir, "unchanged-"));
    const target = join(where, "gpu.prom");
    let text = "m 1\n";
    const textfile = new MetricsTextfile(target, () => text, recordingLog().log, "nobody");
    textfile.open();
    const first = statSync(target).ino;
    textfile.writeNow();
    expect(statSync(target).ino).toBe(first);
    text = "m 2\n";
    textfile.writeNow();
    expect(statSync(target).ino).not.toBe(first);
    expect(readdirSync(where)).toEqual(["gpu.prom"]);
  });
});

describe("metrics listener", () => {
  it("has no idle wake-up: Node's connections check is pushed out as far as a timer goes", async () => {
    const server = await startMetricsListener({ host: "127.0.0.1", port: 0 }, () => "");
    try {
      // Set through createServer's option; @types/node does not declare the property.
      expect((server as unknown as { connectionsCheckingInterval: number }).connectionsCheckingInterval).toBe(
        2 ** 31 - 1,
      );
      expect(server.requestTimeout).toBe(0);
      expect(server.headersTimeout).toBe(0);
    } finally {
      server.close();
    }
  });

  it("still ends a connection that sends its request too slowly, and one that idles after a reply", async () => {
    const server = await startMetricsListener({ host: "127.0.0.1", port: 0 }, () => "m 1\n", 50);
    try {
      const { port } = server.address() as { port: number };
      // Half a request line, then nothing: the per-connection deadline ends it.
      const slow = connect(port, "127.0.0.1");
      slow.write("GET /metr");
      await new Promise((resolve) => slow.once("close", resolve));
      // A complete request is answered; kept alive, the connection waits for the next under the same deadline.
      const kept = connect(port, "127.0.0.1");
      let reply = "";
      kept.on("data", (chunk) => {
        reply += chunk;
      });
      kept.write("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
      await new Promise((resolve) => kept.once("close", resolve));
      expect(reply).toMatch(/^HTTP\/1\.1 200 OK/);
      expect(reply).toContain("m 1\n");
    } finally {
      server.close();
    }
  });
});
