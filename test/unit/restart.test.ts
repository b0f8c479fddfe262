// Restarts in this process, with a notifier that plays systemd's fd store (it keeps a
// duplicate of every fd handed to it, as PID 1 does): GPUs held across the daemon's own
// restart with no moment unheld, a release that stays in force, a stop for good, a handed-
// back fd that is not a GPU node, and a driver version mismatch that degrades instead of
// dropping the GPUs. The shipped defaults throughout.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, openSync, writeSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { memoryFile } from "../../native-bindings/libc.js";
import { Lease } from "../../src/control/control-server.js";
import { controlHandler } from "../../src/daemon/control-adapter.js";
import { rpcBackend } from "../../src/daemon/rpc-adapter.js";
import { daemonStatus, daemonStatusLine, metricsText } from "../../src/daemon/status-snapshot.js";
import { NvPdStatus } from "../../src/rpc/persistence-program.js";
import { FdStoreNotifier, fdsOn, type InProcessDaemon, InProcessFixture, ROOT } from "../helpers/in-process.js";

const fixture = new InProcessFixture();
const pci = (bus: number) => ({ domain: 0, bus, device: 0, function: 0 });
const MISMATCH = { driverVersion: "580.95.05", moduleVersion: "580.159.04" };

async function running(
  gpus: number,
  sim: Record<string, unknown> = {},
): Promise<{ d: InProcessDaemon; store: FdStoreNotifier }> {
  const store = new FdStoreNotifier();
  const d = fixture.daemon({ gpus, ...sim }, {}, { notifier: store });
  await d.daemon.run();
  return { d, store };
}

/** Processes' fds (this one's: the daemon's and the store's copies) on each GPU's stand-in node. */
const holders = (d: InProcessDaemon, gpus: number) =>
  Array.from({ length: gpus }, (_, i) => fdsOn(d.scratch.runtimeDir, i).length);

/**
 * A `release 0 -- COMMAND` client (a real process, so that its pidfd means something) whose
 * lease on GPU 0 is in force when the daemon stops; `end()` ends the client.
 */
async function stoppedDuringLease(gpus: number) {
  const client = spawn("sleep", ["60"]);
  const pid = client.pid as number;
  const { d, store } = await running(gpus);
  const lease = await controlHandler(d.context)({ command: "release", gpus: ["0"] }, { pid, uid: 0, gid: 0 });
  expect(lease).toBeInstanceOf(Lease);
  expect([...store.stored.keys()]).toContain(`lease-${pid}`);
  await d.stop();
  const end = async () => {
    client.kill();
    await once(client, "exit");
  };
  return { d, store, pid, end };
}

/** What a resumed lease's watch does each second, done now. */
const checkOrphans = (d: InProcessDaemon) =>
  d.context.leases.checkOrphans({
    reconciler: d.context.reconciler as never,
    coordinator: d.context.coordinator as never,
  });

describe("held across the daemon's own restart", () => {
  it("every GPU's node is in the store once held; a restart adopts them and opens none anew", async () => {
    const { d, store } = await running(4);
    expect([...store.stored.keys()].filter((k) => k.startsWith("gpu-")).sort()).toEqual([
      "gpu-00000000-06-00.0",
      "gpu-00000000-07-00.0",
      "gpu-00000000-08-00.0",
      "gpu-00000000-09-00.0",
    ]);
    expect(holders(d, 4)).toEqual([2, 2, 2, 2]);
    await d.stop();
    // Between the two processes only the store holds them: never nobody.
    expect(holders(d, 4)).toEqual([1, 1, 1, 1]);
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["held", "held", "held", "held"]);
    expect(next.messages()).toContain(
      "adopting 4 GPU nodes the previous run kept in systemd's fd store: no GPU was let go",
    );
    expect(next.messages().join("\n")).not.toContain("the previous run kept: the GPU is not wanted now");
    expect(holders(next, 4)).toEqual([2, 2, 2, 2]);
    await next.stop();
    store.flush();
    expect(holders(next, 4)).toEqual([0, 0, 0, 0]);
  });

  it("a soft error at the restart (one GPU's legacy-flag read fails once) keeps that GPU's kept node: adopted, never let go", async () => {
    const { d, store } = await running(2);
    await d.stop();
    const next = fixture.restart(
      d,
      {},
      { gpus: 2, faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 1, return: 999, times: 1 }] },
    );
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(next.messages().join("\n")).not.toContain("the GPU is not wanted now");
    expect(next.messages()).toContain(
      "GPU 1: cannot read the legacy persistence flag: NVML_ERROR_UNKNOWN: Unknown Error (nvmlDeviceGetPersistenceMode); the GPU is held by its node",
    );
    // The store's copy and the adopted one: the node was never closed.
    expect(holders(next, 2)).toEqual([2, 2]);
    await next.stop();
    store.flush();
  });

  it("a GPU released during a run is held by nobody, the store included, and stays released after a restart", async () => {
    const { d, store } = await running(2);
    expect(await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(holders(d, 2)).toEqual([0, 2]);
    await d.stop();
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["released", "held"]);
    expect(holders(next, 2)).toEqual([0, 2]);
    expect(next.context.session?.open).toBe(false);
    expect(await rpcBackend(next.context).setMode(pci(0x06), true, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(holders(next, 2)).toEqual([2, 2]);
    expect(next.context.session?.open).toBe(true);
    await next.stop();
    store.flush();
  });

  it("a restart during `release 0 -- COMMAND` keeps GPU 0 released while the client runs; its end holds it again", async () => {
    const { d, store, pid, end } = await stoppedDuringLease(2);
    // The connection died with the old process; COMMAND (a reset, say) goes on.
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["released", "held"]);
    expect(holders(next, 2)).toEqual([0, 2]);
    expect(next.context.session?.open).toBe(false);
    expect(next.messages()).toContain(
      `PID ${pid} still runs: its GPUs stay released until it ends ('gpu-persistd release -- COMMAND')`,
    );
    expect(daemonStatus(next.context).devices[0]?.releasedBy).toMatchObject({ kind: "lease", pid });
    await checkOrphans(next);
    expect(next.registry.list()[0]?.state).toBe("released");
    await end();
    await checkOrphans(next);
    expect(next.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(holders(next, 2)).toEqual([2, 2]);
    expect(next.context.session?.open).toBe(true);
    expect([...store.stored.keys()]).not.toContain(`lease-${pid}`);
    await next.stop();
    store.flush();
  });

  it("a restart while every selected GPU is released (a lease on the only GPU, or a plain release) starts, holding none", async () => {
    const { d, store, end } = await stoppedDuringLease(1);
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["released"]);
    expect(next.context.ready).toBe(true);
    expect(next.messages()).toContain("every selected GPU stays released, as clients asked");
    await end();
    await checkOrphans(next);
    expect(next.registry.list().map((g) => g.state)).toEqual(["held"]);
    expect(await rpcBackend(next.context).setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    await next.stop();
    const again = fixture.restart(next);
    await again.daemon.run();
    expect(again.registry.list().map((g) => g.state)).toEqual(["released"]);
    await again.stop();
    store.flush();
  });

  it("a pidfd handed back that no recorded lease names is closed and dropped, saying so", async () => {
    const { d, store, pid, end } = await stoppedDuringLease(2);
    store.send({ FDSTOREREMOVE: 1, FDNAME: "state" });
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(next.messages()).toContain(
      `closed the pidfd on PID ${pid} the previous run kept: no recorded release by it names a GPU here`,
    );
    expect([...store.stored.keys()]).not.toContain(`lease-${pid}`);
    await end();
    await next.stop();
    store.flush();
  });

  it("a client's hold of a GPU NVML cannot identify at a restart is carried forward until it is back", async () => {
    const { d, store } = await running(2);
    await d.stop();
    const one = fixture.restart(d, { devices: ["0"] });
    await one.daemon.run();
    expect(await rpcBackend(one.context).setMode(pci(0x07), true, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    await one.stop();
    const faulty = fixture.restart(
      one,
      { devices: ["0"] },
      { gpus: 2, faults: [{ call: "nvmlDeviceGetUUID", gpu: 1, return: 999 }] },
    );
    await faulty.daemon.run();
    expect(faulty.registry.list().map((g) => g.state)).toEqual(["held", "unidentified"]);
    await faulty.stop();
    const next = fixture.restart(faulty, { devices: ["0"] }, { gpus: 2 });
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    await next.stop();
    store.flush();
  });

  it("a GPU released before a restart where NVML cannot identify it stays released once it is back", async () => {
    const { d, store } = await running(2);
    expect(await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    await d.stop();
    const faulty = fixture.restart(d, {}, { gpus: 2, faults: [{ call: "nvmlDeviceGetUUID", gpu: 0, return: 999 }] });
    await faulty.daemon.run();
    expect(faulty.registry.list().map((g) => g.state)).toEqual(["unidentified", "held"]);
    await faulty.stop();
    const next = fixture.restart(faulty, {}, { gpus: 2 });
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["released", "held"]);
    await next.stop();
    store.flush();
  });

  it("the daemon's own stop does not end a lease made over the control socket: the next run resumes it", async () => {
    const { d, store } = await running(2);
    // This process is the lease's client: it outlives both runs.
    const socket = connect(join(d.scratch.runtimeDir, "gpu-persistd.sock"));
    socket.write(`${JSON.stringify({ command: "release", gpus: ["0"] })}\n`);
    const [reply] = (await once(socket, "data")) as [Buffer];
    expect(JSON.parse(reply.toString())).toHaveProperty("released");
    await d.stop();
    // The client ends after the stop began (in a real stop, while NVML is shut down): the
    // stopped daemon must not end the lease, whose record and pidfd are the next run's.
    socket.destroy();
    await once(socket, "close");
    await new Promise((r) => setImmediate(r));
    expect([...store.stored.keys()]).toContain(`lease-${process.pid}`);
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["released", "held"]);
    expect(daemonStatus(next.context).devices[0]?.releasedBy).toMatchObject({ kind: "lease", pid: process.pid });
    await next.stop();
    store.flush();
  });

  it("a lease whose client ended while the daemon was down ends at the restart: the GPU is held again", async () => {
    const { d, store, pid, end } = await stoppedDuringLease(2);
    await end();
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(next.messages()).toContain(
      `PID ${pid} ended while the daemon restarted: its release ends, its GPUs are held again`,
    );
    expect([...store.stored.keys()]).not.toContain(`lease-${pid}`);
    await next.stop();
    store.flush();
  });

  it("a lease whose pidfd did not come back cannot be told alive: the GPU is held again, saying why", async () => {
    const { d, store, pid, end } = await stoppedDuringLease(2);
    store.send({ FDSTOREREMOVE: 1, FDNAME: `lease-${pid}` });
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(next.messages()).toContain(
      `the release by PID ${pid} ('gpu-persistd release -- COMMAND') was in force at the restart, but its pidfd did not come back from systemd's fd store: holding its GPUs again`,
    );
    await end();
    await next.stop();
    store.flush();
  });

  it("a client's hold of an unselected GPU, and a plain release during a lease, outlive a restart", async () => {
    const client = spawn("sleep", ["60"]);
    const pid = client.pid as number;
    const { d, store } = await running(3);
    await d.stop();
    const deselected = fixture.restart(d, { devices: ["0", "1"] });
    await deselected.daemon.run();
    expect(await rpcBackend(deselected.context).setMode(pci(0x08), true, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    await controlHandler(deselected.context)({ command: "release", gpus: ["0"] }, { pid, uid: 0, gid: 0 });
    expect(await rpcBackend(deselected.context).setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    await deselected.stop();
    client.kill();
    await once(client, "exit");
    const next = fixture.restart(deselected, { devices: ["0", "1"] });
    await next.daemon.run();
    // GPU 0: the lease ended with its client, the plain release stands; GPU 2: the client's hold stands.
    expect(next.registry.list().map((g) => g.state)).toEqual(["released", "held", "held"]);
    expect(daemonStatus(next.context).devices[0]?.releasedBy).toMatchObject({ kind: "request", uid: 0 });
    await next.stop();
    store.flush();
  });

  it("a state record from a version before intents (released GPUs only) is taken up: they stay released", async () => {
    const { d, store } = await running(2);
    await d.stop();
    store.send({ FDSTOREREMOVE: 1, FDNAME: "state" });
    const fd = memoryFile("old-state");
    writeSync(fd, JSON.stringify({ released: ["00000000:07:00.0"], gpus: [] }));
    store.send({ FDSTORE: 1, FDNAME: "state" }, [fd]);
    closeSync(fd);
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.registry.list().map((g) => g.state)).toEqual(["held", "released"]);
    expect(daemonStatus(next.context).devices[1]?.releasedBy).toMatchObject({ kind: "request", uid: null });
    await next.stop();
    store.flush();
  });

  it("a restart with persistence mode off lets go of what the store kept", async () => {
    const { d, store } = await running(2);
    await d.stop();
    const next = fixture.restart(d, { persistenceMode: false });
    await next.daemon.run();
    expect(holders(next, 2)).toEqual([0, 0]);
    expect([...store.stored.keys()].filter((k) => k.startsWith("gpu-"))).toEqual([]);
    await next.stop();
    store.flush();
  });

  it("closes and drops an fd handed back that is not a GPU's node, saying why, and holds that GPU anew", async () => {
    const store = new FdStoreNotifier();
    const wrong = openSync("/etc/hostname", "r");
    const d = fixture.daemon(
      { gpus: 2 },
      {},
      {
        notifier: store,
        passedFds: [
          { fd: wrong, name: "gpu-00000000-07-00.0" },
          { fd: openSync("/etc/hostname", "r"), name: "something-else" },
        ],
      },
    );
    await d.daemon.run();
    expect(d.messages()).toContain(
      `closed the file descriptor systemd handed back as 'gpu-00000000-07-00.0': it is not the simulator's stand-in ${d.scratch.runtimeDir}/sim-dev/nvidia1`,
    );
    expect(d.messages().join("\n")).toContain(
      "closed the file descriptor systemd handed back as 'something-else': the name is not one gpu-persistd stores",
    );
    expect(store.with("FDSTOREREMOVE").map((m) => m.FDNAME)).toContain("gpu-00000000-07-00.0");
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(holders(d, 2)).toEqual([2, 2]);
    await d.stop();
    store.flush();
  });

  it("closes and drops a lease-PID fd handed back that is not a pidfd, saying why", async () => {
    const store = new FdStoreNotifier();
    const d = fixture.daemon(
      { gpus: 1 },
      {},
      { notifier: store, passedFds: [{ fd: openSync("/etc/hostname", "r"), name: "lease-123" }] },
    );
    await d.daemon.run();
    expect(d.messages()).toContain("closed the file descriptor systemd handed back as 'lease-123': it is not a pidfd");
    expect(store.with("FDSTOREREMOVE").map((m) => m.FDNAME)).toContain("lease-123");
    await d.stop();
    store.flush();
  });

  it("a lease whose client cannot be watched (pidfd_open fails) still works, ending with its connection, and says it cannot outlive a restart", async () => {
    const { d, store } = await running(1);
    // Above the kernel's largest PID: pidfd_open answers ESRCH.
    const pid = 4_194_305;
    const lease = await controlHandler(d.context)({ command: "release", gpus: ["0"] }, { pid, uid: 0, gid: 0 });
    if (!(lease instanceof Lease)) throw new Error("not a lease");
    expect(d.messages()).toContain(
      `the release by PID ${pid} cannot outlive a restart of the daemon: pidfd_open(${pid}): ESRCH; it still ends with its connection`,
    );
    expect([...store.stored.keys()]).not.toContain(`lease-${pid}`);
    expect(d.registry.list()[0]?.state).toBe("released");
    await lease.end();
    expect(d.registry.list()[0]?.state).toBe("held");
    await d.stop();
    store.flush();
  });
});

describe("a stop for good (SIGTERM: systemctl stop, a reboot) empties the store; SIGUSR2 (a restart, a soft reboot) keeps it", () => {
  it("SIGTERM: every GPU and the state record leave the store, and nobody holds a GPU", async () => {
    const { d, store } = await running(3);
    expect(await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect([...store.stored.keys()]).toContain("state");
    expect(await d.stop("for-good")).toBe(0);
    expect([...store.stored.keys()]).toEqual([]);
    expect(holders(d, 3)).toEqual([0, 0, 0]);
    expect(d.messages()).toContain("stopping: test; systemd's fd store is emptied: every GPU is let go");
  });

  it("SIGTERM after a restart also drops what the previous run kept and this one adopted", async () => {
    const { d, store } = await running(3);
    expect(await d.stop("keep")).toBe(0);
    expect(d.messages()).toContain(
      "stopping: test; the GPUs stay in systemd's fd store for the next run (a restart or a soft reboot is under way)",
    );
    expect(holders(d, 3)).toEqual([1, 1, 1]);
    const next = fixture.restart(d);
    await next.daemon.run();
    expect(next.messages()).toContain(
      "adopting 3 GPU nodes the previous run kept in systemd's fd store: no GPU was let go",
    );
    await next.stop("for-good");
    expect([...store.stored.keys()]).toEqual([]);
    expect(holders(next, 3)).toEqual([0, 0, 0]);
  });
});

describe("a driver version mismatch degrades", () => {
  it("at a restart: the GPUs the store kept stay held, status names both versions and the fix, and the daemon stays up", async () => {
    const { d, store } = await running(2, { driverVersion: "580.159.04" });
    await d.stop();
    const next = fixture.restart(d, {}, { gpus: 2, ...MISMATCH, faults: [{ call: "nvmlInit_v2", return: 18 }] });
    await next.daemon.run();
    expect(next.exitCode).toBeNull();
    expect(next.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(holders(next, 2)).toEqual([2, 2]);
    const status = daemonStatus(next.context);
    expect(status.nvmlDegraded).toMatchObject({ libraryVersion: "580.95.05", moduleVersion: "580.159.04" });
    expect(status.nvmlDegraded?.message).toContain("reboot");
    expect(next.notifier.with("READY").at(-1)?.STATUS).toBe(
      "degraded: NVML 580.95.05 vs kernel module 580.159.04, reboot to fix; 2/2 GPUs persistent",
    );
    expect(metricsText(next.context)).toContain(
      'gpu_persistd_nvml_degraded{library_version="580.95.05",module_version="580.159.04"} 1',
    );
    // Watched through the nodes; no nvmlInit is tried again.
    const inits = next.scratch.callCount("nvmlInit_v2");
    expect(await next.context.health?.round()).toBe(true);
    expect(next.scratch.callCount("nvmlInit_v2")).toBe(inits);
    await next.stop();
    store.flush();
  });

  it("at a fresh start: the GPUs the module lists are held by their nodes", async () => {
    const store = new FdStoreNotifier();
    const d = fixture.daemon(
      { gpus: 3, ...MISMATCH, faults: [{ call: "nvmlInit_v2", return: 18 }] },
      {},
      { notifier: store },
    );
    await d.daemon.run();
    expect(d.registry.list().map((g) => [g.state, g.uuid !== ""])).toEqual([
      ["held", true],
      ["held", true],
      ["held", true],
    ]);
    expect(d.messages().join("\n")).toContain(
      "cannot initialise NVML: NVML 580.95.05 does not match the loaded nvidia kernel module 580.159.04",
    );
    await d.stop();
    store.flush();
  });

  it("at the reopen after a release: the GPUs stay held, the released one released, and the daemon says degraded", async () => {
    const { d, store } = await running(2, {
      ...MISMATCH,
      faults: [{ call: "nvmlInit_v2", return: 18, afterCalls: 1 }],
    });
    const backend = rpcBackend(d.context);
    await backend.setMode(pci(0x06), false, false, ROOT);
    expect(await backend.setMode(pci(0x06), true, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(daemonStatusLine(d.context)).toMatch(/^degraded: NVML 580\.95\.05 vs kernel module 580\.159\.04/);
    expect(daemonStatus(d.context).nvmlDegraded).not.toBeNull();
    await d.stop();
    store.flush();
  });
});
