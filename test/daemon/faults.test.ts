// Faults while running and at the edges of the daemon's life, each injected through the
// simulator: the rows of the README's fault matrix not covered elsewhere.
import { chmodSync, existsSync, rmSync, statSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DaemonFixture, openFiles, statusJson } from "../helpers/daemon.js";

const fixture = new DaemonFixture();
const start = fixture.start.bind(fixture);
/** The NVML call each health round makes on a held GPU. */
const HEALTH_CALL = "nvmlDeviceGetFieldValues";

describe("driver not loaded at boot", () => {
  it("waits with backoff while the driver loads, then comes up", async () => {
    const d = start(["--simulate=2"], { faults: [{ call: "nvmlInit_v2", return: 9, times: 3 }] });
    await d.waitReady();
    expect(d.output).toContain("waiting for the NVIDIA driver (NVML_ERROR_DRIVER_NOT_LOADED)");
    expect(d.output).toMatch(/the NVIDIA driver answered after \d+ ms/);
    expect(fixture.scratch.callCount("nvmlInit_v2")).toBe(4);
  });

  it("gives up after driverWaitMs with exit 69, the cause and the fix", () => {
    const result = fixture.run(
      ["--simulate=2"],
      { faults: [{ call: "nvmlInit_v2", return: 9 }] },
      { GPU_PERSISTD_DRIVER_WAIT_MS: "1000" },
    );
    expect(result.code).toBe(69);
    expect(result.output).toContain("the NVIDIA driver is not loaded (NVML_ERROR_DRIVER_NOT_LOADED");
    expect(result.output).toContain("did not load within 1 s");
    expect(result.output).toContain("modprobe nvidia");
    expect(fixture.scratch.callCount("nvmlInit_v2")).toBeGreaterThanOrEqual(3);
    expect(existsSync(fixture.scratch.runtimeDir)).toBe(false);
  });
});

describe("Xid events", () => {
  it("logs an Xid storm with the Xid's meaning, rate-limited, and counts every one", async () => {
    const events = Array.from({ length: 30 }, () => ({ gpu: 1, type: 8, data: 48, afterMs: 200 }));
    const d = start(["--simulate=2"], { events });
    await d.waitReady();
    await d.waitFor("Xid 48 storm");
    await new Promise((r) => setTimeout(r, 300));
    const lines = d.output.split("\n").filter((l) => l.includes("Xid 48: double-bit ECC error"));
    expect(lines).toHaveLength(5);
    expect(lines[0]).toMatch(/ERROR GPU 1 00000000:07:00\.0: Xid 48: double-bit ECC error/);
    expect(statusJson(fixture.scratch.runtimeDir).devices[1]?.xids).toEqual({ 48: 30 });
    expect(d.output).toContain("watching Xid events on 2 GPUs");
  });

  it("marks a GPU lost on Xid 79, releases only that GPU, and says so in status", async () => {
    const d = start(["--simulate=3"], { events: [{ gpu: 2, type: 8, data: 79, afterMs: 300 }] });
    await d.waitReady();
    await d.waitFor("GPU 2 00000000:08:00.0: GPU is lost");
    const devices = statusJson(fixture.scratch.runtimeDir).devices;
    expect(devices.map((g) => [g.held, g.lost])).toEqual([
      [true, false],
      [true, false],
      [false, true],
    ]);
    expect(devices[2]?.error).toBe("Xid 79: GPU has fallen off the bus");
    expect(openFiles(d.pid).filter((p) => p.includes("/sim-dev/nvidia"))).toHaveLength(2);
  });
});

describe("drift", () => {
  it("keeps holding a GPU whose node is replaced: the open fd, not the path, holds it (no polling)", async () => {
    const d = start(["--simulate=2"], {}, { GPU_PERSISTD_HEALTH_INTERVAL_MS: "100" });
    await d.waitReady();
    const node = join(fixture.scratch.runtimeDir, "sim-dev", "nvidia1");
    rmSync(node);
    writeFileSync(node, "");
    await new Promise((r) => setTimeout(r, 500));
    const held = openFiles(d.pid).filter((p) => p.includes("/sim-dev/nvidia"));
    expect(held.sort()).toEqual([join(fixture.scratch.runtimeDir, "sim-dev", "nvidia0"), `${node} (deleted)`]);
    expect(statusJson(fixture.scratch.runtimeDir).devices.every((g) => g.held)).toBe(true);
  });

  it("lets an admin's legacy flag change without asking NVML about persistence or calling the setter", async () => {
    fixture.prepare();
    const statePath = join(fixture.scratch.dir, "state");
    fixture.scratch.writeSimConfig({ statePath });
    const daemon = fixture.spawn(["--simulate=2"], { GPU_PERSISTD_HEALTH_INTERVAL_MS: "100" });
    await daemon.waitReady();
    const [gpu0, gpu1] = statusJson(fixture.scratch.runtimeDir).devices;
    // The legacy flags change behind the daemon's back (the simulator keeps them here).
    writeFileSync(statePath, `${gpu0?.uuid} 1\n${gpu1?.uuid} 0\n`);
    const checked = fixture.scratch.callCount(HEALTH_CALL, 0);
    const deadline = Date.now() + 10_000;
    while (fixture.scratch.callCount(HEALTH_CALL, 0) < checked + 3) {
      if (Date.now() > deadline) throw new Error(`no health rounds called ${HEALTH_CALL}:\n${daemon.output}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    // The holds read each flag once; the health rounds since never asked NVML about persistence.
    expect(fixture.scratch.callCount("nvmlDeviceGetPersistenceMode")).toBe(2);
    expect(fixture.scratch.calls().filter((c) => c.call.startsWith("persistenceSocket:"))).toHaveLength(2);
    expect(fixture.scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
    expect(statusJson(fixture.scratch.runtimeDir).devices.every((g) => g.held && g.persistence === "enabled")).toBe(
      true,
    );
  });
});

describe("bounded everything", () => {
  it("stops within 2 s even with every NVML call hung", async () => {
    const d = start(
      ["--simulate=2"],
      { faults: [{ call: "*", hangMs: 120_000, afterMs: 600 }] },
      {
        GPU_PERSISTD_HEALTH_INTERVAL_MS: "100",
      },
    );
    await d.waitReady();
    await new Promise((r) => setTimeout(r, 900));
    const exit = await d.stop();
    expect(exit.code).toBe(0);
    expect(exit.ms).toBeLessThan(2000);
    expect(existsSync(fixture.scratch.runtimeDir)).toBe(false);
  });

  it("stops within 2 s when an NVML call hangs during bring-up", async () => {
    const d = start(["--simulate=4"], { faults: [{ call: "nvmlDeviceGetHandleByIndex_v2", gpu: 3, hangMs: 120_000 }] });
    await d.waitFor("GPU 0");
    const exit = await d.stop();
    expect(exit.code).toBe(0);
    expect(exit.ms).toBeLessThan(2000);
  });
});

describe("privilege drop", () => {
  it("refuses an unknown user with exit 67 before touching any GPU", () => {
    const result = fixture.run(["--simulate=2", "--user=no-such-user"]);
    expect(result.code).toBe(67);
    expect(result.output).toContain("unknown user 'no-such-user' (--user): no such entry in the user database");
    expect(fixture.scratch.calls()).toEqual([]);
  });

  it("refuses an unknown group with exit 67 before touching any GPU", () => {
    const result = fixture.run(["--simulate=2", "-u", "nobody", "-g", "no-such-group"]);
    expect(result.code).toBe(67);
    expect(result.output).toContain("unknown group 'no-such-group' (--group)");
    expect(fixture.scratch.calls()).toEqual([]);
  });

  it("runs as the user and the --group's gid after bring-up, verified in /proc", async () => {
    fixture.prepare();
    chmodSync(fixture.scratch.dir, 0o755);
    const daemon = fixture.spawn(["--simulate=2", "--group=nogroup", "--user=nobody"]);
    await daemon.waitReady();
    const { readFileSync } = await import("node:fs");
    const status = readFileSync(`/proc/${daemon.pid}/status`, "utf8");
    expect(status).toMatch(/^Uid:\s+65534\s+65534\s+65534\s+65534$/m);
    expect(status).toMatch(/^Gid:\s+65534\s+65534\s+65534\s+65534$/m);
    expect(status).toMatch(/^Groups:\s+65534\s*$/m);
    // Still answers and stops cleanly. The runtime directory stays root's (the dropped user
    // could plant links there otherwise): what it cannot remove, the next start takes over.
    expect(statusJson(fixture.scratch.runtimeDir).devices.every((g) => g.held)).toBe(true);
    expect(statSync(fixture.scratch.runtimeDir).uid).toBe(0);
    const exit = await daemon.stop();
    expect(exit.code).toBe(0);
    expect(daemon.output).not.toContain("could not remove");
    const again = fixture.spawn(["--simulate=2", "--group=nogroup", "--user=nobody"]);
    await again.waitReady();
  });
});

describe("bad input on the control socket", () => {
  function request(payload: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const s = connect(join(fixture.scratch.runtimeDir, "gpu-persistd.sock"), () => s.write(payload));
      let reply = "";
      s.on("data", (d) => {
        reply += d.toString();
      });
      s.on("end", () => resolve(reply));
      s.on("close", () => resolve(reply));
      s.on("error", reject);
    });
  }

  it("answers each bad request with an error and keeps serving", async () => {
    const d = start(["--simulate=1"]);
    await d.waitReady();
    expect(JSON.parse(await request("not json\n")).error).toMatch(/JSON/);
    expect(JSON.parse(await request('{"command":"format-disks"}\n')).error).toBe(
      'unknown command "format-disks" (known: status, release)',
    );
    expect(JSON.parse(await request("[1,2]\n")).error).toContain('"command" string');
    expect(JSON.parse(await request("x".repeat(10_000))).error).toBe("request longer than 4096 bytes");
    expect(statusJson(fixture.scratch.runtimeDir).devices[0]?.held).toBe(true);
  });
});

describe("reload", () => {
  it("holds and releases only the difference when the selection changes, never calling the setter", async () => {
    fixture.prepare();
    const config = join(fixture.scratch.dir, "config.json");
    writeFileSync(config, JSON.stringify({ devices: ["0", "1"] }));
    const daemon = fixture.spawn(["--simulate=4", `--config=${config}`]);
    await daemon.waitReady();
    expect(statusJson(fixture.scratch.runtimeDir).devices.map((g) => g.held)).toEqual([true, true, false, false]);
    writeFileSync(config, JSON.stringify({ devices: ["1", "2"] }));
    daemon.child.kill("SIGHUP");
    await daemon.waitFor("reload done");
    expect(statusJson(fixture.scratch.runtimeDir).devices.map((g) => g.held)).toEqual([false, true, true, false]);
    expect(daemon.output).toContain("GPU 0 00000000:06:00.0: released the GPU (no longer selected)");
    expect(fixture.scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
    // GPU 2, held at the reload, had its legacy flag read like the others: on the daemon's socket, unanswered.
    expect(
      fixture.scratch
        .calls()
        .filter((c) => c.call.startsWith("persistenceSocket:"))
        .map((c) => `${c.call} ${c.gpu}`)
        .sort(),
    ).toEqual(["persistenceSocket:closed 0", "persistenceSocket:closed 1", "persistenceSocket:closed 2"]);
  });

  it("keeps the running configuration when the new one is bad, saying why", async () => {
    fixture.prepare();
    const config = join(fixture.scratch.dir, "config.json");
    writeFileSync(config, "{}");
    const daemon = fixture.spawn(["--simulate=2", `--config=${config}`]);
    await daemon.waitReady();
    writeFileSync(config, JSON.stringify({ logLevel: "chatty" }));
    daemon.child.kill("SIGHUP");
    await daemon.waitFor("reload failed, keeping the running configuration");
    expect(daemon.output).toContain('logLevel: must be one of the possible values: ["debug","info","warn","error"]');
    expect(statusJson(fixture.scratch.runtimeDir).devices.every((g) => g.held)).toBe(true);
  });
});
