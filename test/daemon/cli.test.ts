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
    expect(result.stdout).toMatch(/gpu-persistd: {2}version \d+\.\d+\.\d+/);
  });

  it("exits 64 on an unknown option, naming it on stderr", () => {
    const result = runBundle(["--frobnicate"]);
    expect(result.code).toBe(64);
    expect(result.stderr).toContain("unrecognized option '--frobnicate'");
  });

  it("exits 78 on a bad option value, naming the key, the value and what is allowed", () => {
    const result = runBundle(["--log-format=fancy"]);
    expect(result.code).toBe(78);
    expect(result.stderr).toContain("logFormat");
    expect(result.stderr).toContain("fancy");
    expect(result.stderr).toContain("json");
  });
});
