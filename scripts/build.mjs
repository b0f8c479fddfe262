// Builds the daemon bundle and the simulated libnvidia-ml.
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import { build } from "esbuild";

mkdirSync("dist", { recursive: true });

const cc = process.env.CC ?? "cc";
// Every part of the simulator (native-bindings/sim/*.c), so a new part needs no edit here.
const simSources = readdirSync("native-bindings/sim")
  .filter((name) => name.endsWith(".c"))
  .sort()
  .map((name) => `native-bindings/sim/${name}`);
execFileSync(
  cc,
  [
    "-std=c11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-include",
    "native-bindings/sim/glibc-compat.h",
    "-o",
    "dist/libnvidia-ml-sim.so",
    ...simSources,
    "-lpthread",
  ],
  { stdio: "inherit" },
);

const nodeFlags = JSON.parse(readFileSync("src/node-flags.json", "utf8"));
const define = { GPU_PERSISTD_VERSION: JSON.stringify(JSON.parse(readFileSync("package.json", "utf8")).version) };

const bundle = await build({
  entryPoints: ["src/main.ts"],
  metafile: true,
  outfile: "dist/gpu-persistd.mjs",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node18",
  external: ["koffi"],
  define,
  // The libuv pool runs every blocking NVML call (koffi fn.async); the shebang sizes it for
  // the installed command (src/libuv-environment.ts re-executes when run as `node FILE`).
  banner: {
    js: [
      `#!/usr/bin/env -S ${Object.entries(nodeFlags.env)
        .map(([name, value]) => `${name}=${value}`)
        .join(" ")} node ${nodeFlags.v8.join(" ")}`,
      'import { createRequire as __gpdCreateRequire } from "node:module";',
      "const require = __gpdCreateRequire(import.meta.url);",
    ].join("\n"),
  },
  logLevel: "warning",
});
chmodSync("dist/gpu-persistd.mjs", 0o755);

// The npm packages inside the bundle, for the .deb's copyright file (scripts/package.mjs).
const bundled = new Map();
for (const input of Object.keys(bundle.metafile.inputs)) {
  const match = /^node_modules\/((?:@[^/]+\/)?[^/]+)\//.exec(input);
  if (!match || bundled.has(match[1])) continue;
  const { name, version, license } = JSON.parse(readFileSync(`node_modules/${match[1]}/package.json`, "utf8"));
  bundled.set(name, { name, version, license });
}
writeFileSync("dist/bundled-packages.json", `${JSON.stringify([...bundled.values()], null, 2)}\n`);

// gpu-persistd(8), generated from the option table that --help prints.
// Bundled to a temporary file, not a data: URL: the settings' schema pulls in CommonJS
// packages that need a real `require`.
const manModule = "dist/.man-page.mjs";
await build({
  entryPoints: ["src/cli/man-page.ts"],
  outfile: manModule,
  bundle: true,
  platform: "node",
  format: "esm",
  define,
  banner: { js: 'import { createRequire } from "node:module"; const require = createRequire(import.meta.url);' },
  logLevel: "warning",
});
const { manPage } = await import(pathToFileURL(manModule).href);
rmSync(manModule);
writeFileSync("dist/gpu-persistd.8", manPage());
