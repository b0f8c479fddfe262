// Every way start-up can fail: the exit code and a message that names the cause and the fix.
import { existsSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DaemonFixture, runBundle, statusJson } from "../helpers/daemon.js";

const fixture = new DaemonFixture();
const run = fixture.run.bind(fixture);

describe("NVML unavailable", () => {
  it("exits 69 naming the library path when it is missing", () => {
    const result = run(["--nvml-library=/opt/nowhere/libnvidia-ml.so.1"]);
    expect(result.code).toBe(69);
    expect(result.output).toContain("cannot load the NVML library '/opt/nowhere/libnvidia-ml.so.1'");
    expect(result.output).toContain("--nvml-library");
    expect(existsSync(fixture.scratch.runtimeDir)).toBe(false);
  });

  it("exits 69 naming the missing function when the library is not NVML", () => {
    const result = run(["--nvml-library=libc.so.6"]);
    expect(result.code).toBe(69);
    expect(result.output).toContain("'libc.so.6' does not export nvmlInit_v2");
  });

  it("exits 69 with the fix when the driver is not loaded and driver waiting is off", () => {
    const result = run(
      ["--simulate=2"],
      { faults: [{ call: "nvmlInit_v2", return: 9 }] },
      { GPU_PERSISTD_DRIVER_WAIT_MS: "0" },
    );
    expect(result.code).toBe(69);
    expect(result.output).toContain("NVML_ERROR_DRIVER_NOT_LOADED");
    expect(result.output).toContain("modprobe nvidia");
  });

  it("exits 69 when NVML reports no GPUs", () => {
    const result = run(["--simulate"], { gpus: 0 });
    expect(result.code).toBe(69);
    expect(result.output).toContain("NVML reports no GPUs");
  });
});

describe("GPUs that fail at start", () => {
  it("exits 77 when NVML refuses every GPU with NO_PERMISSION", () => {
    const result = run(["--simulate=3"], { faults: [{ call: "nvmlDeviceGetHandleByIndex_v2", return: 4 }] });
    expect(result.code).toBe(77);
    expect(result.output).toContain("no selected GPU could be held");
    expect(result.output).toContain("NVML_ERROR_NO_PERMISSION");
    expect(fixture.scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
    expect(existsSync(fixture.scratch.runtimeDir)).toBe(false);
  });

  it("exits 1 when every GPU fails otherwise, naming the first failure", () => {
    const result = run(["--simulate=2"], { faults: [{ call: "nvmlDeviceGetHandleByIndex_v2", return: 15 }] });
    expect(result.code).toBe(1);
    expect(result.output).toContain("no selected GPU could be held (first failure: GPU 0");
    expect(result.output).toContain("NVML_ERROR_GPU_IS_LOST");
  });

  it("starts, every GPU held, when no GPU's legacy flag can be read: a warning on each", async () => {
    const d = fixture.start(["--simulate=2"], { faults: [{ call: "nvmlDeviceGetPersistenceMode", return: 15 }] });
    await d.waitReady();
    expect(d.output).toContain("ready: 2/2 GPUs held");
    for (const gpu of ["GPU 0 00000000:06:00.0", "GPU 1 00000000:07:00.0"]) {
      expect(d.output).toContain(`${gpu}: cannot read the legacy persistence flag: NVML_ERROR_GPU_IS_LOST`);
    }
    expect(statusJson(fixture.scratch.runtimeDir).devices.map((g) => [g.held, g.legacyFlag])).toEqual([
      [true, "unknown"],
      [true, "unknown"],
    ]);
  });

  it("exits 78 (bad configuration: no restart loop) when --devices matches no GPU, saying what was found", () => {
    const result = run(["--simulate=2", "--devices=7"]);
    expect(result.code).toBe(78);
    expect(result.output).toContain("--devices names '7', but no GPU has that index (2 GPUs found)");
  });

  it("fails a GPU whose identification hangs past the time limit, and keeps the others", async () => {
    const d = fixture.start(
      ["--simulate=2"],
      { faults: [{ call: "nvmlDeviceGetUUID", gpu: 0, hangMs: 5000 }] },
      { GPU_PERSISTD_NVML_TIMEOUT_MS: "300" },
    );
    await d.waitReady();
    const [gpu0, gpu1] = statusJson(fixture.scratch.runtimeDir).devices;
    expect(gpu0).toMatchObject({ held: false, state: "unidentified" });
    expect(gpu0?.error).toContain("nvmlDeviceGetUUID did not return within 300 ms");
    expect(gpu1?.held).toBe(true);
  });

  it("keeps a GPU held whose legacy-flag read hangs past the time limit, saying so on that GPU", async () => {
    const d = fixture.start(
      ["--simulate=2"],
      { faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 0, hangMs: 5000 }] },
      { GPU_PERSISTD_NVML_TIMEOUT_MS: "300" },
    );
    await d.waitReady();
    expect(d.output).toMatch(
      /GPU 0 00000000:06:00.0: cannot read the legacy persistence flag: .*nvmlDeviceGetPersistenceMode did not return within 300 ms.*; the GPU is held by its node/,
    );
    expect(statusJson(fixture.scratch.runtimeDir).devices.map((g) => g.held)).toEqual([true, true]);
  });
});

describe("single instance", () => {
  it("refuses a second daemon on the same runtime directory, naming the first's PID", async () => {
    const first = fixture.start(["--simulate=1"]);
    await first.waitReady();
    const second = runBundle([`--runtime-dir=${fixture.scratch.runtimeDir}`, "--simulate=1"], fixture.env());
    expect(second.code).toBe(1);
    expect(second.output).toContain(`another persistence daemon (PID ${first.pid}) holds the lock`);
    // The refused instance must leave the first one's files alone.
    expect(statusJson(fixture.scratch.runtimeDir).pid).toBe(first.pid);
  });

  it("starts after a SIGKILL left a stale PID file and socket", async () => {
    const first = fixture.start(["--simulate=1"]);
    await first.waitReady();
    await first.stop("SIGKILL");
    expect(existsSync(join(fixture.scratch.runtimeDir, "nvidia-persistenced.pid"))).toBe(true);
    const second = fixture.spawn(["--simulate=1"]);
    await second.waitReady();
    expect(statusJson(fixture.scratch.runtimeDir).pid).toBe(second.pid);
  });

  it("exits 1 naming the runtime directory when it cannot be created", () => {
    const blocker = join(fixture.prepare().dir, "file");
    writeFileSync(blocker, "");
    const result = runBundle([`--runtime-dir=${blocker}/run`, "--simulate=1"]);
    expect(result.code).toBe(1);
    expect(result.output).toContain(`cannot create runtime directory ${blocker}/run`);
  });
});

describe("status client", () => {
  it("says the daemon is not running, and how to start it, when nothing listens", () => {
    const result = runBundle(["status", `--runtime-dir=${fixture.prepare().runtimeDir}`]);
    expect(result.code).toBe(69);
    // The prefix names the program once: no "gpu-persistd: gpu-persistd ...".
    expect(result.stderr).toMatch(/^gpu-persistd: the daemon is not running \(no daemon listening on /);
    expect(result.stderr).toContain("systemctl start gpu-persistd");
  });

  it("prints a table naming each GPU's state", async () => {
    const d = fixture.start(["--simulate=2"], {
      faults: [{ call: "nvmlDeviceGetUUID", gpu: 1, return: 4 }],
    });
    await d.waitReady();
    const result = runBundle(["status", `--runtime-dir=${fixture.scratch.runtimeDir}`]);
    expect(result.code).toBe(0);
    expect(result.stdout).toContain(`PID ${d.pid}: 1/2 GPUs held (simulated GPUs)`);
    const lines = result.stdout.split("\n");
    const held = lines.findIndex((line) => line.startsWith("0 "));
    // A held GPU's row: its name and UUID.
    expect(lines[held]?.split(/\s+/).slice(0, 6)).toEqual(["0", "00000000:06:00.0", "0", "enabled", "yes", "NVIDIA"]);
    expect(lines[held]).toMatch(/GPU-[0-9a-f-]+$/);
    // NVML could not say who GPU 1 is; why, and the fix, follow on lines of their own.
    const at = lines.findIndex((line) => line.startsWith("1 "));
    expect(lines[at]?.split(/\s+/).slice(0, 5)).toEqual(["1", "?", "-1", "unknown", "NO"]);
    expect(lines[at + 1]).toMatch(/^ {5}unidentified: NVML_ERROR_NO_PERMISSION/);
    expect(lines[at + 2]).toMatch(/^ {5}to fix: /);
  });

  it("prints what holding each GPU costs, the node's draw, and a pending recovery action with its step", async () => {
    const d = fixture.start(
      ["--simulate=2"],
      { gpus: [{ powerMw: 78400, pstate: 2 }, { recoveryAction: 1 }], attachDelayMs: 150 },
      { GPU_PERSISTD_HEALTH_INTERVAL_MS: "100" },
    );
    await d.waitReady();
    await d.waitFor("NVML reports recovery action gpu-reset");
    const result = runBundle(["status", `--runtime-dir=${fixture.scratch.runtimeDir}`]);
    expect(result.code).toBe(0);
    const lines = result.stdout.split("\n");
    expect(lines[1]).toBe("held GPUs draw 152.8 W now");
    const gpu0 = lines.findIndex((line) => line.startsWith("0 "));
    expect(lines[gpu0 + 1]).toMatch(
      /^ {5}78\.4 W, P2, \d+(\.\d)? k?J since held, initialisation paid at first open: 0\.\d\d s$/,
    );
    const gpu1 = lines.findIndex((line) => line.startsWith("1 "));
    expect(lines[gpu1 + 1]).toBe(
      "     RECOVERY ACTION gpu-reset: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1",
    );
  });
});
