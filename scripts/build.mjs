// Builds the daemon bundle and the simulated libnvidia-ml.
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { build } from "esbuild";

mkdirSync("dist", { recursive: true });

const cc = process.env.CC ?? "cc";
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
    "-o",
    "dist/libnvidia-ml-sim.so",
    "native-bindings/sim/nvml-sim.c",
    "native-bindings/sim/json.c",
    "-lpthread",
  ],
  { stdio: "inherit" },
);

const define = { GPU_PERSISTD_VERSION: JSON.stringify(JSON.parse(readFileSync("package.json", "utf8")).version) };

await build({
  entryPoints: ["src/main.ts"],
  outfile: "dist/gpu-persistd.mjs",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  external: ["koffi"],
  define,
  // The libuv pool runs every blocking NVML call (koffi fn.async); the shebang sizes it for
  // the installed command (src/thread-pool.ts re-executes when run as `node FILE`).
  banner: {
    js: [
      "#!/usr/bin/env -S UV_THREADPOOL_SIZE=128 node --max-semi-space-size=1",
      'import { createRequire as __gpdCreateRequire } from "node:module";',
      "const require = __gpdCreateRequire(import.meta.url);",
    ].join("\n"),
  },
  logLevel: "warning",
});
chmodSync("dist/gpu-persistd.mjs", 0o755);

// gpu-persistd(8), generated from the option table that --help prints.
const man = await build({
  entryPoints: ["src/cli/man-page.ts"],
  bundle: true,
  platform: "node",
  format: "esm",
  write: false,
  define,
  logLevel: "warning",
});
const { manPage } = await import(
  `data:text/javascript;base64,${Buffer.from(man.outputFiles[0].text).toString("base64")}`
);
writeFileSync("dist/gpu-persistd.8", manPage());
