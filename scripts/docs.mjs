// npm run docs: regenerates the configuration reference in docs/operations.md from the schema.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { build } from "esbuild";

const out = "dist/settings-reference.mjs";
await build({
  entryPoints: ["src/cli/settings-reference.ts"],
  bundle: true,
  platform: "node",
  format: "esm",
  outfile: out,
  external: ["koffi"],
  logLevel: "warning",
  banner: { js: 'import { createRequire } from "node:module"; const require = createRequire(import.meta.url);' },
});
const { withSettingsReference } = await import(`../${out}`);
const path = "docs/operations.md";
writeFileSync(path, withSettingsReference(readFileSync(path, "utf8")));
// Biome formats Markdown too: pad the generated table as `biome check` expects it.
execFileSync("node_modules/.bin/biome", ["format", "--write", path], { stdio: "ignore" });
console.log(`docs: ${path} has the current configuration reference`);
