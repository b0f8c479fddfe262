// Builds, with dpkg-deb alone (no debhelper), from one build, for Debian 12 and 13 each
// (dist/debian-12/, dist/debian-13/):
// - gpu-persistd_<version>_amd64.deb: the installed tree of scripts/stage.mjs, the man page
//   and docs compressed as Debian wants, the default config as a conffile, and the
//   maintainer scripts of packaging/deb/;
// - gpu-persistd-simulator_<version>_amd64.deb: the simulated libnvidia-ml behind
//   --simulate, kept out of the production package.
// Run after `npm run build` (npm run package does both).

import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  cpSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join, relative } from "node:path";
import { gzipSync } from "node:zlib";

for (const [tool, pkg] of [
  ["dpkg-deb", "dpkg"],
  ["strip", "binutils"],
]) {
  try {
    execFileSync(tool, ["--version"], { stdio: "ignore" });
  } catch {
    console.error(`npm run package needs ${tool}: apt-get install -y --no-install-recommends ${pkg}`);
    process.exit(1);
  }
}

const { version } = JSON.parse(readFileSync("package.json", "utf8"));
const changelog = readFileSync("packaging/deb/changelog", "utf8");
if (!changelog.startsWith(`gpu-persistd (${version})`)) {
  throw new Error(`packaging/deb/changelog does not start with version ${version} of package.json: add an entry`);
}

const released = /^ -- .*> {2}(.+)$/m.exec(changelog)?.[1];
// Reproducible: dpkg-deb clamps every time stamp to SOURCE_DATE_EPOCH, by default the date of
// this version's changelog entry, so the same sources give the same bytes.
const epoch = process.env.SOURCE_DATE_EPOCH ?? String(Math.floor(Date.parse(released ?? "") / 1000));
if (!/^\d+$/.test(epoch)) throw new Error("packaging/deb/changelog's first entry has no readable date line");

/**
 * One package set per Debian release, the same files but where each release's tools want
 * them: Debian 12 keeps units and udev rules in /lib (its lintian warns of
 * systemd-service-file-outside-lib otherwise), Debian 13 in /usr/lib (its lintian errs on
 * aliased-location otherwise; debhelper there installs them so).
 */
const SUITES = [
  { dir: "dist/debian-12", lib: "lib" },
  { dir: "dist/debian-13", lib: "usr/lib" },
];
for (const suite of SUITES) buildSuite(suite);

function buildSuite({ dir, lib }) {
  rmSync(dir, { recursive: true, force: true });
  const root = join(dir, "tree");
  // Debian's nodejs, which the package depends on.
  execFileSync(process.execPath, ["scripts/stage.mjs", root, "--node=/usr/bin/node"], { stdio: "inherit" });
  if (lib !== "usr/lib") {
    for (const sub of ["systemd/system", "udev/rules.d"]) {
      mkdirSync(join(root, lib, sub.split("/")[0]), { recursive: true });
      cpSync(join(root, "usr/lib", sub), join(root, lib, sub), { recursive: true });
      rmSync(join(root, "usr/lib", sub.split("/")[0]), { recursive: true });
    }
  }

  // The simulator goes to its own package.
  const simRoot = join(dir, "tree-simulator");
  const simLib = join(simRoot, "usr/lib/gpu-persistd");
  mkdirSync(simLib, { recursive: true });
  cpSync(join(root, "usr/lib/gpu-persistd/libnvidia-ml-sim.so"), join(simLib, "libnvidia-ml-sim.so"));
  rmSync(join(root, "usr/lib/gpu-persistd/libnvidia-ml-sim.so"));
  execFileSync("strip", ["--strip-unneeded", join(simLib, "libnvidia-ml-sim.so")]);
  // Its documentation is gpu-persistd's, which it depends on at this very version.
  mkdirSync(join(simRoot, "usr/share/doc"), { recursive: true });
  symlinkSync("gpu-persistd", join(simRoot, "usr/share/doc/gpu-persistd-simulator"));

  const man = join(root, "usr/share/man/man8/gpu-persistd.8");
  gzipTo(`${man}.gz`, readFileSync(man));
  rmSync(man);
  const doc = join(root, "usr/share/doc/gpu-persistd");
  mkdirSync(doc, { recursive: true });
  gzipTo(join(doc, "changelog.gz"), changelog);
  writeFileSync(join(doc, "copyright"), copyright());
  mkdirSync(join(root, "etc/gpu-persistd"), { recursive: true });
  cpSync("packaging/deb/config.json", join(root, "etc/gpu-persistd/config.json"));

  debPackage(root, dir, "gpu-persistd", readFileSync("packaging/deb/control.in", "utf8"), true);
  debPackage(simRoot, dir, "gpu-persistd-simulator", readFileSync("packaging/deb/control-simulator.in", "utf8"), false);
}

/** gzip -9n: no name, no time stamp, so the same input gives the same bytes. */
function gzipTo(path, data) {
  writeFileSync(path, gzipSync(data, { level: 9 }));
}

/** DEBIAN/ (control, md5sums; for the daemon also conffiles and scripts), then dpkg-deb. */
function debPackage(tree, outDir, name, controlTemplate, withScripts) {
  // Modes set explicitly: the build's umask must not leak into the package.
  for (const path of walk(tree)) {
    const executable = statSync(path).mode & 0o111 && !path.endsWith(".json") && !path.endsWith(".md");
    chmodSync(path, statSync(path).isDirectory() || executable ? 0o755 : 0o644);
  }
  const control = join(tree, "DEBIAN");
  mkdirSync(control);
  const installedKiB = walk(tree)
    .filter((p) => !statSync(p).isDirectory())
    .reduce((sum, p) => sum + Math.ceil(statSync(p).size / 1024), 0);
  writeFileSync(
    join(control, "control"),
    controlTemplate.replaceAll("@VERSION@", version).replace("@INSTALLED_SIZE@", String(installedKiB)),
  );
  const conffiles = new Set();
  if (withScripts) {
    cpSync("packaging/deb/conffiles", join(control, "conffiles"));
    for (const line of readFileSync("packaging/deb/conffiles", "utf8").trim().split("\n")) conffiles.add(line);
    for (const script of ["postinst", "prerm", "postrm"]) {
      cpSync(join("packaging/deb", script), join(control, script));
      chmodSync(join(control, script), 0o755);
    }
  }
  const sums = walk(tree)
    .filter((p) => !p.startsWith(control) && !statSync(p).isDirectory() && !conffiles.has(`/${relative(tree, p)}`))
    .map((p) => `${createHash("md5").update(readFileSync(p)).digest("hex")}  ${relative(tree, p)}`);
  writeFileSync(join(control, "md5sums"), `${sums.join("\n")}\n`);
  chmodSync(join(control, "md5sums"), 0o644);
  const deb = `${outDir}/${name}_${version}_amd64.deb`;
  execFileSync("dpkg-deb", ["--root-owner-group", "-Zxz", "--build", tree, deb], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, SOURCE_DATE_EPOCH: epoch },
  });
  console.log(`${deb}: ${(statSync(deb).size / 1024).toFixed(0)} KiB, ${installedKiB} KiB installed`);
}

/** Every path under dir, depth first, symlinks not followed. */
function walk(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isSymbolicLink()) return [];
    return entry.isDirectory() ? [path, ...walk(path)] : [path];
  });
}

/** debian/copyright (DEP-5): ours, koffi, and every npm package esbuild put into the bundle. */
function copyright() {
  const bundled = JSON.parse(readFileSync("dist/bundled-packages.json", "utf8"));
  const mit = readFileSync("LICENSE", "utf8").split("\n").slice(2).join("\n").trim();
  const indent = (text) =>
    text
      .split("\n")
      .map((line) => (line.trim() === "" ? " ." : ` ${line}`))
      .join("\n");
  const licenses = new Set(bundled.map((p) => p.license));
  for (const license of licenses) {
    if (!["MIT", "ISC", "Apache-2.0"].includes(license)) throw new Error(`no copyright text for license ${license}`);
  }
  return [
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/",
    "Upstream-Name: gpu-persistd",
    "",
    "Files: *",
    "Copyright: 2026 gpu-persistd developers",
    "License: MIT",
    "",
    "Files: usr/lib/gpu-persistd/node_modules/*",
    "Copyright: 2026 Niels Martignène <niels.martignene@protonmail.com>",
    "License: MIT",
    "Comment: koffi, its JavaScript loader and its glibc x86-64 native module.",
    "",
    "Files: usr/lib/gpu-persistd/gpu-persistd.mjs",
    "Copyright: 2026 gpu-persistd developers, and the authors of the npm packages it bundles",
    `License: MIT and ${[...licenses].filter((l) => l !== "MIT").join(" and ")}`,
    "Comment: esbuild bundles these npm packages into the file (name, version, license):",
    ...bundled.map((p) => ` ${p.name} ${p.version} ${p.license}`),
    "",
    "License: MIT",
    indent(mit),
    "",
    "License: ISC",
    indent(
      'Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee is hereby granted, provided that the above copyright notice and this permission notice appear in all copies.\n\nTHE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.',
    ),
    "",
    "License: Apache-2.0",
    " On Debian systems the full text is in /usr/share/common-licenses/Apache-2.0.",
    "",
  ].join("\n");
}
