// Lays out an installed tree under DEST (default dist/stage): the bundle, the simulator,
// koffi's JavaScript and its glibc x86-64 native module, the systemd files. The .deb, the
// real-systemd tests and the GPU machine all use this one layout.
import { cpSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const dest = process.argv[2] ?? "dist/stage";
const lib = join(dest, "usr/lib/gpu-persistd");
// Only our own directory is replaced: DEST may be / on a real install.
rmSync(lib, { recursive: true, force: true });
mkdirSync(lib, { recursive: true });
// An installed command runs the system's node, whatever PATH holds (a service's PATH may
// reach an admin's /usr/local/bin/node of another version).
const bundle = readFileSync("dist/gpu-persistd.mjs", "utf8");
const shebang = bundle.slice(0, bundle.indexOf("\n"));
if (!shebang.includes(" node ")) throw new Error(`unexpected shebang in dist/gpu-persistd.mjs: ${shebang}`);
writeFileSync(
  join(lib, "gpu-persistd.mjs"),
  shebang.replace(" node ", " /usr/bin/node ") + bundle.slice(shebang.length),
  {
    mode: 0o755,
  },
);
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
mkdirSync(join(dest, "usr/bin"), { recursive: true });
rmSync(join(dest, "usr/bin/gpu-persistd"), { force: true });
symlinkSync("../lib/gpu-persistd/gpu-persistd.mjs", join(dest, "usr/bin/gpu-persistd"));
cpSync("systemd/gpu-persistd.service", join(dest, "usr/lib/systemd/system/gpu-persistd.service"));
cpSync("systemd/gpu-persistd.sysusers.conf", join(dest, "usr/lib/sysusers.d/gpu-persistd.conf"));
cpSync("dist/gpu-persistd.8", join(dest, "usr/share/man/man8/gpu-persistd.8"));
// Drop-ins an admin installs to allow what the hardened unit forbids by default.
for (const example of ["metrics-listen.conf", "metrics-textfile.conf"]) {
  cpSync(join("systemd", example), join(dest, "usr/share/doc/gpu-persistd/examples", example));
}
