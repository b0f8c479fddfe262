// Connection admission (shared by the control and RPC sockets) and the control socket's
// request deadline, in-process over real unix sockets; fake timers stand in for waiting.
import { mkdtempSync, rmSync } from "node:fs";
import { connect, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pino from "pino";
import { afterAll, afterEach, describe, expect, it, vi } from "vitest";
import { ConnectionAdmission } from "../../src/connections/admission.js";
import { startControlServer } from "../../src/control/control-server.js";

const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-connections-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(() => vi.useRealTimers());

function recordingLog(): { log: pino.Logger; messages: string[] } {
  const messages: string[] = [];
  const log = pino({ level: "info" }, { write: (line: string) => messages.push(JSON.parse(line).msg) });
  return { log, messages };
}

/** Everything the server sends until it closes the connection. */
function readAll(socket: Socket): Promise<string> {
  let text = "";
  socket.setEncoding("utf8");
  // Destroyed by the server with input unread, the connection is reset: that is its close.
  socket.on("error", () => {});
  socket.on("data", (chunk: string) => {
    text += chunk;
  });
  return new Promise((resolve) => socket.once("close", () => resolve(text)));
}

describe("connection admission", () => {
  it("logs a peer whose credentials cannot be read, rate-limited, and closes it", () => {
    const { log, messages } = recordingLog();
    const admission = new ConnectionAdmission("control socket", { total: 4, perUid: 2, reserve: 1 }, log);
    for (let i = 0; i < 25; i++) {
      // A socket with no descriptor under it: getsockopt(SO_PEERCRED) fails.
      const socket = new Socket();
      expect(admission.admit(socket)).toBeNull();
      expect(socket.destroyed).toBe(true);
    }
    expect(messages).toHaveLength(20);
    expect(messages[0]).toBe(
      "control socket: rejected a client: cannot read its credentials (getsockopt(SO_PEERCRED) failed: EBADF); closing its connection",
    );
  });
});

describe("control socket deadline", () => {
  it("bounds only the request line: a reply slower than the deadline still arrives", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    let answer!: (value: unknown) => void;
    let asked!: () => void;
    const handlerCalled = new Promise<void>((resolve) => {
      asked = resolve;
    });
    const path = join(dir, "slow.sock");
    const server = await startControlServer(
      path,
      () => {
        asked();
        return new Promise((resolve) => {
          answer = resolve;
        });
      },
      recordingLog().log,
      { requestDeadlineMs: 50 },
    );
    try {
      const client = connect(path);
      const received = readAll(client);
      client.write('{"command":"release"}\n');
      await handlerCalled;
      vi.advanceTimersByTime(10_000);
      answer({ released: true });
      client.end();
      expect(await received).toBe('{"released":true}\n');
    } finally {
      server.close();
    }
  });

  it("still ends a connection whose request line does not arrive in time", async () => {
    vi.useFakeTimers({ toFake: ["setTimeout", "clearTimeout"] });
    const { log } = recordingLog();
    const path = join(dir, "silent.sock");
    const server = await startControlServer(path, () => ({ never: true }), log, { requestDeadlineMs: 50 });
    try {
      // The server's own connection listener (which arms the deadline) runs before this one.
      const accepted = new Promise((resolve) => server.once("connection", resolve));
      const client = connect(path);
      const received = readAll(client);
      await new Promise((resolve) => client.write('{"comm', resolve));
      await accepted;
      vi.advanceTimersByTime(51);
      expect(await received).toBe("");
    } finally {
      server.close();
    }
  });
});
