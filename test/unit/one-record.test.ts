// Issue 28's review, in this process: a reload is all or nothing; the status record says per
// GPU what every reader needs (wanted, released by whom and since when, lost, the selectors
// that matched nothing), and the health verdict judges from it alone; a hold refused for a
// lost GPU is explained; the Xid event set is drained once more before it is freed, never
// freed under a wait still inside NVML, and watches a GPU a reload adds at once; a failed
// release closes the session once, within its own time limit; every fd systemd hands back
// is used or closed. The shipped defaults unless a test says otherwise.
import { mkdtempSync, openSync, readdirSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { Lease } from "../../src/control/control-server.js";
import { controlHandler } from "../../src/daemon/control-adapter.js";
import { rpcBackend } from "../../src/daemon/rpc-adapter.js";
import { daemonStatus } from "../../src/daemon/status-snapshot.js";
import type { HealthMonitor } from "../../src/health/health-monitor.js";
import { NvPdStatus } from "../../src/rpc/persistence-program.js";
import { healthVerdict } from "../../src/status/health-verdict.js";
import {
  FdStoreNotifier,
  fallOffTheBus,
  fdsOn,
  gated,
  type InProcessDaemon,
  InProcessFixture,
  openGate,
  ROOT,
} from "../helpers/in-process.js";
import { boundUnixSocket } from "../helpers/unix-socket.js";

const fixture = new InProcessFixture();
const pci = (bus: number) => ({ domain: 0, bus, device: 0, function: 0 });
const XID_13 = { type: 8, data: 13, afterMs: 0 };

function healthOf(d: { context: { health: HealthMonitor | null } }): HealthMonitor {
  if (!d.context.health) throw new Error("no health loop: the daemon did not finish starting");
  return d.context.health;
}

const holders = (d: InProcessDaemon, gpus: number) =>
  Array.from({ length: gpus }, (_, i) => fdsOn(d.scratch.runtimeDir, i).length);

/** This process's fds open on `path` (or on a socket, for "socket"). */
function fdsOnPath(path: string): number[] {
  return readdirSync("/proc/self/fd").flatMap((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === path ? [Number(fd)] : [];
    } catch {
      return [];
    }
  });
}

describe("a reload is all or nothing", () => {
  it.each([
    [["9"], "--devices names '9', but no GPU has that index (4 GPUs found)"],
    [["0", "9"], "--devices names '9', but no GPU has that index (4 GPUs found)"],
  ])(
    "devices %j on 4 GPUs: refused, every GPU stays held, the journal and status say why and the fix",
    async (devices, why) => {
      const d = fixture.daemon({ gpus: 4 });
      await d.daemon.run();
      d.nextConfig = { devices, logLevel: "warn" };
      d.daemon.reload();
      await d.daemon.reloadsSettled();
      expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held", "held", "held"]);
      expect(holders(d, 4)).toEqual([1, 1, 1, 1]);
      // Nothing of the refused file applies, its other settings included.
      expect(d.context.config.logLevel).not.toBe("warn");
      expect(d.context.config.devices).toEqual([]);
      const status = daemonStatus(d.context);
      expect(status.lastReload?.refused).toContain(why);
      expect(status.lastReload?.refused).toContain("To fix: check --devices (config devices) against 'nvidia-smi -L'");
      expect(status.unmatchedSelectors).toEqual([]);
      expect(d.messages().join("\n")).toContain(`reload refused, keeping the running configuration: ${why}`);
      expect(d.notifier.with("READY").at(-1)?.STATUS).toBe("4/4 GPUs persistent");
    },
  );

  it("a reload that applies says so in status, clearing an earlier refusal", async () => {
    const d = fixture.daemon({ gpus: 2 });
    await d.daemon.run();
    d.nextConfig = { devices: ["5"] };
    d.daemon.reload();
    await d.daemon.reloadsSettled();
    d.nextConfig = { devices: ["1"] };
    d.daemon.reload();
    await d.daemon.reloadsSettled();
    expect(daemonStatus(d.context).lastReload?.refused).toBeNull();
    expect(d.registry.list().map((g) => g.state)).toEqual(["identified", "held"]);
  });
});

describe("the status record is the one truth readers judge from", () => {
  it("persistence mode off: every GPU deliberately not persistent, and the verdict healthy (no drain for a setting)", async () => {
    const d = fixture.daemon({ gpus: 2 }, { persistenceMode: false });
    await d.daemon.run();
    const status = daemonStatus(d.context);
    expect(status.persistenceMode).toBe(false);
    expect(status.devices.map((g) => [g.selected, g.wanted, g.held])).toEqual([
      [true, false, false],
      [true, false, false],
    ]);
    expect(healthVerdict({ status, drainReleased: false })).toEqual({
      healthy: true,
      reason: "gpu-persistd: 0/0 GPUs held (persistence mode off, as configured)",
    });
  });

  it("--devices=0,9 with no GPU 9: the daemon starts, and its record names the missing GPU, so the verdict drains", async () => {
    const d = fixture.daemon({ gpus: 2 }, { devices: ["0", "9"] });
    await d.daemon.run();
    const status = daemonStatus(d.context);
    expect(status.unmatchedSelectors).toEqual(["9"]);
    expect(healthVerdict({ status, drainReleased: false })).toEqual({
      healthy: false,
      reason: "gpu-persistd: GPU 9 missing: NVML reports no such GPU",
    });
  });

  it("a released GPU says by whom and since when: a plain release (uid), a lease (its PID)", async () => {
    const d = fixture.daemon({ gpus: 2 }, {}, { attach: true });
    await d.daemon.run();
    expect(await rpcBackend(d.context).setMode(pci(0x07), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    const lease = await controlHandler(d.context)({ command: "release", gpus: ["0"] }, ROOT);
    if (!(lease instanceof Lease)) throw new Error("not a lease");
    const [leased, plain] = daemonStatus(d.context).devices;
    const since = expect.stringMatching(/^\d{4}-\d\d-\d\dT/);
    expect(leased?.releasedBy).toEqual({ kind: "lease", uid: 0, pid: 4242, since });
    expect(plain?.releasedBy).toEqual({ kind: "request", uid: 0, pid: null, since });
    // status and the RPC Get agree: a released GPU is not persistent.
    expect(plain?.persistence).toBe("disabled");
    expect(plain?.fix).toBe("hold it again with: gpu-persistd hold 1");
    expect(leased?.fix).toBe("it is held again when PID 4242 ends");
    expect(rpcBackend(d.context).mode(pci(0x07))).toBe(false);
    expect(Date.parse(plain?.since ?? "")).not.toBeNaN();
    await lease.end();
    expect(daemonStatus(d.context).devices[0]?.releasedBy).toBeNull();
  });

  it("a hold refused for a GPU lost to Xid 79: the journal says why and how to recover it", async () => {
    const d = fixture.daemon({ gpus: 2 });
    await d.daemon.run();
    fallOffTheBus(1);
    await healthOf(d).round();
    const status = daemonStatus(d.context).devices[1];
    expect(status?.state).toBe("lost");
    expect(Date.parse(status?.since ?? "")).not.toBeNaN();
    expect(status?.fix).toContain("reset the GPU once nothing uses it");
    expect(await rpcBackend(d.context).setMode(pci(0x07), true, false, ROOT)).toBe(NvPdStatus.DRIVER);
    expect(d.messages().join("\n")).toContain(
      "GPU 1: RPC: cannot hold the GPU: it is lost (Xid 79: GPU has fallen off the bus); to recover it: reset the GPU",
    );
  });

  it("a GPU that could not be identified says its error and its fix", async () => {
    const d = fixture.daemon({ gpus: 2, faults: [{ call: "nvmlDeviceGetUUID", gpu: 1, return: 4 }] });
    await d.daemon.run();
    expect(daemonStatus(d.context).devices[1]).toMatchObject({
      state: "unidentified",
      errorCode: "NVML_ERROR_NO_PERMISSION",
      fix: "run as root (as the systemd unit does)",
    });
  });
});

describe("the Xid event set", () => {
  it("is drained one last time before it is freed: an Xid queued since the last round is not lost at a release", async () => {
    const d = fixture.daemon({ gpus: 2, events: [{ gpu: 0, ...XID_13 }] }, {}, { attach: true });
    await d.daemon.run();
    expect(await rpcBackend(d.context).setMode(pci(0x07), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(d.context.session?.open).toBe(false);
    expect(d.registry.list()[0]?.xids.get(13)).toBe(1);
    expect(d.messages()).toContain("GPU 0: Xid 13: graphics engine exception");
  });

  it("is never freed while a wait is still inside NVML (one that outlived its time limit): it is left to NVML", async () => {
    const d = fixture.daemon(
      { gpus: 2, faults: [{ call: "nvmlEventSetWait_v2", gate: true }] },
      { nvmlTimeoutMs: 50, releaseTimeoutMs: 50 },
      { attach: true },
    );
    await d.daemon.run();
    const round = healthOf(d).round();
    await gated(1);
    await round;
    // The release cannot end the session (the wait is in flight), but it must not free the set under it.
    expect(await rpcBackend(d.context).setMode(pci(0x07), false, false, ROOT)).toBe(NvPdStatus.DRIVER);
    expect(d.scratch.callCount("nvmlEventSetFree")).toBe(0);
    expect(d.messages().join("\n")).toContain("an Xid event wait is still inside NVML after its time limit");
    openGate();
  });

  it("watches a GPU a reload adds at once, not from the next reopen", async () => {
    const d = fixture.daemon({ gpus: 3, events: [{ gpu: 2, ...XID_13 }] }, { devices: ["0"] });
    await d.daemon.run();
    d.nextConfig = { devices: ["0", "2"] };
    d.daemon.reload();
    await d.daemon.reloadsSettled();
    expect(d.messages()).toContain("watching Xid events on 1 more GPUs");
    await d.context.xid?.drain();
    expect(d.registry.list()[2]?.xids.get(13)).toBe(1);
  });
});

describe("a release's own limits", () => {
  it("a release that cannot end the NVML session tries once, within releaseTimeoutMs (not the stop budget)", async () => {
    const d = fixture.daemon(
      { gpus: 2, faults: [{ call: "nvmlDeviceGetPowerUsage", gate: true }] },
      { releaseTimeoutMs: 50 },
    );
    await d.daemon.run();
    expect(d.context.session?.idleLimitMs).toBe(50);
    const round = healthOf(d).round();
    await gated(1);
    expect(await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.DRIVER);
    expect(d.messages().filter((m) => m.startsWith("cannot end the NVML session"))).toEqual([
      "cannot end the NVML session: NVML calls were still in flight after 50 ms (driver hung?); it stays open, so it still pins every GPU",
    ]);
    openGate();
    await round;
  });
});

describe("every fd systemd hands back is used or closed", () => {
  it("a second state record and a socket bound elsewhere are closed, saying why", async () => {
    const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-handed-"));
    try {
      const record = join(dir, "state");
      writeFileSync(record, JSON.stringify({ released: [], gpus: [] }));
      const stray = join(dir, "stray.sock");
      const store = new FdStoreNotifier();
      const d = fixture.daemon(
        { gpus: 1 },
        {},
        {
          notifier: store,
          passedFds: [
            { fd: openSync(record, "r"), name: "state" },
            { fd: openSync(record, "r"), name: "state" },
            { fd: boundUnixSocket(stray, "stream"), name: "stray.socket" },
          ],
        },
      );
      await d.daemon.run();
      expect(fdsOnPath(record)).toEqual([]);
      expect(d.messages()).toContain("systemd handed back 2 state records: read the last, closed all");
      expect(d.messages()).toContain(
        `closed the file descriptor systemd handed back as 'stray.socket': it is bound to ${stray}, which this daemon does not serve`,
      );
      await d.stop();
      store.flush();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
