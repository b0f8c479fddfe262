// Lays out an installed tree under DEST (default dist/stage): the bundle, the simulator,
// koffi's JavaScript and its glibc x86-64 native module, the systemd files. The .deb, the
// real-systemd tests and the GPU machine all use this one layout.
import { cpSync, mkdirSync, rmSync, symlinkSync } from "node:fs";
import { join } from "node:path";

const dest = process.argv[2] ?? "dist/stage";
const lib = join(dest, "usr/lib/gpu-persistd");
// Only our own directory is replaced: DEST may be / on a real install.
rmSync(lib, { recursive: true, force: true });
mkdirSync(lib, { recursive: true });
cpSync("dist/gpu-persistd.mjs", join(lib, "gpu-persistd.mjs"));
cpSync("dist/libnvidia-ml-sim.so", join(lib, "libnvidia-ml-sim.so"));
// koffi's loader and JavaScript; its C++ sources, vendored headers and docs are not needed.
for (const entry of ["package.json", "index.js", "index.cjs", "indirect.js", "indirect.cjs", "LICENSE.txt", "lib"]) {
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
