// The daemon end to end, through the real koffi path into the simulated libnvidia-ml.
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DaemonFixture, openFiles, statusJson } from "../helpers/daemon.js";

const fixture = new DaemonFixture();
const start = fixture.start.bind(fixture);

/** The daemon's own routed persistence calls, from the simulator's log: "closed" or "answered", and the GPU. */
const ownPersistenceReads = (pid: number) =>
  fixture.scratch
    .calls()
    .filter((c) => c.pid === pid && c.call.startsWith("persistenceSocket:"))
    .map((c) => `${c.call.slice("persistenceSocket:".length)} ${c.gpu}`)
    .sort();
/** One read per GPU, each closed unanswered by the daemon's own RPC server. */
const unansweredOnEach = (count: number) => Array.from({ length: count }, (_, i) => `closed ${i}`);

describe.each([1, 8, 64])("bring-up of %i simulated GPUs", (count) => {
  it("holds every GPU, reports it in status, and shows the fds in /proc", async () => {
    const d = start([`--simulate=${count}`]);
    await d.waitReady();
    const status = statusJson(fixture.scratch.runtimeDir);
    expect(status.pid).toBe(d.pid);
    expect(status.devices).toHaveLength(count);
    const uuids = new Set(status.devices.map((g) => g.uuid));
    expect(uuids.size).toBe(count);
    for (const [i, gpu] of status.devices.entries()) {
      expect(gpu).toMatchObject({ index: i, persistence: "enabled", held: true, error: null, minor: i });
      expect(gpu.uuid).toMatch(/^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
      expect(gpu.pciBusId).toMatch(/^[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.0$/);
    }
    const held = openFiles(d.pid).filter((p) => p.includes("/sim-dev/nvidia"));
    expect(held.sort()).toEqual(
      status.devices.map((g) => join(fixture.scratch.runtimeDir, "sim-dev", `nvidia${g.minor}`)).sort(),
    );
    const exit = await d.stop();
    expect(exit.code).toBe(0);
    expect(existsSync(fixture.scratch.runtimeDir)).toBe(false);
  });
});

describe("bring-up", () => {
  it("brings 8 slow GPUs up in parallel: well under 8 x attachDelayMs", async () => {
    const d = start(["--simulate=8"], { attachDelayMs: 500 });
    await d.waitReady();
    const bringUpMs = Number(/bringUpMs=(\d+)/.exec(d.output)?.[1]);
    // A generous bound: a serial bring-up takes 4000 ms; the bench measures the real ratio.
    expect(bringUpMs).toBeLessThan(4 * 500);
    expect(statusJson(fixture.scratch.runtimeDir).devices.every((g) => g.held)).toBe(true);
  });

  it("models a DGX H100 with --simulate=dgx-h100", async () => {
    const d = start(["--simulate=dgx-h100"]);
    await d.waitReady();
    const devices = statusJson(fixture.scratch.runtimeDir).devices;
    expect(devices.map((g) => g.pciBusId)).toEqual(
      ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"].map((bus) => `00000000:${bus}:00.0`),
    );
    expect(devices.every((g) => g.name === "NVIDIA H100 80GB HBM3")).toBe(true);
  });

  it("takes the GPU count and identities from the simulator config with --simulate alone", async () => {
    const d = start(["--simulate"], {
      gpus: [{ uuid: "GPU-11111111-2222-3333-4444-555555555555", pciBusId: "0000:1b:00.0", minor: 5 }, {}, {}],
    });
    await d.waitReady();
    const devices = statusJson(fixture.scratch.runtimeDir).devices;
    expect(devices).toHaveLength(3);
    expect(devices[0]).toMatchObject({
      uuid: "GPU-11111111-2222-3333-4444-555555555555",
      pciBusId: "00000000:1B:00.0",
      minor: 5,
      held: true,
    });
  });

  it("never calls the setter, and reports each GPU's legacy flag as read at the hold", async () => {
    const d = start(["--simulate"], { gpus: [{ persistence: 1 }, { persistence: 0 }, { persistence: 1 }, {}] });
    await d.waitReady();
    expect(fixture.scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
    expect(ownPersistenceReads(d.pid)).toEqual(unansweredOnEach(4));
    const devices = statusJson(fixture.scratch.runtimeDir).devices;
    // NVML's answer: held for persistence, or the flag on.
    expect(devices.every((g) => g.held && g.persistence === "enabled")).toBe(true);
    expect(devices.map((g) => g.legacyFlag)).toEqual(["enabled", "disabled", "enabled", "disabled"]);
    expect(d.output).toContain("GPU 0 00000000:06:00.0: the driver's legacy persistence flag is on");
    expect(d.output).not.toContain("GPU 1 00000000:07:00.0: the driver's legacy persistence flag is on");
  });

  it("never calls the setter under --dry-run either, yet holds every GPU", async () => {
    const d = start(["--simulate=4", "--dry-run"]);
    await d.waitReady();
    // One legacy-flag read per GPU, each sent to the daemon's own socket and closed unanswered.
    expect(fixture.scratch.callCount("nvmlDeviceGetPersistenceMode")).toBe(4);
    expect(ownPersistenceReads(d.pid)).toEqual(unansweredOnEach(4));
    expect(fixture.scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
    const devices = statusJson(fixture.scratch.runtimeDir).devices;
    // Held for persistence, so NVML's clients read it enabled (the daemon answers so over its
    // socket); the driver's own flag was read disabled and left alone.
    expect(devices.every((g) => g.held && g.persistence === "enabled" && g.legacyFlag === "disabled")).toBe(true);
  });

  it("keeps the other GPUs when one GPU cannot be identified (NO_PERMISSION)", async () => {
    const d = start(["--simulate=4"], { faults: [{ call: "nvmlDeviceGetUUID", gpu: 2, return: 4 }] });
    await d.waitReady();
    expect(d.output).toContain("ready: 3/4 GPUs held");
    const devices = statusJson(fixture.scratch.runtimeDir).devices;
    expect(devices.filter((g) => g.held).map((g) => g.index)).toEqual([0, 1, 3]);
    expect(devices[2]).toMatchObject({ held: false, state: "unidentified", errorCode: "NVML_ERROR_NO_PERMISSION" });
    expect(devices[2]?.error).toContain("Insufficient Permissions");
    expect(openFiles(d.pid).filter((p) => p.includes("/sim-dev/nvidia"))).toHaveLength(3);
  });

  it("keeps a GPU held whose legacy flag cannot be read, with a warning on that GPU", async () => {
    const d = start(["--simulate=4"], { faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 2, return: 4 }] });
    await d.waitReady();
    expect(d.output).toContain("ready: 4/4 GPUs held");
    expect(d.output).toMatch(
      /WARN {2}GPU 2 00000000:08:00.0: cannot read the legacy persistence flag: NVML_ERROR_NO_PERMISSION.*; the GPU is held by its node/,
    );
    const devices = statusJson(fixture.scratch.runtimeDir).devices;
    expect(devices[2]).toMatchObject({ held: true, persistence: "enabled", legacyFlag: "unknown", error: null });
    expect(openFiles(d.pid).filter((p) => p.includes("/sim-dev/nvidia"))).toHaveLength(4);
  });

  it("holds only the GPUs --devices names, by index, UUID or PCI bus id", async () => {
    const d = start(["--simulate=6", "--devices=1,GPU-78dde6e4-bbcd-4cdc-9bbc-230c0f710003,0000:0b:00.0"]);
    await d.waitReady();
    const devices = statusJson(fixture.scratch.runtimeDir).devices;
    expect(devices.filter((g) => g.held).map((g) => g.index)).toEqual([1, 3, 5]);
    expect(devices.filter((g) => g.selected).map((g) => g.index)).toEqual([1, 3, 5]);
  });

  it("starts with every GPU released under --no-persistence-mode", async () => {
    const d = start(["--simulate=2", "--no-persistence-mode"]);
    await d.waitReady();
    expect(d.output).toContain("ready: 0/2 GPUs held");
    expect(fixture.scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
    expect(ownPersistenceReads(d.pid)).toEqual([]);
    expect(statusJson(fixture.scratch.runtimeDir).devices.some((g) => g.held)).toBe(false);
  });
});

describe("stop", () => {
  it("exits within 2 s on SIGTERM while an NVML call hangs, leaving no runtime files", async () => {
    const d = start(["--simulate=2"], {
      faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 1, hangMs: 60_000 }],
    });
    await d.waitFor("GPU 0 00000000:06:00.0: holding the GPU");
    const exit = await d.stop("SIGTERM");
    expect(exit.code).toBe(0);
    expect(exit.ms).toBeLessThan(2000);
    expect(existsSync(fixture.scratch.runtimeDir)).toBe(false);
  });

  it("exits 0 on SIGINT after releasing every GPU", async () => {
    const d = start(["--simulate=3"]);
    await d.waitReady();
    const exit = await d.stop("SIGINT");
    expect(exit.code).toBe(0);
    expect(d.output).toMatch(/Shutdown \(\d+\)/);
  });

  it("keeps a runtime directory it did not create, removing only its own files", async () => {
    fixture.prepare();
    const { mkdirSync } = await import("node:fs");
    mkdirSync(fixture.scratch.runtimeDir);
    const daemon = fixture.spawn(["--simulate=2"]);
    await daemon.waitReady();
    expect(readdirSync(fixture.scratch.runtimeDir).sort()).toEqual([
      "gpu-persistd.sock",
      "nvidia-persistenced.pid",
      "sim-dev",
      "socket",
    ]);
    await daemon.stop();
    expect(readdirSync(fixture.scratch.runtimeDir)).toEqual([]);
  });
});

describe("threads", () => {
  it("sizes the libuv pool from the GPU count (one each, at least 4): 8 GPUs, at most 12 threads idle", async () => {
    const d = start(["--simulate=8"]);
    await d.waitReady();
    const environ = readFileSync(`/proc/${d.pid}/environ`, "utf8").split("\0");
    expect(environ).toContain("UV_THREADPOOL_SIZE=8");
    expect(environ).toContain("UV_USE_IO_URING=0");
    const threads = Number(/^Threads:\s+(\d+)$/m.exec(readFileSync(`/proc/${d.pid}/status`, "utf8"))?.[1]);
    expect(threads).toBeLessThanOrEqual(12);
    expect(readFileSync(`/proc/${d.pid}/cmdline`, "utf8").split("\0")).toContain("--v8-pool-size=1");
  });
});
