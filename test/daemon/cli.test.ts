// The bundle's own command line, run as an admin runs it.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { helpText } from "../../src/cli/help.js";
import { OPTIONS } from "../../src/cli/options.js";
import { ROOT, runBundle } from "../helpers/daemon.js";

describe("the bundle's command line", () => {
  it("prints help listing every option, exit 0", () => {
    const result = runBundle(["--help"]);
    expect(result.code).toBe(0);
    for (const option of OPTIONS) expect(result.stdout).toContain(`--${option.long}`);
    expect(result.stdout.split("\n").slice(6)).toEqual(helpText().split("\n").slice(6));
  });

  it("prints the version, exit 0", () => {
    const result = runBundle(["-v"]);
    expect(result.code).toBe(0);
    expect(result.stdout).toMatch(/^gpu-persistd version \d+\.\d+\.\d+\n/);
  });

  it("exits 64 on an unknown option, naming it on stderr", () => {
    const result = runBundle(["--frobnicate"]);
    expect(result.code).toBe(64);
    expect(result.stderr).toContain("unrecognized option '--frobnicate'");
  });

  it("exits 64 (bad usage) on a bad option value, naming the option, the value and what is allowed", () => {
    const result = runBundle(["--log-format=fancy"]);
    expect(result.code).toBe(64);
    expect(result.stderr).toContain("option '--log-format'");
    expect(runBundle(["--simulate=0"]).stderr).toContain("option '--simulate'");
    expect(result.stderr).toContain("fancy");
    expect(result.stderr).toContain("json");
  });
});

describe("the GPU-machine suites", () => {
  it("abort with the reason, exit 2, on a machine without the NVIDIA driver", () => {
    for (const suite of ["run.sh", "parity.sh", "footprint.sh"]) {
      const out = mkdtempSync(join(tmpdir(), "gpu-suite-"));
      const result = spawnSync("bash", [join(ROOT, "test/gpu", suite)], {
        env: { PATH: "/usr/bin:/bin", OUT: out },
        encoding: "utf8",
      });
      expect(result.status, suite).toBe(2);
      expect(result.stderr, suite).toContain("ABORT: no nvidia-smi here: this suite needs a GPU machine");
      rmSync(out, { recursive: true, force: true });
    }
  });
});

describe("scripts/stage.mjs (the npm route's install)", () => {
  it("writes a launcher for the Node that ran it, or the one --node names", () => {
    const dest = mkdtempSync(join(tmpdir(), "gpu-stage-"));
    const launcher = () => readFileSync(join(dest, "usr/bin/gpu-persistd"), "utf8");
    spawnSync(process.execPath, [join(ROOT, "scripts/stage.mjs"), dest], { cwd: ROOT });
    expect(launcher()).toContain(`exec ${realpathSync(process.execPath)} `);
    spawnSync(process.execPath, [join(ROOT, "scripts/stage.mjs"), dest, "--node=/opt/node22/bin/node"], { cwd: ROOT });
    expect(launcher()).toContain("exec /opt/node22/bin/node ");
    expect(readFileSync(join(dest, "usr/share/doc/gpu-persistd/operations.md"), "utf8")).toContain("operations guide");
    rmSync(dest, { recursive: true, force: true });
  });
});
