// The bundle's own command line, run as an admin runs it.
import { describe, expect, it } from "vitest";
import { helpText } from "../../src/cli/help.js";
import { OPTIONS } from "../../src/cli/options.js";
import { runBundle } from "../helpers/daemon.js";

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
