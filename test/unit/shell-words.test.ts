// COMMAND of `release GPU... -- COMMAND` as a shell shows and reports it.
import { execFileSync } from "node:child_process";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { cannotRun, shellCommandLine, shellQuote } from "../../src/commands/shell-words.js";

describe("shell quoting", () => {
  it("leaves plain words alone and single-quotes the rest", () => {
    expect(shellCommandLine(["nvidia-smi", "-r", "-i", "3"])).toBe("nvidia-smi -r -i 3");
    expect(shellCommandLine(["sh", "-c", "echo hi"])).toBe("sh -c 'echo hi'");
    expect(shellQuote("")).toBe("''");
    expect(shellQuote("it's")).toBe("'it'\\''s'");
  });

  it("gives back the same words when a shell reads the line", () => {
    const words = fc.array(fc.string({ unit: "grapheme-ascii" }), { minLength: 1, maxLength: 4 });
    fc.assert(
      fc.property(words, (argv) => {
        const out = execFileSync("sh", ["-c", `for w in ${shellCommandLine(argv)}; do printf '%s\\0' "$w"; done`]);
        expect(out.toString().split("\0").slice(0, -1)).toEqual(argv);
      }),
      { numRuns: 40 },
    );
  });
});

describe("a COMMAND that cannot be run", () => {
  it("exits as a shell would: 127 when it is not found, 126 when it cannot be executed", () => {
    const err = (code: string) => ({ code, message: `spawn x ${code}` });
    expect(cannotRun("/nonexistent/cmd", err("ENOENT"))).toEqual({
      exitCode: 127,
      reason: "No such file or directory",
    });
    expect(cannotRun("nvidia-smi", err("ENOENT"))).toEqual({ exitCode: 127, reason: "command not found" });
    expect(cannotRun("/etc/passwd", err("EACCES"))).toEqual({ exitCode: 126, reason: "Permission denied" });
    expect(cannotRun("/bin/x", err("ENOEXEC"))).toEqual({ exitCode: 126, reason: "Exec format error" });
    expect(cannotRun("/bin/x", err("E2BIG"))).toEqual({ exitCode: 126, reason: "spawn x E2BIG" });
  });
});
