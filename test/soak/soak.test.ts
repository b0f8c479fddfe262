// Soak: the daemon under a steady load of status and RPC calls with health checks at a
// short interval, for 60 s (SOAK_SECONDS to change). Fails if any call fails or the memory
// that survives a full GC grows more than 2 MB after warm-up.

import { readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { DaemonProcess, Scratch, statusJson } from "../helpers/daemon.js";
import { rpcGet } from "../helpers/rpc.js";

const SECONDS = Number(process.env.SOAK_SECONDS ?? 60);
const WARM_UP_SECONDS = Math.max(10, Math.round(SECONDS / 4));
const CALLS_PER_SECOND = 150;
const GROWTH_LIMIT_KB = 2048;

const scratch = new Scratch();
let daemon: DaemonProcess | undefined;

afterAll(async () => {
  await daemon?.stop();
  scratch.cleanup();
});

function rssKb(pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, "utf8")
    .split("\n")
    .find((l) => l.startsWith("VmRSS:"));
  return Number(line?.split(/\s+/)[1]);
}

/**
 * Sends SIGWINCH (--heapsnapshot-signal; SIGUSR2 is the daemon's "stop, keep the store": a snapshot starts with a full GC), waits for the
 * snapshot, then reads what survived from the daemon's own status: V8's heap in use plus
 * memory held outside it (koffi, buffers).
 */
async function liveAfterFullGc(pid: number, dir: string, runtimeDir: string): Promise<number> {
  const before = new Set(readdirSync(dir));
  process.kill(pid, "SIGWINCH");
  let snapshot: string | undefined;
  let size = -1;
  for (;;) {
    await new Promise((r) => setTimeout(r, 250));
    snapshot ??= readdirSync(dir).find((f) => f.endsWith(".heapsnapshot") && !before.has(f));
    if (!snapshot) continue;
    const now = statSync(join(dir, snapshot)).size;
    if (now > 0 && now === size) break;
    size = now;
  }
  rmSync(join(dir, snapshot));
  const memory = statusJson(runtimeDir).memory;
  return Math.round((memory.heapUsed + memory.external) / 1024);
}

function status(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = connect(path, () => s.write('{"command":"status"}\n'));
    let reply = "";
    s.setTimeout(5000, () => s.destroy(new Error("status timeout")));
    s.on("data", (d) => {
      reply += d.toString();
    });
    s.on("error", reject);
    s.on("close", () => {
      try {
        const parsed = JSON.parse(reply) as { devices: { held: boolean }[] };
        if (parsed.devices.length === 8 && parsed.devices.every((d) => d.held)) resolve();
        else reject(new Error(`status says not all held: ${reply}`));
      } catch (err) {
        reject(err);
      }
    });
  });
}

describe("soak", () => {
  it(
    `serves steady load for ${SECONDS} s without a failed call or 2 MB of memory growth`,
    async () => {
      scratch.writeSimConfig({});
      daemon = new DaemonProcess([`--runtime-dir=${scratch.runtimeDir}`, "--simulate=8"], {
        GPU_PERSISTD_SIM_CONFIG: scratch.simConfigPath,
        GPU_PERSISTD_HEALTH_INTERVAL_MS: "50",
        NODE_OPTIONS: `--heapsnapshot-signal=SIGWINCH --diagnostic-dir=${scratch.dir}`,
        WATCHDOG_USEC: "1000000",
      });
      await daemon.waitReady();
      const pid = daemon.pid;
      const rpcSocket = join(scratch.runtimeDir, "socket");
      const controlSocket = join(scratch.runtimeDir, "gpu-persistd.sock");
      const failures: string[] = [];
      let calls = 0;
      const load = async (seconds: number): Promise<void> => {
        const deadline = Date.now() + seconds * 1000;
        while (Date.now() < deadline) {
          const second = Date.now();
          await Promise.all(
            Array.from({ length: CALLS_PER_SECOND }, (_, i) =>
              (i % 3 === 0
                ? status(controlSocket)
                : rpcGet(rpcSocket, calls + i, 6 + (i % 8), 5000).then((mode) => {
                    if (mode !== 1) throw new Error(`GPU reads persistence ${mode}`);
                  })
              ).catch((err: Error) => {
                failures.push(err.message);
              }),
            ),
          );
          calls += CALLS_PER_SECOND;
          await new Promise((r) => setTimeout(r, Math.max(0, 1000 - (Date.now() - second))));
        }
      };
      // RSS of a garbage-collecting process saws up and down under load (by about 10 MB here,
      // as V8 grows its heap and later collects): it cannot tell a leak from a late GC. What
      // a leak grows is memory that survives a full collection, so compare that at the end of
      // warm-up and at the end of the run; RSS is reported beside it.
      await load(WARM_UP_SECONDS);
      const baseline = await liveAfterFullGc(pid, scratch.dir, scratch.runtimeDir);
      const rssBefore = rssKb(pid);
      await load(SECONDS - WARM_UP_SECONDS);
      const end = await liveAfterFullGc(pid, scratch.dir, scratch.runtimeDir);
      const rssAfter = rssKb(pid);
      console.log(
        JSON.stringify({
          seconds: SECONDS,
          calls,
          failures: failures.length,
          liveAfterGcKb: [baseline, end],
          rssKb: [rssBefore, rssAfter],
        }),
      );
      expect(failures.slice(0, 5)).toEqual([]);
      expect(end - baseline).toBeLessThanOrEqual(GROWTH_LIMIT_KB);
      expect(daemon.output).not.toMatch(/ERROR|WARN/);
    },
    (SECONDS + 60) * 1000,
  );
});
