// Issue 28's outer layer, with the shipped defaults and the built bundle: a reload whose
// devices name a GPU that is not there is refused (every GPU stays held, `wait` and `status`
// tell the truth), and `health-check --slurm` judges from the daemon's record alone: a
// deliberate setting never drains the node, a GPU missing from the selection always does.
// sinfo and scontrol are stand-ins on PATH that record what they were asked.
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DaemonFixture, runBundle, statusJson } from "../helpers/daemon.js";

const fixture = new DaemonFixture();

/** Runs a client command against this test's daemon, with Slurm's stand-ins first on PATH. */
function client(args: string[]) {
  const bin = join(fixture.scratch.dir, "bin");
  return runBundle([`--runtime-dir=${fixture.scratch.runtimeDir}`, ...args], {
    PATH: `${bin}:${process.env.PATH}`,
    SLURMD_NODENAME: "node1",
  });
}

/** sinfo reports node1 up; scontrol appends its arguments to a file. Returns that file. */
function fakeSlurm(): string {
  const bin = join(fixture.scratch.dir, "bin");
  const calls = join(fixture.scratch.dir, "scontrol-calls");
  mkdirSync(bin, { recursive: true });
  writeFileSync(join(bin, "sinfo"), "#!/bin/sh\necho 'idle none'\n");
  writeFileSync(join(bin, "scontrol"), `#!/bin/sh\necho "$*" >> '${calls}'\n`);
  chmodSync(join(bin, "sinfo"), 0o755);
  chmodSync(join(bin, "scontrol"), 0o755);
  return calls;
}

describe("a reload is all or nothing (shipped defaults)", () => {
  it('{"devices":["9"]} on 4 GPUs: refused like start-up, every GPU stays held, wait and status say so', async () => {
    fixture.prepare();
    const config = join(fixture.scratch.dir, "config.json");
    writeFileSync(config, "{}");
    const daemon = fixture.spawn(["--simulate=4", `--config=${config}`]);
    await daemon.waitReady();
    writeFileSync(config, JSON.stringify({ devices: ["9"] }));
    daemon.child.kill("SIGHUP");
    await daemon.waitFor("reload refused, keeping the running configuration");
    expect(daemon.output).toContain("--devices names '9', but no GPU has that index (4 GPUs found)");
    expect(daemon.output).not.toContain("released the GPU (no longer selected)");
    const status = statusJson(fixture.scratch.runtimeDir);
    expect(status.devices.map((g) => g.held)).toEqual([true, true, true, true]);
    expect(status.lastReload?.refused).toContain("To fix: check --devices (config devices) against 'nvidia-smi -L'");
    const wait = client(["wait", "--timeout=5"]);
    expect(wait.code, wait.output).toBe(0);
    expect(wait.stdout).toBe("gpu-persistd is ready: 4 GPUs held\n");
    const text = client(["status"]);
    expect(text.stdout).toContain("last reload refused (");
  });
});

describe("health-check --slurm and wait judge from the daemon's record alone", () => {
  it("persistence mode off (a deliberate setting): healthy, the node is not drained, wait answers 0", async () => {
    fixture.prepare();
    const calls = fakeSlurm();
    const daemon = fixture.spawn(["--simulate=2", "--no-persistence-mode"]);
    await daemon.waitReady();
    const check = client(["health-check", "--slurm"]);
    expect(check.code, check.output).toBe(0);
    expect(check.stdout).toBe(
      "gpu-persistd: 0/0 GPUs held (persistence mode off, as configured) (node1: the node is up)\n",
    );
    expect(existsSync(calls)).toBe(false);
    const wait = client(["wait", "--timeout=5"]);
    expect(wait.code, wait.output).toBe(0);
    expect(wait.stdout).toBe("gpu-persistd is ready: 0 GPUs held (persistence mode off, as configured)\n");
  });

  it("--devices=0,9 with no GPU 9: the check drains the node, though its own configuration names no devices; wait answers 1", async () => {
    fixture.prepare();
    const calls = fakeSlurm();
    const daemon = fixture.spawn(["--simulate=2", "--devices=0,9"]);
    await daemon.waitReady();
    const check = client(["health-check", "--slurm"]);
    expect(check.code, check.output).toBe(1);
    expect(check.stdout).toBe("gpu-persistd: GPU 9 missing: NVML reports no such GPU (drained node1)\n");
    expect(readFileSync(calls, "utf8")).toBe(
      "update nodename=node1 state=drain reason=gpu-persistd: GPU 9 missing: NVML reports no such GPU\n",
    );
    const wait = client(["wait", "--timeout=5"]);
    expect(wait.code, wait.output).toBe(1);
    expect(wait.stderr).toContain("not every GPU is held: GPU 9 missing: NVML reports no such GPU");
  });
});

describe("a hold refused for a lost GPU", () => {
  it("hold after Xid 79: the CLI says the GPU is lost and how to recover it, and so does the journal", async () => {
    // Rounds every 100 ms: the Xid is drained by the first one, not 15 s later.
    const daemon = fixture.start(
      ["--simulate=2"],
      // After bring-up: the simulator's GPU falls off the bus when its Xid 79 is due.
      { events: [{ gpu: 1, type: 8, data: 79, afterMs: 300 }] },
      { GPU_PERSISTD_HEALTH_INTERVAL_MS: "100" },
    );
    await daemon.waitReady();
    await daemon.waitFor("Xid 79: GPU has fallen off the bus");
    const hold = client(["hold", "1"]);
    expect(hold.code, hold.output).toBe(1);
    // The cause is whichever a round saw first: the Xid drained, or an NVML call on the GPU
    // that failed with GPU_IS_LOST when the GPU fell off between the drain and the call.
    const cause = "(Xid 79: GPU has fallen off the bus|NVML_ERROR_GPU_IS_LOST: GPU is lost \\(\\w+\\))";
    expect(hold.stderr).toMatch(
      new RegExp(
        `GPU 1 00000000:07:00\\.0: the daemon answered DRIVER: it is lost \\(${cause}\\); to recover it: reset the GPU`,
      ),
    );
    await daemon.waitFor("RPC: cannot hold the GPU: it is lost (");
  });
});
