// Metrics from a running daemon on simulated GPUs: the HTTP listener and the textfile carry
// per-GPU state, power and energy, the recovery action, Xid counters, health-check latency, bring-up time and RPC counts; each way
// the exporters can fail stops the start with the cause and the fix.
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { DaemonFixture, runBundle, type SimConfig, statusJson } from "../helpers/daemon.js";
import { rpcGet } from "../helpers/rpc.js";

const fixture = new DaemonFixture();
/** Health rounds (and textfile writes) every 50 ms. */
const FAST_HEALTH = { GPU_PERSISTD_HEALTH_INTERVAL_MS: "50" };
const start = (args: string[], sim: SimConfig = {}) => fixture.start(args, sim, FAST_HEALTH);

/** A free loopback port, found by binding port 0. */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** The value of the one sample whose line starts with `prefix`. */
function sample(text: string, prefix: string): number {
  const line = text.split("\n").find((l) => l.startsWith(prefix));
  if (!line) throw new Error(`no sample ${prefix} in:\n${text}`);
  return Number(line.slice(line.lastIndexOf(" ") + 1));
}

describe("metrics over HTTP", () => {
  it("reports GPUs, Xids, health latency, bring-up time and RPC requests by procedure and result", async () => {
    const port = await freePort();
    const d = start([`--simulate=2`, `--metrics-listen=127.0.0.1:${port}`], {
      events: [
        { gpu: 1, type: 8, data: 48, afterMs: 100 },
        { gpu: 1, type: 8, data: 48, afterMs: 120 },
        { gpu: 0, type: 8, data: 13, afterMs: 140 },
      ],
    });
    await d.waitReady();
    await d.waitFor("Xid 13");
    await rpcGet(join(fixture.scratch.runtimeDir, "socket"), 1);
    await rpcGet(join(fixture.scratch.runtimeDir, "socket"), 2, 6);
    await new Promise((r) => setTimeout(r, 200));
    const response = await fetch(`http://127.0.0.1:${port}/metrics`);
    expect(response.status).toBe(200);
    expect(response.headers.get("content-type")).toBe("text/plain; version=0.0.4; charset=utf-8");
    const text = await response.text();
    const gpu0 = 'gpu="0",uuid="GPU-9e3779b9-6ef3-4f37-86ef-c5e6902c0000",pci_bus_id="00000000:06:00.0"';
    expect(sample(text, `gpu_persistd_gpu_held{${gpu0}`)).toBe(1);
    expect(sample(text, `gpu_persistd_gpu_persistence_mode{${gpu0}`)).toBe(1);
    expect(sample(text, `gpu_persistd_gpu_lost{${gpu0}`)).toBe(0);
    expect(text).toMatch(/^gpu_persistd_xid_events_total\{gpu="1",.*,xid="48"\} 2$/m);
    expect(text).toMatch(/^gpu_persistd_xid_events_total\{gpu="0",.*,xid="13"\} 1$/m);
    expect(sample(text, 'gpu_persistd_rpc_requests_total{procedure="get_persistence_mode",result="ok"}')).toBe(2);
    expect(sample(text, "gpu_persistd_bring_up_duration_seconds")).toBeGreaterThan(0);
    expect(sample(text, "gpu_persistd_health_check_duration_seconds_count")).toBeGreaterThan(0);
    expect(sample(text, 'gpu_persistd_health_checks_total{result="passed"}')).toBeGreaterThan(0);
    expect(sample(text, 'gpu_persistd_health_checks_total{result="failed"}')).toBe(0);
    expect(sample(text, 'gpu_persistd_build_info{version="')).toBe(1);
    // What holding costs: the simulator's defaults (74.4 W, P0), read by the health rounds.
    expect(sample(text, `gpu_persistd_gpu_power_watts{${gpu0}`)).toBe(74.4);
    expect(sample(text, `gpu_persistd_gpu_performance_state{${gpu0}`)).toBe(0);
    expect(sample(text, `gpu_persistd_gpu_energy_joules_total{${gpu0}`)).toBeGreaterThanOrEqual(0);
    expect(sample(text, `gpu_persistd_gpu_initialisation_seconds{${gpu0}`)).toBe(0);
    expect(text).toMatch(/^gpu_persistd_gpu_recovery_action\{gpu="1",.*,action="none"\} 0$/m);

    expect((await fetch(`http://127.0.0.1:${port}/`)).status).toBe(404);
    expect((await fetch(`http://127.0.0.1:${port}/metrics`, { method: "POST" })).status).toBe(405);
  });

  it("counts refused and unknown RPC calls under their result", async () => {
    const port = await freePort();
    const d = start([`--simulate=1`, `--metrics-listen=127.0.0.1:${port}`]);
    await d.waitReady();
    // Bus 0x42 has no GPU: NVML clients get DEVICE_NOT_FOUND.
    await rpcGet(join(fixture.scratch.runtimeDir, "socket"), 3, 0x42).catch(() => {});
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(
      sample(text, 'gpu_persistd_rpc_requests_total{procedure="get_persistence_mode",result="device_not_found"}'),
    ).toBe(1);
  });

  it("fails the start with exit 78 when the port is taken, naming it", async () => {
    const busy = createServer();
    await new Promise<void>((resolve) => busy.listen(0, "127.0.0.1", resolve));
    const { port } = busy.address() as { port: number };
    try {
      const result = fixture.run(["--simulate=1", `--metrics-listen=127.0.0.1:${port}`]);
      expect(result.code).toBe(78);
      expect(result.output).toContain(`cannot serve metrics on 127.0.0.1:${port}: 127.0.0.1:${port} is in use`);
      // Nothing is left held or listening.
      expect(existsSync(fixture.scratch.runtimeDir)).toBe(false);
    } finally {
      busy.close();
    }
  });
});

describe("metrics textfile", () => {
  it("is written whole, world-readable, kept current, and says nothing is held after the stop", async () => {
    fixture.prepare();
    const path = join(fixture.scratch.dir, "gpu-persistd.prom");
    const d = fixture.spawn(["--simulate=2", `--metrics-textfile=${path}`], FAST_HEALTH);
    await d.waitReady();
    expect(statSync(path).mode & 0o777).toBe(0o644);
    const first = readFileSync(path, "utf8");
    expect(first.match(/^gpu_persistd_gpu_held\{.*\} 1$/gm)).toHaveLength(2);
    await new Promise((r) => setTimeout(r, 300));
    // Health rounds every 50 ms: a later file has counted some.
    expect(sample(readFileSync(path, "utf8"), "gpu_persistd_health_check_duration_seconds_count")).toBeGreaterThan(0);
    await d.stop("SIGTERM");
    expect(readFileSync(path, "utf8").match(/^gpu_persistd_gpu_held\{.*\} 0$/gm)).toHaveLength(2);
    expect(readdirSync(fixture.scratch.dir).filter((f) => f.startsWith(".gpu-persistd.prom."))).toEqual([]);
  });

  it("warns once when a later write fails, keeps the GPUs, and says when writing works again", async () => {
    fixture.prepare();
    const dir = join(fixture.scratch.dir, "textfile");
    mkdirSync(dir);
    const d = fixture.spawn(["--simulate=2", `--metrics-textfile=${dir}/gpu-persistd.prom`], FAST_HEALTH);
    await d.waitReady();
    rmSync(dir, { recursive: true });
    await d.waitFor(`metrics: cannot write ${dir}/gpu-persistd.prom`);
    await new Promise((r) => setTimeout(r, 200));
    expect(d.output.split(`metrics: cannot write ${dir}`).length - 1).toBe(1);
    expect(statusJson(fixture.scratch.runtimeDir).devices.every((g) => g.held)).toBe(true);
    mkdirSync(dir);
    await d.waitFor(`metrics: writing ${dir}/gpu-persistd.prom works again`);
    expect(existsSync(join(dir, "gpu-persistd.prom"))).toBe(true);
  });

  it("fails the start with exit 78 when the dropped user may not write the directory, naming the grant", () => {
    const scratch = fixture.prepare();
    // The dropped user must reach its runtime directory; the textfile directory stays root's 0755.
    chmodSync(scratch.dir, 0o755);
    const dir = join(scratch.dir, "textfile");
    mkdirSync(dir, { mode: 0o755 });
    const result = runBundle(
      [`--runtime-dir=${scratch.runtimeDir}`, "--simulate=1", "--user=nobody", `--metrics-textfile=${dir}/g.prom`],
      fixture.env(),
    );
    expect(result.code).toBe(78);
    expect(result.output).toContain(
      `cannot write metrics to ${dir}/g.prom: EACCES: the directory must be writable by nobody: chgrp nobody ${dir} && chmod g+w ${dir}`,
    );
  });

  it("fails the start with exit 78 when the directory is missing, saying what it should be", () => {
    const result = fixture.run(["--simulate=1", "--metrics-textfile=/nonexistent/dir/g.prom"]);
    expect(result.code).toBe(78);
    expect(result.output).toContain(
      "the directory /nonexistent/dir does not exist (node_exporter's textfile directory",
    );
  });
});
