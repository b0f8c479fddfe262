// GPUs stay initialised across the daemon's own restarts, under real systemd 252 (Debian 12)
// and 257 (Debian 13) in systemd-nspawn, the unit and socket unit as shipped, 8 simulated
// GPUs: a watcher inside the container samples every process's fds every few milliseconds
// and counts the samples in which some GPU's node was held by no process (PID 1's fd store
// included). Restart, kill -9, a watchdog kill and a version mismatch: no sample without a
// holder, and the RPC socket's inode unchanged. A release and a stop let go completely.
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../helpers/daemon.js";
import {
  bookwormRootfs,
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

for (const [release, rootfs] of [
  ["Debian 12 (systemd 252)", bookwormRootfs],
  ["Debian 13 (systemd 257)", trixieRootfs],
] as const) {
  describe(`never let go, ${release}`, () => {
    let stage = "";
    let c: Container;

    const dropIn = (extra: string[] = []) => c.simulateDropIn(GPUS, SIM_CONFIG, { extra });
    const simConfig = (config: object) => c.writeFile(SIM_CONFIG, JSON.stringify(config));
    const prop = (name: string, unit = "gpu-persistd") => c.unitProperty(unit, name);
    /** The inodes of the RPC socket and the control socket. */
    const inode = () => c.check(`stat -c %i ${RUN}/socket ${RUN}/gpu-persistd.sock`).trim();
    const holding = (node: string) => c.fdsOn(node);
    const holders = (node: string) => holding(node).length;
    /** Holders of each node, with who holds them when `expected` is not met within `ms`. */
    async function expectHolders(expected: number, nodes: readonly string[] = NODES, ms = 5000): Promise<void> {
      const deadline = Date.now() + ms;
      while (nodes.some((n) => holders(n) !== expected) && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 100));
      const who = nodes.map((n) => `${n}: ${holding(n).join(" ")} (${c.run("ps -eo pid,comm | tr '\\n' ' '").stdout})`);
      expect(nodes.map(holders), who.join("\n")).toEqual(nodes.map(() => expected));
    }
    const status = () =>
      JSON.parse(c.check("gpu-persistd status --json")) as {
        devices: { state: string; releasedBy: { kind: string } | null }[];
        nvmlDegraded: { libraryVersion: string; moduleVersion: string; message: string } | null;
      };

    const watch = () => c.watchHolders(NODES);

    function expectNoGap(result: HolderWatch): void {
      expect(result.samples).toBeGreaterThan(20);
      expect(result.gaps, JSON.stringify(result)).toEqual(Object.fromEntries(NODES.map((n) => [n, 0])));
    }

    async function activeAgain(restartsBefore: number): Promise<void> {
      await until(
        () => Number(prop("NRestarts")) > restartsBefore && prop("ActiveState") === "active",
        30_000,
        "the unit restarted and became active",
      );
    }

    beforeAll(async () => {
      if (unavailable) throw new Error(`cannot run the real-systemd suite: ${unavailable}`);
      stage = stageInstall();
      c = await bootWithDaemon(stage, rootfs());
      c.writeFile(
        "/usr/local/lib/holder-watcher.mjs",
        readFileSync(join(ROOT, "test/helpers/holder-watcher.mjs"), "utf8"),
      );
      c.writeFile(
        "/usr/local/lib/fdstore-inject.mjs",
        readFileSync(join(ROOT, "test/helpers/fdstore-inject.mjs"), "utf8"),
      );
      dropIn();
      simConfig({});
      c.check("systemctl daemon-reload && systemctl enable --now gpu-persistd.socket && systemctl start gpu-persistd");
    }, 180_000);

    afterAll(async () => {
      await c?.poweroff();
      if (stage) rmSync(stage, { recursive: true, force: true });
    });

    it("the shipped unit and socket unit pass systemd-analyze verify", () => {
      const result = c.run(
        "systemd-analyze verify /usr/lib/systemd/system/gpu-persistd.service /usr/lib/systemd/system/gpu-persistd.socket",
      );
      // systemd 252 predates FileDescriptorStorePreserve= (254, for soft reboots): it says so and ignores it.
      expect(result.stderr).toMatch(
        release.includes("252")
          ? /^\/usr\/lib\/systemd\/system\/gpu-persistd\.service:\d+: Unknown key 'FileDescriptorStorePreserve' in section \[Service\], ignoring\.\n$/
          : /^$/,
      );
      expect(result.code).toBe(0);
    });

    it("systemctl restart: no GPU unheld at any sample, the socket's inode kept, a client mid-restart answered", async () => {
      expect(NODES.every((n) => holders(n) >= 2)).toBe(true); // the daemon and PID 1's store
      const before = inode();
      const stop = await watch();
      const client = c.run(
        "systemctl restart --no-block gpu-persistd; sleep 0.05; gpu-persistd status --json >/run/during.json; echo $?",
      );
      expect(client.stdout.trim(), c.run("cat /run/during.json; ls -la /run/nvidia-persistenced").stdout).toBe("0");
      await until(() => prop("ActiveState") === "active" && prop("SubState") === "running", 30_000, "active again");
      expectNoGap(await stop());
      expect(inode()).toBe(before);
      expect(status().devices.every((g) => g.state === "held")).toBe(true);
      expect(c.check("journalctl -u gpu-persistd -b --no-pager")).toContain(
        `adopting ${GPUS} GPU nodes the previous run kept in systemd's fd store`,
      );
    }, 60_000);

    it("a restart where one GPU's legacy-flag read fails: its kept node is adopted, no gap, a warning only", async () => {
      simConfig({ faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 1, return: 999, times: 1 }] });
      const stop = await watch();
      c.check("systemctl restart gpu-persistd");
      expectNoGap(await stop());
      simConfig({});
      expect(status().devices.every((g) => g.state === "held")).toBe(true);
      const journal = c.check("journalctl -u gpu-persistd -b --no-pager");
      expect(journal).toContain("cannot read the legacy persistence flag: NVML_ERROR_UNKNOWN");
      expect(journal).not.toContain("the GPU is not wanted now");
    }, 60_000);

    it("kill -9, then Restart=on-failure: no gap, the socket's inode kept", async () => {
      const before = inode();
      const restarts = Number(prop("NRestarts"));
      const stop = await watch();
      c.check("systemctl kill --kill-who=main -s KILL gpu-persistd");
      await activeAgain(restarts);
      expectNoGap(await stop());
      expect(inode()).toBe(before);
    }, 60_000);

    it("a watchdog kill (NVML hung): no gap", async () => {
      dropIn(["WatchdogSec=3s", "Environment=GPU_PERSISTD_HEALTH_INTERVAL_MS=1000"]);
      // Each run hangs once it has answered the bring-up and a few rounds.
      simConfig({ faults: [{ call: "nvmlDeviceGetFieldValues", afterCalls: GPUS * 2, hangMs: 3_600_000 }] });
      c.check("systemctl daemon-reload && systemctl restart gpu-persistd");
      const restarts = Number(prop("NRestarts"));
      const stop = await watch();
      await activeAgain(restarts);
      expect(c.check("journalctl -u gpu-persistd -b --no-pager")).toMatch(/[Ww]atchdog timeout/);
      simConfig({});
      dropIn();
      c.check("systemctl daemon-reload && systemctl restart gpu-persistd");
      expectNoGap(await stop());
    }, 90_000);

    it("a version mismatch after an upgrade: still held, degraded with both versions, no restart loop", async () => {
      const stop = await watch();
      simConfig({
        driverVersion: "580.95.05",
        moduleVersion: "580.159.04",
        faults: [{ call: "nvmlInit_v2", return: 18 }],
      });
      c.check("systemctl restart gpu-persistd");
      const restarts = Number(prop("NRestarts"));
      const s = status();
      expect(s.devices.every((g) => g.state === "held")).toBe(true);
      expect(s.nvmlDegraded).toMatchObject({ libraryVersion: "580.95.05", moduleVersion: "580.159.04" });
      expect(prop("StatusText")).toMatch(/^degraded: NVML 580\.95\.05 vs kernel module 580\.159\.04/);
      expect(c.run("gpu-persistd wait --timeout=2").code).toBe(1);
      await new Promise((r) => setTimeout(r, 5000));
      expect(Number(prop("NRestarts"))).toBe(restarts);
      expect(prop("ActiveState")).toBe("active");
      simConfig({});
      c.check("systemctl restart gpu-persistd");
      expectNoGap(await stop());
    }, 60_000);

    it("an fd handed back that is not a GPU node is closed, dropped from the store, and the journal says why", async () => {
      dropIn([
        "NotifyAccess=all",
        "ExecStartPost=/usr/bin/node /usr/local/lib/fdstore-inject.mjs gpu-00000000-07-00.0 /etc/hostname",
      ]);
      c.check("systemctl daemon-reload && systemctl restart gpu-persistd");
      dropIn();
      c.check("systemctl daemon-reload && systemctl restart gpu-persistd");
      expect(c.check("journalctl -u gpu-persistd -b --no-pager")).toContain(
        `closed the file descriptor systemd handed back as 'gpu-00000000-07-00.0': it is not the simulator's stand-in ${RUN}/sim-dev/nvidia1`,
      );
      await expectHolders(2, [NODES[1] as string]);
      expect(status().devices.every((g) => g.state === "held")).toBe(true);
    }, 60_000);

    it("a release lets go completely, PID 1 included, and stays in force across a restart", async () => {
      c.check("gpu-persistd release 0");
      await expectHolders(0, [NODES[0] as string]);
      c.check("systemctl restart gpu-persistd");
      expect(status().devices[0]?.state).toBe("released");
      await expectHolders(0, [NODES[0] as string]);
      c.check("gpu-persistd hold 0");
      await expectHolders(2, [NODES[0] as string]);
    }, 60_000);

    it("a restart during `release 1 -- COMMAND` keeps GPU 1 released until COMMAND ends, then holds it again", async () => {
      c.check("rm -f /run/lease-done");
      const client = c.start(
        "exec gpu-persistd release 1 -- sh -c 'while [ ! -e /run/lease-done ]; do sleep 0.1; done'",
      );
      let stderr = "";
      client.stderr?.on("data", (d: Buffer) => {
        stderr += d.toString();
      });
      const exited = new Promise<number | null>((r) => client.once("exit", r));
      await until(() => status().devices[1]?.state === "released", 10_000, "the lease released GPU 1");
      await expectHolders(0, [NODES[1] as string]);
      const restarts = Number(prop("NRestarts"));
      c.check("systemctl restart gpu-persistd");
      expect(Number(prop("NRestarts"))).toBe(restarts);
      // COMMAND (a reset, say) is still running: the new run must not open GPU 1.
      expect(status().devices[1]).toMatchObject({ state: "released", releasedBy: { kind: "lease" } });
      await expectHolders(0, [NODES[1] as string]);
      expect(c.check("journalctl -u gpu-persistd -n 50 --no-pager -o cat")).toMatch(
        /PID \d+ still runs: its GPUs stay released until it ends/,
      );
      c.check("touch /run/lease-done");
      expect(await exited).toBe(0);
      expect(stderr).toContain("under systemd a restarted daemon keeps the GPUs released until this command ends");
      await until(() => status().devices[1]?.state === "held", 5_000, "GPU 1 held again once the client ended");
      await expectHolders(2, [NODES[1] as string]);
      c.check("rm -f /run/lease-done");
    }, 60_000);

    it("systemctl stop lets every GPU go; a client's connection starts it again; stopping the socket too stops it for good", async () => {
      c.check("systemctl stop gpu-persistd");
      await expectHolders(0);
      expect(c.run(`test -S ${RUN}/socket`).code).toBe(0);
      // The socket unit still listens: a client starts the daemon again (socket activation).
      const started = c.run("gpu-persistd status --json");
      expect(
        started.code,
        `${started.stderr}\n${c.run("systemctl status gpu-persistd.socket gpu-persistd --no-pager; ls -la /run/nvidia-persistenced").stdout}`,
      ).toBe(0);
      await until(() => prop("ActiveState") === "active", 30_000, "started by the client");
      c.check("systemctl stop gpu-persistd.socket gpu-persistd");
      await expectHolders(0);
      expect(c.run(`test -e ${RUN}/socket`).code).toBe(1);
      c.check("systemctl start gpu-persistd.socket gpu-persistd");
    }, 60_000);
  });
}
