// `gpu-persistd wait` and `gpu-persistd release GPU... -- COMMAND`, run as an admin or a
// container would, against a spawned daemon.
import { spawn } from "node:child_process";
import { chmodSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BUNDLE, DaemonFixture, runBundle, statusJson } from "../helpers/daemon.js";

const fixture = new DaemonFixture();

function bundle(args: string[], asNobody = false) {
  const runtime = `--runtime-dir=${fixture.scratch.runtimeDir}`;
  if (!asNobody) return runBundle([runtime, ...args], fixture.env());
  // A config file nobody may read (the helpers' default sits in a 0700 directory).
  const config = join(fixture.scratch.dir, "config.json");
  writeFileSync(config, "{}");
  chmodSync(config, 0o644);
  return runBundle([runtime, ...args], fixture.env({ GPU_PERSISTD_CONFIG: config }), 20_000, process.execPath, [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    process.execPath,
  ]);
}

async function until(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met");
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("gpu-persistd wait", () => {
  it("exits 69 when no daemon answers within the timeout, saying so", () => {
    fixture.prepare();
    const result = bundle(["wait", "--timeout=1"]);
    expect(result.code).toBe(69);
    expect(result.stderr).toContain("gpu-persistd: no daemon ready within 1 s: the daemon is not running");
  });

  it("blocks until every selected GPU has settled, then exits 0; any user may ask", async () => {
    fixture.prepare({ attachDelayMs: 1500 });
    chmodSync(fixture.scratch.dir, 0o755);
    fixture.spawn(["--simulate=2"]);
    const result = bundle(["wait", "--timeout=20"], true);
    expect(result.code, result.output).toBe(0);
    expect(result.stdout).toBe("gpu-persistd is ready: 2 GPUs held\n");
    expect(statusJson(fixture.scratch.runtimeDir).ready).toBe(true);
  });

  it("exits 1 naming the GPUs that are not held", async () => {
    const d = fixture.start(["--simulate=3"], {
      faults: [{ call: "nvmlDeviceGetUUID", gpu: 1, return: 4 }],
    });
    await d.waitReady();
    const result = bundle(["wait"]);
    expect(result.code).toBe(1);
    // NVML could not tell GPU 1's PCI bus id.
    expect(result.stderr).toMatch(/not every GPU is held: GPU 1 +\(unidentified: NVML_ERROR_NO_PERMISSION/);
  });
});

describe("gpu-persistd release GPU... -- COMMAND", () => {
  it("releases, runs the command, holds again whatever it returns, and exits with its code", async () => {
    const d = fixture.start(["--simulate=2"]);
    await d.waitReady();
    const seen = join(fixture.scratch.dir, "seen.json");
    const result = bundle([
      "release",
      "0",
      "--",
      "sh",
      "-c",
      `"${process.execPath}" "${BUNDLE}" status --json --runtime-dir=${fixture.scratch.runtimeDir} > ${seen}; exit 3`,
    ]);
    expect(result.code, result.output).toBe(3);
    const during = JSON.parse(readFileSync(seen, "utf8")) as { devices: { state: string }[]; nvmlSession: boolean };
    expect(during.devices.map((g) => g.state)).toEqual(["released", "held"]);
    expect(during.nvmlSession).toBe(false);
    expect(statusJson(fixture.scratch.runtimeDir).devices.map((g) => g.state)).toEqual(["held", "held"]);
    // COMMAND as a shell would quote it, so that it can be pasted back.
    expect(result.stderr).toContain(
      `released GPU 0 00000000:06:00.0; running sh -c '"${process.execPath}" "${BUNDLE}"`,
    );
    expect(result.stderr).toContain("holding GPU 0 00000000:06:00.0 again");
  });

  it.each([
    ["a COMMAND that does not exist", "/nonexistent/cmd", 127, "/nonexistent/cmd: No such file or directory"],
    ["a COMMAND not on PATH", "no-such-command-here", 127, "no-such-command-here: command not found"],
    ["a COMMAND that is not executable", "SCRATCH/notes.txt", 126, "SCRATCH/notes.txt: Permission denied"],
  ])("%s (%s): exits %i with the shell's reason, and holds again", async (_case, command, code, reason) => {
    const d = fixture.start(["--simulate=1"]);
    await d.waitReady();
    const scratch = (text: string) => text.replace("SCRATCH", fixture.scratch.dir);
    writeFileSync(scratch("SCRATCH/notes.txt"), "not a program\n", { mode: 0o644 });
    const result = bundle(["release", "0", "--", scratch(command)]);
    expect(result.code, result.output).toBe(code);
    expect(result.stderr).toContain(`gpu-persistd: ${scratch(reason)}\n`);
    expect(result.stderr).toContain("holding GPU 0 00000000:06:00.0 again");
    expect(statusJson(fixture.scratch.runtimeDir).devices[0]?.state).toBe("held");
  });

  it("forwards SIGTERM to the command, holds again, and exits 128+15", async () => {
    const d = fixture.start(["--simulate=1"]);
    await d.waitReady();
    const cli = spawn(
      process.execPath,
      [BUNDLE, "release", "0", `--runtime-dir=${fixture.scratch.runtimeDir}`, "--", "sleep", "30"],
      { env: { ...process.env, ...fixture.env() }, stdio: ["ignore", "ignore", "pipe"] },
    );
    await until(() => statusJson(fixture.scratch.runtimeDir).devices[0]?.state === "released");
    cli.kill("SIGTERM");
    const code = await new Promise((r) => cli.on("exit", r));
    expect(code).toBe(143);
    expect(statusJson(fixture.scratch.runtimeDir).devices[0]?.state).toBe("held");
  });

  it("if the CLI itself is killed, the daemon holds the GPUs again by itself", async () => {
    const d = fixture.start(["--simulate=2"]);
    await d.waitReady();
    const cli = spawn(
      process.execPath,
      [BUNDLE, "release", "0", "1", `--runtime-dir=${fixture.scratch.runtimeDir}`, "--", "sleep", "30"],
      { env: { ...process.env, ...fixture.env() }, stdio: "ignore", detached: true },
    );
    await until(() => statusJson(fixture.scratch.runtimeDir).devices.every((g) => g.state === "released"));
    cli.kill("SIGKILL");
    await until(() => statusJson(fixture.scratch.runtimeDir).devices.every((g) => g.state === "held"));
    process.kill(-(cli.pid as number), "SIGKILL");
  });

  it("is refused with 77 for a user who is not root, and releases nothing", async () => {
    fixture.prepare();
    chmodSync(fixture.scratch.dir, 0o755);
    const d = fixture.spawn(["--simulate=1"]);
    await d.waitReady();
    const result = bundle(["release", "0", "--", "true"], true);
    expect(result.code).toBe(77);
    expect(result.stderr).toContain("only root may release GPUs");
    expect(statusJson(fixture.scratch.runtimeDir).devices[0]?.state).toBe("held");
  });
});
