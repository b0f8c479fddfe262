// The docs check: the generated parts of docs/operations.md (configuration reference, metrics,
// alerts, the `status --json` example) match the code, and every gpu-persistd command the
// README shows is one the command line accepts. `npm run docs` rewrites what drifted.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import {
  ALERTS,
  alertsReference,
  keyPaths,
  METRICS,
  metricsReference,
  STATUS_JSON,
  section,
} from "../../scripts/docs-reference.js";
import { parseCommandLine } from "../../src/cli/command-line.js";
import { USAGE } from "../../src/cli/help.js";
import { BEGIN, END, settingsReference } from "../../src/cli/settings-reference.js";
import { daemonStatus } from "../../src/daemon/status-snapshot.js";
import { InProcessFixture } from "../helpers/in-process.js";
import { readmeCommands } from "../helpers/readme.js";

const fixture = new InProcessFixture();

const ROOT = join(import.meta.dirname, "../..");

/** Table cells, trimmed (the formatter pads the columns), row by row. */
function cells(text: string): string[][] {
  return text
    .split("\n")
    .filter((l) => l.startsWith("|") && !/^\|[\s|-]+\|$/.test(l))
    .map((l) =>
      l
        .split(/(?<!\\)\|/)
        .slice(1, -1)
        .map((c) => c.trim()),
    );
}

describe("docs", () => {
  it("docs/operations.md carries the schema's configuration reference (npm run docs rewrites it)", () => {
    const text = readFileSync(join(ROOT, "docs/operations.md"), "utf8");
    const shown = text.slice(text.indexOf(BEGIN), text.indexOf(END));
    expect(shown, "the settings markers are missing").not.toBe("");
    expect(cells(shown), "out of date: run npm run docs").toEqual(cells(settingsReference()));
  });

  it("docs/operations.md lists every metric family the daemon exports, with its type, labels and help", () => {
    const shown = section(readFileSync(join(ROOT, "docs/operations.md"), "utf8"), METRICS);
    expect(shown, "the metrics markers are missing").not.toBe("");
    expect(cells(shown), "out of date: run npm run docs").toEqual(cells(metricsReference()));
  });

  it("docs/operations.md lists every shipped alert as the rules file has it", () => {
    const shown = section(readFileSync(join(ROOT, "docs/operations.md"), "utf8"), ALERTS);
    expect(shown, "the alerts markers are missing").not.toBe("");
    expect(cells(shown), "out of date: run npm run docs").toEqual(cells(alertsReference()));
  });

  it("docs/operations.md's status --json example has every field a running daemon answers", async () => {
    const shown = section(readFileSync(join(ROOT, "docs/operations.md"), "utf8"), STATUS_JSON);
    const json = /```json\n([\s\S]*?)\n```/.exec(shown)?.[1];
    expect(json, "the status-json markers or the example are missing").toBeDefined();
    const d = fixture.daemon({ gpus: 2, faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 1, return: 4 }] });
    await d.daemon.run();
    const real = daemonStatus(d.context);
    expect(keyPaths(JSON.parse(json ?? "{}")).sort(), "out of date: run npm run docs").toEqual(keyPaths(real).sort());
  });

  it("docs/operations.md shows the usage lines --help prints", () => {
    const text = readFileSync(join(ROOT, "docs/operations.md"), "utf8");
    const block = /^## Usage\n\n```\n([\s\S]*?)\n```/m.exec(text)?.[1];
    expect(block?.split("\n")).toEqual([...USAGE]);
  });

  it("every test the fault matrix cites exists (test/<dir>/<file> › name)", () => {
    const text = readFileSync(join(ROOT, "docs/operations.md"), "utf8");
    const matrix = text.slice(text.indexOf("## Fault matrix"), text.indexOf("## Differences"));
    const rows = cells(matrix).slice(1);
    expect(rows.length).toBeGreaterThan(20);
    const missing: string[] = [];
    for (const cite of rows.flatMap((r) => (r.at(-1) ?? "").split("; "))) {
      const [, dir, file, names] = /^(\w+)\/([\w-]+) › (.+)$/.exec(cite) ?? [];
      const path = join(ROOT, `test/${dir}/${file}.test.ts`);
      if (!names || !existsSync(path)) {
        missing.push(cite);
        continue;
      }
      const source = readFileSync(path, "utf8");
      // Titles of it.each / describe.each carry printf placeholders ("bring-up of %i ...").
      const templates = [...source.matchAll(/"([^"]*%[isd][^"]*)"/g)].map(
        (m) => new RegExp((m[1] ?? "").replace(/[.*+?^${}()|[\]\\]/g, "\\$&").replace(/%[isd]/g, ".+")),
      );
      for (const name of names.split(" / ")) {
        if (!source.includes(name) && !templates.some((t) => t.test(name))) missing.push(cite);
      }
    }
    expect(missing, "cited in the fault matrix, but no such test").toEqual([]);
  });

  it("the README names every package npm test installs", () => {
    const script = readFileSync(join(ROOT, "test/run-all.sh"), "utf8");
    const needed = new Set([...script.matchAll(/^ {2}\[(?:cmd|file):[^\]]+\]=(\S+)$/gm)].map((m) => m[1]));
    expect(needed.size).toBeGreaterThan(5);
    const readme = readFileSync(join(ROOT, "README.md"), "utf8").replaceAll("\n", " ");
    const listed = /what the suites use and the host lacks: `([^`]+)`/.exec(readme)?.[1]?.split(/\s+/) ?? [];
    expect(listed.sort()).toEqual([...needed].sort());
  });

  it("the README stays a front page: at most 200 lines", () => {
    expect(readFileSync(join(ROOT, "README.md"), "utf8").split("\n").length).toBeLessThanOrEqual(200);
  });

  it("every gpu-persistd command in the README parses as the command line would take it", () => {
    const commands = readmeCommands();
    expect(commands.length).toBeGreaterThan(5);
    for (const argv of commands) {
      expect(() => parseCommandLine(argv), argv.join(" ")).not.toThrow();
    }
  });
});
