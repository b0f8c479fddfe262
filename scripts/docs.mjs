// npm run docs: regenerates the parts of docs/operations.md that come from the code: the
// configuration reference (the schema), the metrics table (the families the daemon renders),
// the alert table (the shipped rules) and the `status --json` example (a simulated run).
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { build } from "esbuild";

const out = "dist/docs-reference.mjs";
await build({
  entryPoints: { "settings-reference": "src/cli/settings-reference.ts", "docs-reference": "scripts/docs-reference.ts" },
  bundle: true,
  platform: "node",
  format: "esm",
  outdir: "dist",
  outExtension: { ".js": ".mjs" },
  external: ["koffi"],
  logLevel: "warning",
  banner: { js: 'import { createRequire } from "node:module"; const require = createRequire(import.meta.url);' },
});
const { withSettingsReference } = await import("../dist/settings-reference.mjs");
const ref = await import(`../${out}`);

/** `status --json` of the bundle on a simulated DGX H100 whose GPU 1 has an admin's legacy flag on. */
async function simulatedStatus() {
  const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-docs-"));
  const env = {
    PATH: process.env.PATH,
    GPU_PERSISTD_CONFIG: join(dir, "config.json"),
    GPU_PERSISTD_SIM_CONFIG: join(dir, "sim.json"),
  };
  writeFileSync(env.GPU_PERSISTD_CONFIG, "{}");
  writeFileSync(
    env.GPU_PERSISTD_SIM_CONFIG,
    JSON.stringify({ gpus: [{}, { persistence: 1 }, {}, {}, {}, {}, {}, {}] }),
  );
  const runtime = `--runtime-dir=${join(dir, "run")}`;
  const daemon = spawn(process.execPath, ["dist/gpu-persistd.mjs", "--simulate=dgx-h100", runtime], {
    env,
    stdio: "ignore",
  });
  try {
    // `wait` exits 1 here (GPU 1 is not held): what counts is that the daemon is ready.
    spawnSync(process.execPath, ["dist/gpu-persistd.mjs", "wait", "--timeout=30", runtime], { env, stdio: "ignore" });
    return JSON.parse(
      execFileSync(process.execPath, ["dist/gpu-persistd.mjs", "status", "--json", runtime], { env, encoding: "utf8" }),
    );
  } finally {
    daemon.kill("SIGTERM");
    await new Promise((r) => daemon.on("exit", r));
    rmSync(dir, { recursive: true, force: true });
  }
}

const path = "docs/operations.md";
let text = withSettingsReference(readFileSync(path, "utf8"));
text = ref.withSection(text, ref.METRICS, ref.metricsReference());
text = ref.withSection(text, ref.ALERTS, ref.alertsReference());
text = ref.withSection(text, ref.STATUS_JSON, ref.statusExample(await simulatedStatus(), 1));
writeFileSync(path, text);
// Biome formats Markdown too: pad the generated tables as `biome check` expects them.
execFileSync("node_modules/.bin/biome", ["format", "--write", path], { stdio: "ignore" });
console.log(`docs: ${path} has the current configuration reference, metrics, alerts and status example`);
