// GPUs held across `systemctl soft-reboot`, under real systemd 257 (Debian 13) in
// systemd-nspawn, with the unit and socket unit as shipped (enabled) and 8 simulated GPUs.
// A soft reboot ends every process in the container, so the holder watcher runs on the host:
// it samples every process's fds every few milliseconds (the container's PID 1 and daemon
// included) and counts the samples in which some GPU's node was held by nobody. Across the
// soft reboot: no such sample, a released GPU stays released (the state record), and the
// next boot's daemon says it adopted the rest. Then a restart keeps every GPU, and a plain
// `systemctl stop` lets every GPU go, PID 1's store included.
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, readlinkSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../helpers/daemon.js";
import {
  bootWithDaemon,
  type Container,
  type HolderWatch,
  nspawnUnavailable,
  stageInstall,
  trixieRootfs,
  until,
} from "../helpers/nspawn.js";

const GPUS = 8;
const SIM_CONFIG = "/etc/gpu-persistd/sim.json";
const RUN = "/run/nvidia-persistenced";
const NODES = Array.from({ length: GPUS }, (_, i) => `${RUN}/sim-dev/nvidia${i}`);
const unavailable = nspawnUnavailable();

/**
 * test/helpers/holder-watcher.mjs on the host, on the container's nodes as the host sees
 * them (through PID 1's root), looking at the container's processes only: it outlives them. The returned function
 * stops it and resolves, per node (by its path inside), the samples in which nobody held it.
 */
async function watchFromHost(c: Container, nodes: readonly string[]): Promise<() => Promise<HolderWatch>> {
  const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-watch-"));
  const out = join(dir, "watch.json");
  const outside = (node: string) => `/proc/${c.pid1}/root${node}`;
  const child: ChildProcess = spawn(
    process.execPath,
    [
      join(ROOT, "test/helpers/holder-watcher.mjs"),
      nodes.map(outside).join(","),
      out,
      readlinkSync(`/proc/${c.pid1}/ns/pid`),
    ],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout?.on("data", (d: Buffer) => d.toString().includes("watching") && resolve());
    child.on("exit", (code) => reject(new Error(`the holder watcher exited (${code})`)));
  });
  return async () => {
    const exited = new Promise((r) => child.once("exit", r));
    child.kill("SIGTERM");
    await exited;
    const raw = JSON.parse(readFileSync(out, "utf8")) as HolderWatch;
    rmSync(dir, { recursive: true, force: true });
    const inside = (path: string) => path.slice(`/proc/${c.pid1}/root`.length);
    return {
      ...raw,
      gaps: Object.fromEntries(Object.entries(raw.gaps).map(([n, gaps]) => [inside(n), gaps])),
    };
  };
}

describe("held across a soft reboot, Debian 13 (systemd 257)", () => {
  let stage = "";
  let c: Container;

  const dropIn = (extra: string[] = []) => c.simulateDropIn(GPUS, SIM_CONFIG, { extra });
  const prop = (name: string, unit = "gpu-persistd") => c.unitProperty(unit, name);
  const holders = (node: string) => c.fdsOn(node).length;
  async function expectHolders(expected: number, nodes: readonly string[] = NODES, ms = 5000): Promise<void> {
    const deadline = Date.now() + ms;
    while (nodes.some((n) => holders(n) !== expected) && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    expect(nodes.map(holders)).toEqual(nodes.map(() => expected));
  }
  const states = () =>
    (JSON.parse(c.check("gpu-persistd status --json")) as { devices: { state: string }[] }).devices.map((g) => g.state);
  const journal = () => c.check("journalctl -u gpu-persistd --no-pager -o cat");
  const count = (text: string, line: string) => text.split("\n").filter((l) => l === line).length;

  beforeAll(async () => {
    if (unavailable) throw new Error(`cannot run the real-systemd suite: ${unavailable}`);
    stage = stageInstall();
    c = await bootWithDaemon(stage, trixieRootfs());
    dropIn();
    c.writeFile(SIM_CONFIG, "{}");
    // The harness binds the host's node and the installed tree in; on a host they are files of
    // the root file system, which a soft reboot leaves in place. Their mount units must not be
    // stopped at the transition (umount.target) either, or the next boot finds no node.
    c.check(
      'for m in /usr/bin/node /usr/lib/gpu-persistd; do d="/etc/systemd/system/$(systemd-escape -p --suffix=mount $m).d"; ' +
        'mkdir -p "$d" && printf "[Unit]\\nDefaultDependencies=no\\n" >"$d/keep.conf"; done',
    );
    // Enabled, as the package leaves it: a unit nothing references is unloaded, store and all.
    c.check("systemctl daemon-reload && systemctl enable --now gpu-persistd.socket gpu-persistd.service");
  }, 180_000);

  afterAll(async () => {
    await c?.poweroff();
    if (stage) rmSync(stage, { recursive: true, force: true });
  });

  it("the unit keeps its fd store past a stop, and systemd-analyze verify passes", () => {
    expect(prop("FileDescriptorStorePreserve")).toBe("yes");
    const verify = c.run(
      "systemd-analyze verify /usr/lib/systemd/system/gpu-persistd.service /usr/lib/systemd/system/gpu-persistd.socket",
    );
    expect(verify.stderr).toBe("");
    expect(verify.code).toBe(0);
  });

  it("systemctl soft-reboot: no GPU unheld at any sample, a released GPU stays released, the next boot's daemon adopts the rest", async () => {
    c.check("gpu-persistd release 0");
    await expectHolders(0, [NODES[0] as string]);
    const socketBefore = c.check(`stat -c %i ${RUN}/socket`).trim();
    const stop = await watchFromHost(c, NODES);
    const started = Date.now();
    // --no-block: the transition ends every process in the container, a waiting client too.
    c.run("systemctl --no-block soft-reboot", 10_000);
    await until(
      () =>
        c.run("systemctl show -P SoftRebootsCount", 3000).stdout.trim() === "1" &&
        c.run("systemctl is-active gpu-persistd", 3000).stdout.trim() === "active",
      60_000,
      "soft-rebooted, and gpu-persistd active again",
    );
    const ms = Date.now() - started;
    const result = await stop();
    expect(result.samples, JSON.stringify(result)).toBeGreaterThan(20);
    // GPU 0 was released: nobody held it at any sample, PID 1's store included.
    expect(result.gaps, `${JSON.stringify(result)} (${ms} ms)`).toEqual({
      [NODES[0] as string]: result.samples,
      ...Object.fromEntries(NODES.slice(1).map((n) => [n, 0])),
    });
    expect(states()).toEqual(["released", ...NODES.slice(1).map(() => "held")]);
    const lines = journal();
    expect(lines).toContain(
      "stopping: received SIGUSR2; the GPUs stay in systemd's fd store for the next run (a restart or a soft reboot is under way)",
    );
    expect(
      count(lines, `adopting ${GPUS - 1} GPU nodes the previous run kept in systemd's fd store: no GPU was let go`),
    ).toBe(1);
    // The socket unit is stopped and started like any other: a new socket (every client ended too).
    expect(c.check(`stat -c %i ${RUN}/socket`).trim()).not.toBe(socketBefore);
    c.check("gpu-persistd hold 0");
    await expectHolders(2, [NODES[0] as string]);
  }, 120_000);

  it("systemctl restart keeps every GPU (SIGUSR2 from ExecStop=)", async () => {
    const stop = await watchFromHost(c, NODES);
    c.check("systemctl restart gpu-persistd");
    await until(() => prop("SubState") === "running", 30_000, "running again");
    const result = await stop();
    expect(result.gaps, JSON.stringify(result)).toEqual(Object.fromEntries(NODES.map((n) => [n, 0])));
    expect(
      count(journal(), `adopting ${GPUS} GPU nodes the previous run kept in systemd's fd store: no GPU was let go`),
    ).toBe(1);
  }, 60_000);

  it("systemctl stop lets every GPU go, PID 1's store included; the next start opens them anew", async () => {
    c.check("systemctl stop gpu-persistd");
    await expectHolders(0);
    expect(prop("NFileDescriptorStore")).toBe("0");
    expect(journal()).toContain("stopping: received SIGTERM; systemd's fd store is emptied: every GPU is let go");
    c.check("systemctl start gpu-persistd");
    await expectHolders(2);
    expect(states()).toEqual(NODES.map(() => "held"));
  }, 60_000);

  it("a unit left failed keeps its GPUs in PID 1's store; reset-failed and clean --what=fdstore let them go", async () => {
    dropIn(["Restart=no"]);
    c.check("systemctl daemon-reload && systemctl kill -s KILL --kill-whom=main gpu-persistd");
    await until(() => prop("ActiveState") === "failed", 10_000, "failed");
    await expectHolders(1);
    // clean works on an inactive unit only: a failed one is reset first.
    c.check("systemctl reset-failed gpu-persistd && systemctl clean --what=fdstore gpu-persistd");
    await expectHolders(0);
    expect(c.run(`test -S ${RUN}/socket`).code).toBe(0);
    dropIn();
    c.check("systemctl daemon-reload && systemctl start gpu-persistd");
    expect(states()).toEqual(NODES.map(() => "held"));
  }, 60_000);
});
