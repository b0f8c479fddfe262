// Lays out an installed tree under DEST (default dist/stage): the bundle, the simulator,
// koffi's JavaScript and its glibc x86-64 native module, the systemd files. The .deb, the
// real-systemd tests and the GPU machine all use this one layout.
//
//   node scripts/stage.mjs [DEST] [--node=PATH]
//
// --node: the Node the launcher runs (default: the one running this script, so that
// `sudo "$(command -v node)" scripts/stage.mjs /` installs for the Node you built with, nvm's
// included, not an old /usr/bin/node); the .deb passes /usr/bin/node (Debian's nodejs).
import { execFileSync } from "node:child_process";
import { chmodSync, cpSync, mkdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const args = process.argv.slice(2);
const dest = args.find((a) => !a.startsWith("--")) ?? "dist/stage";
const node = args.find((a) => a.startsWith("--node="))?.slice(7) ?? realpathSync(process.execPath);
const MIN_NODE = [18, 19];
if (!args.some((a) => a.startsWith("--node="))) {
  const version = execFileSync(node, ["--version"], { encoding: "utf8" }).trim();
  const [major, minor] = version.slice(1).split(".").map(Number);
  if (major < MIN_NODE[0] || (major === MIN_NODE[0] && minor < MIN_NODE[1])) {
    console.error(
      `stage: ${node} is Node ${version}; gpu-persistd needs ${MIN_NODE.join(".")} or later: run this with a newer node`,
    );
    process.exit(1);
  }
}
const lib = join(dest, "usr/lib/gpu-persistd");
// Only our own directory is replaced: DEST may be / on a real install.
rmSync(lib, { recursive: true, force: true });
mkdirSync(lib, { recursive: true });
// The bundle without its shebang: /usr/bin/gpu-persistd (below) runs it.
const bundle = readFileSync("dist/gpu-persistd.mjs", "utf8");
if (!bundle.startsWith("#!")) throw new Error("dist/gpu-persistd.mjs has no shebang: run npm run build");
writeFileSync(join(lib, "gpu-persistd.mjs"), bundle.slice(bundle.indexOf("\n") + 1), { mode: 0o644 });
cpSync("dist/libnvidia-ml-sim.so", join(lib, "libnvidia-ml-sim.so"));
// koffi's loader and JavaScript; its C++ sources, vendored headers and docs are not needed.
for (const entry of ["package.json", "index.js", "index.cjs", "indirect.js", "indirect.cjs", "LICENSE.txt"]) {
  cpSync(join("node_modules/koffi", entry), join(lib, "node_modules/koffi", entry), { recursive: true });
}
for (const entry of [
  "index.cjs",
  "index.js",
  "indirect.cjs",
  "indirect.js",
  "src/static.js",
  "src/static.cjs",
  "src/trampolines.cjs",
]) {
  cpSync(join("node_modules/koffi/src/koffi", entry), join(lib, "node_modules/koffi/src/koffi", entry));
}
const native = "node_modules/@koromix/koffi-linux-x64";
for (const entry of ["package.json", "index.js", "linux_x64"]) {
  cpSync(join(native, entry), join(lib, native, entry), { recursive: true });
}
// Slurm's HealthCheckProgram takes no arguments: a script runs `health-check --slurm`.
cpSync("packaging/slurm/slurm-health-check", join(lib, "slurm-health-check"));
chmodSync(join(lib, "slurm-health-check"), 0o755);
mkdirSync(join(dest, "usr/bin"), { recursive: true });
rmSync(join(dest, "usr/bin/gpu-persistd"), { force: true });
writeFileSync(join(dest, "usr/bin/gpu-persistd"), launcher(), { mode: 0o755 });
cpSync("systemd/gpu-persistd.service", join(dest, "usr/lib/systemd/system/gpu-persistd.service"));
cpSync("systemd/gpu-persistd.socket", join(dest, "usr/lib/systemd/system/gpu-persistd.socket"));
cpSync("systemd/gpu-persistd.sysusers.conf", join(dest, "usr/lib/sysusers.d/gpu-persistd.conf"));
cpSync("systemd/71-gpu-persistd.rules", join(dest, "usr/lib/udev/rules.d/71-gpu-persistd.rules"));
cpSync("dist/gpu-persistd.8", join(dest, "usr/share/man/man8/gpu-persistd.8"));
// What an admin reads, where the unit's Documentation= points: the README and the operations
// guide (not the development guide).
cpSync("README.md", join(dest, "usr/share/doc/gpu-persistd/README.md"));
cpSync("docs/operations.md", join(dest, "usr/share/doc/gpu-persistd/operations.md"));
// Drop-ins an admin installs to allow what the hardened unit forbids by default.
for (const example of ["metrics-listen.conf", "metrics-textfile.conf"]) {
  cpSync(join("systemd", example), join(dest, "usr/share/doc/gpu-persistd/examples", example));
}
// Prometheus alert rules for the metrics above, to copy into Prometheus' rule_files.
cpSync(
  "packaging/prometheus/gpu-persistd.rules.yml",
  join(dest, "usr/share/doc/gpu-persistd/examples/gpu-persistd.rules.yml"),
);

/**
 * /usr/bin/gpu-persistd: the chosen Node, by its full path (a service's PATH may reach an
 * admin's /usr/local/bin/node of another version), with the libuv settings and V8 flags
 * of src/node-flags.json; a variable the admin set (a larger pool, say) is kept. The pool gets
 * one thread per GPU, counted as src/libuv-environment.ts counts them. exec keeps the PID, so
 * systemd's main PID is the daemon's.
 */
function launcher() {
  const { env, v8, threadpool } = JSON.parse(readFileSync("src/node-flags.json", "utf8"));
  return [
    "#!/bin/sh",
    "# gpu-persistd: runs the daemon's bundle with its Node (see gpu-persistd(8)).",
    ...Object.entries(env).map(([name, value]) => `export ${name}="\${${name}-${value}}"`),
    // biome-ignore lint/suspicious/noTemplateCurlyInString: shell parameter expansion
    'if [ -z "${UV_THREADPOOL_SIZE-}" ]; then',
    "  n=0",
    // The PCI devices the nvidia driver has bound: sysfs, since the unit's ProcSubset=pid hides /proc/driver/nvidia.
    '  for g in /sys/bus/pci/drivers/nvidia/*:*:*.*; do [ -e "$g" ] && n=$((n + 1)); done',
    // biome-ignore lint/suspicious/noTemplateCurlyInString: shell parameter expansion
    '  for a in "$@"; do case $a in --simulate=dgx-h100) n=8 ;; --simulate=[0-9]*) n=${a#--simulate=} ;; esac; done',
    `  [ "$n" -lt ${threadpool.min} ] && n=${threadpool.min}`,
    `  [ "$n" -gt ${threadpool.max} ] && n=${threadpool.max}`,
    "  export UV_THREADPOOL_SIZE=$n",
    "fi",
    `exec ${node} ${v8.join(" ")} /usr/lib/gpu-persistd/gpu-persistd.mjs "$@"`,
    "",
  ].join("\n");
}
