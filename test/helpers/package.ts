// The .deb, built once per test file from the current dist/ (scripts/package.mjs).
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./daemon.js";

export const VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;

/** Builds the package; returns its file name in dist/. */
export function buildDeb(): string {
  execFileSync(process.execPath, ["scripts/package.mjs"], { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] });
  return `gpu-persistd_${VERSION}_amd64.deb`;
}
