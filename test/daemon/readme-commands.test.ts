// Every gpu-persistd command the README shows, run against a daemon on simulated GPUs as an
// admin would type it (placeholders filled in): each must do what the README says it does.
import { describe, expect, it } from "vitest";
import { DaemonFixture, runBundle } from "../helpers/daemon.js";
import { readmeCommands } from "../helpers/readme.js";

const fixture = new DaemonFixture();

describe("the README's commands", () => {
  it("run against a daemon on a simulated DGX H100", async () => {
    const d = fixture.start(["--simulate=dgx-h100"]);
    await d.waitReady();
    // "gpu-persistd" alone (run the daemon) and option-only lines are the daemon, not a command.
    const commands = readmeCommands("3").filter((argv) => argv.length > 0 && !argv[0]?.startsWith("--"));
    expect(commands.length).toBeGreaterThan(5);
    for (const argv of commands) {
      const result = runBundle([`--runtime-dir=${fixture.scratch.runtimeDir}`, ...argv], fixture.env());
      // doctor examines this host, which has no NVIDIA driver: it reports (exit 1), it does not crash.
      const ok = argv[0] === "doctor" ? [0, 1] : [0];
      expect(ok, `gpu-persistd ${argv.join(" ")}\n${result.output}`).toContain(result.code);
    }
    // After release/hold and release -- COMMAND, every GPU is held again.
    const status = JSON.parse(
      runBundle(["status", "--json", `--runtime-dir=${fixture.scratch.runtimeDir}`], fixture.env()).stdout,
    );
    expect(status.devices.every((g: { held: boolean }) => g.held)).toBe(true);
  });
});
