// Every gpu-persistd command the README shows, run against a daemon on simulated GPUs as an
// admin would type it (placeholders filled in): each must do what the README says it does.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DaemonFixture, ROOT, runBundle } from "../helpers/daemon.js";

const fixture = new DaemonFixture();

/** The README's commands: lines of ```sh blocks, and "$ " lines of example sessions. */
function readmeCommands(): string[] {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  const commands: string[] = [];
  for (const [, lang, body] of readme.matchAll(/^```([a-z]*)\n([\s\S]*?)^```/gm)) {
    for (const line of (body ?? "").split("\n")) {
      const m = (
        lang === "sh" ? /^(?:\$ )?(?:sudo )?gpu-persistd( [^#]*)?/ : /^\$ (?:sudo )?gpu-persistd( [^#]*)?/
      ).exec(line);
      if (m) commands.push((m[1] ?? "").trim());
    }
  }
  return commands;
}

describe("the README's commands", () => {
  it("run against a daemon on a simulated DGX H100", async () => {
    const d = fixture.start(["--simulate=dgx-h100"]);
    await d.waitReady();
    const commands = readmeCommands().filter((c) => c !== "" && !c.startsWith("--"));
    expect(commands.length).toBeGreaterThan(5);
    for (const command of commands) {
      const argv = command
        .replaceAll("GPU...", "3")
        .replaceAll("[--timeout=SECONDS]", "--timeout=5")
        .replaceAll("[--json]", "--json")
        .replace(/-- COMMAND$/, "-- true")
        .replace(/-- nvidia-smi .*$/, "-- true")
        .split(/\s+/)
        .filter(Boolean);
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
