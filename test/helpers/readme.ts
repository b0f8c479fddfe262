// The gpu-persistd commands the README shows, for the tests that keep them true.
import { readFileSync } from "node:fs";
import { join } from "node:path";

const README = join(import.meta.dirname, "../../README.md");

/**
 * Each command's arguments, placeholders filled in as an admin would (GPU... as GPU `gpu`):
 * lines of ```sh blocks, and "$ " lines of example sessions (not their output).
 */
export function readmeCommands(gpu = "0"): string[][] {
  const readme = readFileSync(README, "utf8");
  const commands: string[][] = [];
  for (const [, lang, body] of readme.matchAll(/^```([a-z]*)\n([\s\S]*?)^```/gm)) {
    for (const line of (body ?? "").split("\n")) {
      const prompt = lang === "sh" ? /^(?:\$ )?(?:sudo )?gpu-persistd( [^#]*)?/ : /^\$ (?:sudo )?gpu-persistd( [^#]*)?/;
      const m = prompt.exec(line);
      if (!m) continue;
      const argv = (m[1] ?? "")
        .trim()
        .replaceAll("GPU...", gpu)
        .replaceAll("[--timeout=SECONDS]", "--timeout=5")
        .replaceAll("[--json]", "--json")
        .replace(/-- (COMMAND|nvidia-smi .*)$/, "-- true")
        .split(/\s+/)
        .filter(Boolean);
      commands.push(argv);
    }
  }
  return commands;
}
