// sd_notify against a full queue: PID 1's notify socket holds net.unix.max_dgram_qlen
// datagrams (10 where systemd cannot raise it, as under systemd-nspawn here). A burst of
// FDSTORE messages fills it; a READY=1 dropped then fails the start. The notifier waits for
// room, bounded, as libsystemd's blocking send does.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { UnixDatagramSender, unixAddress } from "../../native-bindings/unix-datagram.js";
import { SystemdNotifier } from "../../src/systemd/notify.js";
import { boundUnixSocket } from "../helpers/unix-socket.js";

const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-notify-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("sd_notify when PID 1's queue is full", () => {
  it("waits for room instead of dropping READY=1", async () => {
    const path = join(dir, "notify");
    const fd = boundUnixSocket(path, "datagram");
    // Fill the queue to the brim, as a burst of FDSTORE messages does.
    const filler = new UnixDatagramSender();
    let queued = 0;
    for (;;) {
      try {
        filler.send(unixAddress(path), Buffer.from("FDSTORE=1\n"));
        queued++;
      } catch {
        break;
      }
    }
    expect(queued).toBeGreaterThan(0);
    // PID 1 gets to its queue a little later: a reader that starts reading after 200 ms.
    const reader = spawn(
      "python3",
      [
        "-c",
        "import socket,time,sys\ns=socket.socket(fileno=3)\ntime.sleep(0.2)\nwhile True:\n d=s.recv(4096)\n if b'READY=1' in d: print('got READY'); break",
      ],
      { stdio: ["ignore", "pipe", "inherit", fd] },
    );
    const errors: Error[] = [];
    const notifier = new SystemdNotifier({ NOTIFY_SOCKET: path }, (err) => errors.push(err));
    expect(notifier.ready("4/4 GPUs persistent")).toBe(true);
    expect(errors).toEqual([]);
    let out = "";
    reader.stdout?.on("data", (c: Buffer) => {
      out += c;
    });
    await new Promise((resolve) => reader.on("exit", resolve));
    expect(out).toBe("got READY\n");
  });

  it("a receiver that never reads costs one bounded wait, not one per message", () => {
    const path = join(dir, "dead");
    boundUnixSocket(path, "datagram");
    const filler = new UnixDatagramSender();
    for (;;) {
      try {
        filler.send(unixAddress(path), Buffer.from("FDSTORE=1\n"));
      } catch {
        break;
      }
    }
    const errors: Error[] = [];
    const notifier = new SystemdNotifier({ NOTIFY_SOCKET: path }, (err) => errors.push(err));
    const first = performance.now();
    expect(notifier.status("1/1 GPUs persistent")).toBe(false);
    const waited = performance.now() - first;
    const rest = performance.now();
    for (let i = 0; i < 5; i++) expect(notifier.watchdog()).toBe(false);
    expect(waited).toBeGreaterThan(1500);
    expect(performance.now() - rest).toBeLessThan(200);
    expect(errors.map((e) => e.message)).toEqual(Array(6).fill("sendto failed: EAGAIN"));
  });
});
