// Drop-in parity in-process: UVM registrations held with the GPUs, NUMA claims on GPUs with
// coherent memory (with the original's version 1 and 2 semantics), and a release that lasts
// as long as the client's connection.
import { connect } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BadRequest, Lease } from "../../src/control/control-server.js";
import { controlHandler } from "../../src/daemon/control-adapter.js";
import { rpcBackend } from "../../src/daemon/rpc-adapter.js";
import { daemonStatus } from "../../src/daemon/status-snapshot.js";
import { NvPdStatus } from "../../src/rpc/persistence-program.js";
import { fdsOn, InProcessFixture, ROOT } from "../helpers/in-process.js";

const fixture = new InProcessFixture();
const pci = (bus: number) => ({ domain: 0, bus, device: 0, function: 0 });
const ROOT_PEER = { pid: 1, uid: 0, gid: 0 };

describe("UVM persistence", () => {
  it("keeps a registration with each held GPU and drops it with the GPU", async () => {
    const d = fixture.daemon({ gpus: 2 }, { uvmPersistenceMode: true });
    await d.daemon.run();
    expect(daemonStatus(d.context).devices.map((g) => g.uvm)).toEqual(["registered", "registered"]);
    expect(fdsOn(d.scratch.runtimeDir, "uvm")).toHaveLength(2);
    expect(d.scratch.callCount("UVM_REGISTER_GPU")).toBe(2);
    await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT);
    expect(fdsOn(d.scratch.runtimeDir, "uvm")).toHaveLength(1);
    expect(daemonStatus(d.context).devices[0]?.uvm).toBe("off");
    await rpcBackend(d.context).setMode(pci(0x06), true, false, ROOT);
    expect(fdsOn(d.scratch.runtimeDir, "uvm")).toHaveLength(2);
  });

  it("retries while the NVLink fabric is not ready, then registers", async () => {
    const d = fixture.daemon(
      { gpus: 1, faults: [{ call: "UVM_REGISTER_GPU", nvStatus: 0x81, times: 3 }] },
      { uvmPersistenceMode: true },
    );
    await d.daemon.run();
    expect(d.scratch.callCount("UVM_REGISTER_GPU")).toBe(4);
    expect(d.registry.list()[0]?.uvm).toBe("registered");
  });

  it("a failure is a per-GPU warning with the cause, never a silent success; the GPU stays held", async () => {
    const d = fixture.daemon(
      { gpus: 2, faults: [{ call: "UVM_REGISTER_GPU", gpu: 1, nvStatus: 0x81 }] },
      { uvmPersistenceMode: true },
    );
    await d.daemon.run();
    const status = daemonStatus(d.context).devices[1];
    expect(status).toMatchObject({ held: true, uvm: "failed" });
    expect(status?.uvmError).toBe("UVM_REGISTER_GPU failed: NV_ERR_NVLINK_FABRIC_NOT_READY");
    expect(d.messages().join("\n")).toContain(
      "GPU 1: cannot keep a UVM registration: UVM_REGISTER_GPU failed: NV_ERR_NVLINK_FABRIC_NOT_READY (the NVLink fabric did not become ready while it was retried)",
    );
    expect(fdsOn(d.scratch.runtimeDir, "uvm")).toHaveLength(1);
  });

  it("an ioctl the driver refuses (no nvidia-uvm) names errno", async () => {
    const d = fixture.daemon(
      { gpus: 1, faults: [{ call: "UVM_INITIALIZE", return: 25 }] },
      { uvmPersistenceMode: true },
    );
    await d.daemon.run();
    expect(daemonStatus(d.context).devices[0]?.uvmError).toBe("UVM_INITIALIZE failed: ENOTTY");
  });
});

describe("NUMA status", () => {
  const coherent = { gpus: [{ numa: { nid: 1, status: 3, memSizeBytes: 96 * 2 ** 30 } }, {}] };

  it("reads NV_ESC_NUMA_INFO per GPU at bring-up and shows it in status", async () => {
    const d = fixture.daemon(coherent);
    await d.daemon.run();
    const [gh200, h100] = daemonStatus(d.context).devices;
    expect(gh200?.numa).toEqual({ nid: 1, status: "online", autoOnline: true, memSizeBytes: 96 * 2 ** 30 });
    expect(h100?.numa).toBeNull();
    expect(d.messages().join("\n")).toContain(
      "GPU 0: coherent memory: NUMA node 1, online, 98304 MiB, onlined by the driver",
    );
  });

  it("version 2 moves one claim each: the node stays open while either holds", async () => {
    const d = fixture.daemon(coherent);
    await d.daemon.run();
    const backend = rpcBackend(d.context);
    expect(await backend.setNuma(pci(0x06), true, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(await backend.setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    // Persistence released, NUMA still online: held, and Get says disabled.
    expect(d.registry.list()[0]?.state).toBe("held");
    expect(backend.mode(pci(0x06))).toBe(false);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(1);
    expect(await backend.setNuma(pci(0x06), false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(d.registry.list()[0]?.state).toBe("released");
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(0);
    // NUMA online alone initialises the GPU again.
    expect(await backend.setNuma(pci(0x06), true, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(1);
    expect(backend.mode(pci(0x06))).toBe(false);
  });

  it("version 1's Set moves both, and rolls persistence back when NUMA cannot come online", async () => {
    const d = fixture.daemon({ gpus: [{ numa: { status: 4 } }] }, { persistenceMode: false });
    await d.daemon.run();
    const backend = rpcBackend(d.context);
    expect(await backend.setMode(pci(0x06), true, true, ROOT)).toBe(NvPdStatus.NUMA_FAILURE);
    expect(backend.mode(pci(0x06))).toBe(false);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(0);
    expect(d.registry.list()[0]?.state).toBe("identified");
    expect(d.context.session?.open).toBe(true);
  });

  it("a NUMA request that fails while a lease comes in takes back only its own change: the lease stands", async () => {
    const d = fixture.daemon({ gpus: [{ numa: { status: 4 } }] }, { persistenceMode: false });
    await d.daemon.run();
    const heldForNuma = new Promise<void>((resolve) =>
      d.registry.on("transition", (t) => t.to === "held" && resolve()),
    );
    const numa = rpcBackend(d.context).setNuma(pci(0x06), true, ROOT);
    await heldForNuma;
    const lease = controlHandler(d.context)({ command: "release", gpus: ["0"] }, ROOT);
    expect(await numa).toBe(NvPdStatus.NUMA_FAILURE);
    expect(await lease).toBeInstanceOf(Lease);
    expect(d.context.intents.of(0)).toMatchObject({ numa: null, lease: { pid: ROOT.pid } });
    expect(d.registry.list()[0]?.state).toBe("released");
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(0);
  });

  it("a NUMA request overtaken by a lease before its hold is refused, and leaves nothing behind", async () => {
    const d = fixture.daemon({ gpus: [{ numa: { status: 3 } }] }, { persistenceMode: false });
    await d.daemon.run();
    const numa = rpcBackend(d.context).setNuma(pci(0x06), true, ROOT);
    while (d.context.intents.of(0).numa === null) await Promise.resolve();
    const lease = controlHandler(d.context)({ command: "release", gpus: ["0"] }, ROOT);
    expect(await numa).toBe(NvPdStatus.IO);
    expect(await lease).toBeInstanceOf(Lease);
    expect(d.context.intents.of(0)).toMatchObject({ numa: null, lease: { pid: ROOT.pid } });
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(0);
  });

  it("is a successful no-op on a GPU without coherent memory", async () => {
    const d = fixture.daemon({ gpus: 1 }, { persistenceMode: false });
    await d.daemon.run();
    const backend = rpcBackend(d.context);
    expect(await backend.setNuma(pci(0x06), true, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(d.registry.list()[0]?.state).toBe("identified");
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(0);
    expect(await backend.setMode(pci(0x06), true, true, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(d.registry.list()[0]?.state).toBe("held");
  });
});

describe("a release for as long as a client's connection lasts", () => {
  it("releases completely (node, UVM, NVML session), and the lease's end holds again what was held", async () => {
    const d = fixture.daemon({ gpus: 2 }, { uvmPersistenceMode: true });
    await d.daemon.run();
    const lease = await controlHandler(d.context)({ command: "release", gpus: ["0"] }, ROOT_PEER);
    expect(lease).toBeInstanceOf(Lease);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(0);
    expect(fdsOn(d.scratch.runtimeDir, "uvm")).toHaveLength(1);
    expect(d.context.session?.open).toBe(false);
    const last = (await (lease as Lease).end()) as { held: { held: boolean }[] };
    expect(last.held[0]?.held).toBe(true);
    expect(fdsOn(d.scratch.runtimeDir, 0)).toHaveLength(1);
    expect(d.context.session?.open).toBe(true);
  });

  it("a client that ends its side with the request still gets the GPUs held again (the end came during the release)", async () => {
    const d = fixture.daemon({ gpus: 1 });
    await d.daemon.run();
    const lines = await new Promise<string[]>((resolve, reject) => {
      const s = connect(join(d.scratch.runtimeDir, "gpu-persistd.sock"), () => {
        s.end(`${JSON.stringify({ command: "release", gpus: ["0"] })}\n`);
      });
      let text = "";
      s.on("data", (chunk) => {
        text += chunk;
      });
      s.on("error", reject);
      s.on("close", () => resolve(text.trim().split("\n")));
    });
    expect(lines.map((l) => Object.keys(JSON.parse(l))[0])).toEqual(["released", "held"]);
    expect(d.registry.list()[0]?.state).toBe("held");
  });

  it("is root's only, and names a GPU that does not exist", async () => {
    const d = fixture.daemon({ gpus: 1 });
    await d.daemon.run();
    const handler = controlHandler(d.context);
    expect(() => handler({ command: "release", gpus: ["0"] }, { pid: 1, uid: 1000, gid: 1000 })).toThrow(
      new BadRequest("only root may release GPUs (run with sudo)"),
    );
    expect(() => handler({ command: "release", gpus: ["7"] }, ROOT_PEER)).toThrow('no GPU matches "7"');
    expect(() => handler({ command: "release", gpus: [] }, ROOT_PEER)).toThrow(/"gpus" is a list/);
  });
});
