// Releases in this process, over the simulated NVML whose session attaches (and so pins)
// every GPU it touches, as real NVML does: the coordinator that opens and closes the session
// from the registry's state, the leases of `release GPU -- COMMAND` in every order of
// events, and the GPUs that stay watched while one is released. The shipped defaults
// throughout (no shortened waits); ordering from the simulator's gates and hooks.
import { renameSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BadRequest, Lease } from "../../src/control/control-server.js";
import { controlHandler } from "../../src/daemon/control-adapter.js";
import { rpcBackend } from "../../src/daemon/rpc-adapter.js";
import { daemonStatus, metricsText } from "../../src/daemon/status-snapshot.js";
import type { HealthMonitor } from "../../src/health/health-monitor.js";
import { NvPdStatus } from "../../src/rpc/persistence-program.js";
import { fallOffTheBus, fdsOn, type InProcessDaemon, InProcessFixture, ROOT } from "../helpers/in-process.js";

const fixture = new InProcessFixture();

/** The daemon's health loop; a test must never pass because there is none. */
function healthOf(d: { context: { health: HealthMonitor | null } }): HealthMonitor {
  if (!d.context.health) throw new Error("no health loop: the daemon did not finish starting");
  return d.context.health;
}
const pci = (bus: number) => ({ domain: 0, bus, device: 0, function: 0 });

async function started(gpus: number): Promise<InProcessDaemon> {
  const d = fixture.daemon({ gpus }, {}, { attach: true });
  await d.daemon.run();
  return d;
}

/** Fds of this process (the daemon's and its NVML session's) on GPU `minor`'s node. */
const pins = (d: InProcessDaemon, minor: number) => fdsOn(d.scratch.runtimeDir, minor).length;

async function release(d: InProcessDaemon, gpus: string[], peer = ROOT): Promise<Lease> {
  const answer = await controlHandler(d.context)({ command: "release", gpus }, peer);
  if (!(answer instanceof Lease)) throw new Error(`not a lease: ${JSON.stringify(answer)}`);
  return answer;
}

describe("the NVML session follows the registry's state", () => {
  it("a release answers once nothing of the daemon's pins the GPU; the hold reopens the session", async () => {
    const d = await started(2);
    expect(pins(d, 0)).toBe(2); // the daemon's node fd and the session's attach
    const backend = rpcBackend(d.context);
    expect(await backend.setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(pins(d, 0)).toBe(0);
    expect(d.context.session?.open).toBe(false);
    expect(pins(d, 1)).toBe(1); // still held by its node
    expect(await backend.setMode(pci(0x06), true, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(d.context.session?.open).toBe(true);
    expect(d.context.xid).not.toBeNull();
  });

  it("a client's hold that fails after its release, then a reload that holds every GPU: the session is open again and rounds ask NVML", async () => {
    const d = await started(2);
    const backend = rpcBackend(d.context);
    await backend.setMode(pci(0x06), false, false, ROOT);
    const node = join(d.scratch.runtimeDir, "sim-dev", "nvidia0");
    renameSync(node, `${node}.away`);
    expect(await backend.setMode(pci(0x06), true, false, ROOT)).toBe(NvPdStatus.IO);
    expect(d.registry.list()[0]?.state).toBe("failed");
    renameSync(`${node}.away`, node);
    d.daemon.reload();
    await d.daemon.reloadsSettled();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(d.context.session?.open).toBe(true);
    expect(d.context.xid).not.toBeNull();
    const before = d.scratch.callCount("nvmlDeviceGetPowerUsage");
    expect(await healthOf(d).round()).toBe(true);
    expect(d.scratch.callCount("nvmlDeviceGetPowerUsage") - before).toBe(2);
  });
});

describe("watched while a GPU is released", () => {
  it("a GPU that falls off the bus while another is released is lost after one round, through its node; the released GPU is not attached again", async () => {
    const d = await started(3);
    await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT);
    fallOffTheBus(1);
    const before = d.scratch.calls().length;
    expect(await healthOf(d).round()).toBe(true);
    expect(d.registry.list().map((g) => g.state)).toEqual(["released", "lost", "held"]);
    expect(daemonStatus(d.context).devices[1]?.error).toContain("the driver no longer answers on the GPU's node");
    // Nothing asked NVML (which would attach GPU 0 again): only the nodes were asked.
    const round = d.scratch.calls().slice(before);
    expect(round.map((c) => c.call).sort()).toEqual(["NV_ESC_NUMA_INFO", "NV_ESC_NUMA_INFO"]);
    expect(pins(d, 0)).toBe(0);
    expect(pins(d, 1)).toBe(0);
    expect(d.messages().filter((m) => m.includes("GPU is lost"))).toHaveLength(1);
    expect(metricsText(d.context)).toMatch(/gpu_persistd_gpu_lost\{gpu="1"[^}]*\} 1/);
  });

  it("with nothing released, the loss is seen through NVML and its Xid 79, named once", async () => {
    const d = await started(2);
    fallOffTheBus(1);
    expect(await healthOf(d).round()).toBe(true);
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "lost"]);
    expect(d.messages().filter((m) => m.includes("GPU is lost"))).toHaveLength(1);
    expect(d.registry.list()[1]?.xids.get(79)).toBe(1);
  });
});

describe("release GPU -- COMMAND: leases", () => {
  it("answers once nothing pins the GPU; its end holds it again and reopens the session", async () => {
    const d = await started(2);
    const lease = await release(d, ["0"]);
    expect(pins(d, 0)).toBe(0);
    expect(d.context.session?.open).toBe(false);
    expect(lease.reply).toMatchObject({ released: [{ index: 0, state: "released" }] });
    expect(await lease.end()).toMatchObject({ held: [{ index: 0, held: true }] });
    expect(d.context.session?.open).toBe(true);
    expect(pins(d, 0)).toBe(2);
  });

  it("a second release of a leased GPU is refused, naming the first; a hold (RPC Set ENABLED) too", async () => {
    const d = await started(2);
    const lease = await release(d, ["0"]);
    await expect(release(d, ["0", "1"], { pid: 5151, uid: 0, gid: 0 })).rejects.toThrow(
      /GPU 0 is already released by another 'gpu-persistd release' \(pid 4242/,
    );
    expect(d.registry.list()[1]?.state).toBe("held");
    expect(await rpcBackend(d.context).setMode(pci(0x06), true, false, ROOT)).toBe(NvPdStatus.IO);
    expect(d.registry.list()[0]?.state).toBe("released");
    expect(pins(d, 0)).toBe(0);
    await lease.end();
    expect(d.registry.list()[0]?.state).toBe("held");
  });

  it("a plain release during a lease stays in force after it ends", async () => {
    const d = await started(2);
    const lease = await release(d, ["0"]);
    expect(await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    await lease.end();
    expect(d.registry.list()[0]?.state).toBe("released");
    expect(pins(d, 0)).toBe(0);
    expect(d.context.session?.open).toBe(false);
  });

  it("a client gone before the reply, or while the GPU is held again: one consistent end, nothing left released", async () => {
    const d = await started(2);
    const lease = await release(d, ["0", "1"]);
    // The control server ends a lease once, however the connection ends; a new release may arrive meanwhile.
    const ending = lease.end();
    const next = release(d, ["1"]);
    await ending;
    const second = await next;
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "released"]);
    await second.end();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(d.context.session?.open).toBe(true);
  });

  it("a release that fails half-way (a lost GPU among them) is taken back before the error", async () => {
    const d = await started(3);
    fallOffTheBus(2);
    await healthOf(d).round();
    await expect(release(d, ["0", "2"])).rejects.toThrow(
      "cannot release: GPU 2 is lost: there is nothing to release; nothing was released",
    );
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held", "lost"]);
    expect(d.context.session?.open).toBe(true);
    expect(d.context.intents.of(0).lease).toBeNull();
  });

  it("a SIGHUP during a lease leaves the leased GPU released; the end holds it", async () => {
    const d = await started(2);
    const lease = await release(d, ["1"]);
    d.daemon.reload();
    await d.daemon.reloadsSettled();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "released"]);
    expect(pins(d, 1)).toBe(0);
    await lease.end();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
  });

  it("two leases of one client on different GPUs end apart: each end holds only its own GPU", async () => {
    const d = await started(2);
    const first = await release(d, ["0"]);
    const second = await release(d, ["1"]);
    await first.end();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "released"]);
    await second.end();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
  });

  it("a lease on GPU 0, a reload that deselects it, the lease ends: GPU 0 is not held again", async () => {
    const d = await started(2);
    const lease = await release(d, ["0"]);
    d.nextConfig = { devices: ["1"] };
    d.daemon.reload();
    await d.daemon.reloadsSettled();
    expect(d.registry.list().map((g) => g.state)).toEqual(["released", "held"]);
    await lease.end();
    expect(d.registry.list().map((g) => g.state)).toEqual(["identified", "held"]);
    expect(pins(d, 0)).toBe(1); // the session's attach only
    expect(d.context.session?.open).toBe(true);
  });

  it("a NUMA-offline request during a queued lease is not a permanent release: the lease's end holds the GPU", async () => {
    const d = await started(2);
    const leasing = release(d, ["0"]);
    const offline = rpcBackend(d.context).setNuma(pci(0x06), false, ROOT);
    const lease = await leasing;
    expect(await offline).toBe(NvPdStatus.SUCCESS);
    expect(d.context.intents.of(0).client).toBeNull();
    await lease.end();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(d.context.session?.open).toBe(true);
  });

  it("an unselected GPU can be released too (the session pinned it): the end leaves it unheld, the session open", async () => {
    const d = fixture.daemon({ gpus: 2 }, { devices: ["0"] }, { attach: true });
    await d.daemon.run();
    expect(pins(d, 1)).toBe(1); // the session's attach only
    const lease = await release(d, ["1"]);
    expect(pins(d, 1)).toBe(0);
    await lease.end();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "identified"]);
    expect(d.context.session?.open).toBe(true);
  });

  it("only root may release", async () => {
    const d = await started(1);
    await expect(release(d, ["0"], { pid: 1, uid: 1000, gid: 1000 })).rejects.toBeInstanceOf(BadRequest);
  });
});
