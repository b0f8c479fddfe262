// The docs check: the configuration reference in docs/operations.md is the schema's, and
// every gpu-persistd command the README shows is one the command line accepts.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseCommandLine } from "../../src/cli/command-line.js";
import { USAGE } from "../../src/cli/help.js";
import { BEGIN, END, settingsReference } from "../../src/cli/settings-reference.js";
import { readmeCommands } from "../helpers/readme.js";

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

  it("docs/operations.md shows the usage lines --help prints", () => {
    const text = readFileSync(join(ROOT, "docs/operations.md"), "utf8");
    const block = /^## Usage\n\n```\n([\s\S]*?)\n```/m.exec(text)?.[1];
    expect(block?.split("\n")).toEqual([...USAGE]);
  });

  it("every gpu-persistd command in the README parses as the command line would take it", () => {
    const commands = readmeCommands();
    expect(commands.length).toBeGreaterThan(5);
    for (const argv of commands) {
      expect(() => parseCommandLine(argv), argv.join(" ")).not.toThrow();
    }
  });
});
