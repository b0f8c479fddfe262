// True to real NVML under real systemd 252 (Debian 12) and 257 (Debian 13): the shipped unit
// and socket unit, 8 simulated GPUs whose NVML routes persistence calls to
// /run/nvidia-persistenced/socket and waits without a limit, as real NVML does. Every start
// (by a client through the socket, restart, crash, an upgrade's restart) holds every GPU with no
// NVML call of ours waiting on our own socket (counted from the simulator's call log); READY
// comes as fast as without the socket unit; a daemon that cannot start leaves no client
// waiting long; a release and a stop leave no flag of ours, an admin's flag stays.
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../helpers/daemon.js";
import {
  bookwormRootfs,
  bootWithDaemon,
  type Container,
  nspawnUnavailable,
  stageInstall,
  trixieRootfs,
  until,
} from "../helpers/nspawn.js";

const GPUS = 8;
const SIM_CONFIG = "/etc/gpu-persistd/sim.json";
const CALLS = "/var/lib/gpu-persistd-sim/calls.log";
const RUN = "/run/nvidia-persistenced";
const CLIENT = "/usr/local/lib/nvml-client.mjs";
const CLIENT_SIM_CONFIG = "/etc/gpu-persistd/client-sim.json";
/** The longest a client may wait on a daemon that cannot start (the operations guide's bound). */
const FAILED_START_BOUND_MS = 5000;
const unavailable = nspawnUnavailable();

for (const [release, rootfs] of [
  ["Debian 12 (systemd 252)", bookwormRootfs],
  ["Debian 13 (systemd 257)", trixieRootfs],
] as const) {
  describe(`true to real NVML, ${release}`, () => {
    let stage = "";
    let c: Container;
    // The client's own simulator configuration: the daemon's faults are not the client's.
    const simEnv = `GPU_PERSISTD_SIM_CONFIG=${CLIENT_SIM_CONFIG} GPU_PERSISTD_SIM_GPUS=${GPUS} GPU_PERSISTD_SIM_DEVICE_DIR=${RUN}/sim-dev`;
    /** An NVML client on the host (nvidia-smi's query), as any process but the daemon. */
    const nvml = (args: string) => c.run(`env ${simEnv} /usr/bin/node ${CLIENT} ${args}`, 60_000);
    const prop = (name: string, unit = "gpu-persistd") => c.unitProperty(unit, name);
    const status = () =>
      JSON.parse(c.check("gpu-persistd status --json")) as {
        pid: number;
        devices: { state: string; legacyFlag: string; persistence: string }[];
      };
    const simConfig = (config: object) => c.writeFile(SIM_CONFIG, JSON.stringify({ callLogPath: CALLS, ...config }));
    /** The shipped unit on simulated GPUs; `startLimit` false lifts the start limit the suite's many starts would hit. */
    const dropIn = (startLimit = false) =>
      // The simulator's call log (ProtectSystem=strict keeps the rest read-only).
      c.simulateDropIn(GPUS, SIM_CONFIG, { startLimit, extra: ["ReadWritePaths=/var/lib/gpu-persistd-sim"] });
    /** The daemon's routed persistence calls since the log was cleared: outcome and wait (ms). */
    function routedCallsOf(pids: number[]): { outcome: string; waitedMs: number }[] {
      return c
        .run(`cat ${CALLS} 2>/dev/null`)
        .stdout.trim()
        .split("\n")
        .map((line) => line.split(" "))
        .filter(([, pid, call]) => pids.includes(Number(pid)) && call?.startsWith("persistenceSocket:"))
        .map(([, , call, , ret]) => ({ outcome: String(call).split(":")[1] ?? "", waitedMs: Number(ret) }));
    }
    const mainPid = () => Number(prop("MainPID"));
    /** READY's delay after exec, in ms, from systemd's own timestamps. */
    const readyMs = () =>
      (Number(prop("ActiveEnterTimestampMonotonic")) - Number(prop("ExecMainStartTimestampMonotonic"))) / 1000;

    beforeAll(async () => {
      if (unavailable) throw new Error(`cannot run the real-systemd suite: ${unavailable}`);
      stage = stageInstall();
      c = await bootWithDaemon(stage, rootfs());
      c.writeFile(CLIENT, readFileSync(join(ROOT, "test/helpers/nvml-client.mjs"), "utf8"));
      c.writeFile(CLIENT_SIM_CONFIG, "{}");
      c.check("mkdir -p /var/lib/gpu-persistd-sim");
      dropIn();
      simConfig({});
      c.check("systemctl daemon-reload && systemctl enable gpu-persistd.socket && systemctl start gpu-persistd.socket");
    }, 180_000);

    afterAll(async () => {
      await c?.poweroff();
      if (stage) rmSync(stage, { recursive: true, force: true });
    });

    it("a client's query starts the daemon through the socket and is answered; restart, crash and an upgrade's restart hold every GPU; no call of ours waited on our socket", async () => {
      expect(prop("ActiveState")).toBe("inactive");
      // nvidia-smi's query, with only the socket unit listening: socket activation starts the daemon.
      const first = nvml("get 0");
      expect(first.stdout, first.stderr).toMatch(/^mode [01] ms \d+/);
      await until(() => prop("ActiveState") === "active", 30_000, "started by the client");
      const pids = [mainPid()];
      c.check("systemctl restart gpu-persistd");
      pids.push(mainPid());
      c.check("systemctl kill --kill-who=main -s KILL gpu-persistd");
      await until(() => prop("ActiveState") === "active" && mainPid() !== pids[1], 30_000, "restarted after the crash");
      pids.push(mainPid());
      // An upgrade, as the package's postinst does it once the new files are in place.
      c.check("systemctl daemon-reload && systemctl restart gpu-persistd");
      pids.push(mainPid());
      expect(status().devices.map((g) => g.state)).toEqual(Array(GPUS).fill("held"));
      const routed = routedCallsOf(pids);
      // Each start read each GPU's legacy flag once, through its own served socket, unanswered.
      expect(routed.length).toBe(pids.length * GPUS);
      expect(routed.every((r) => r.outcome === "closed")).toBe(true);
      expect(Math.max(...routed.map((r) => r.waitedMs))).toBeLessThan(100);
      expect(nvml("get 3").stdout).toMatch(/^mode 1 ms \d+/);
    }, 120_000);

    it("READY as fast with the socket unit as without it (within 1.2 x + 50 ms)", async () => {
      // Interleaved, five of each, medians: the machine's own drift falls on both alike.
      const without: number[] = [];
      const withUnit: number[] = [];
      for (let i = 0; i < 5; i++) {
        // Without: the socket unit masked (the service's Wants= would start it), the daemon binds its own.
        c.check("systemctl stop gpu-persistd.socket gpu-persistd && systemctl mask --runtime gpu-persistd.socket");
        c.check("systemctl start gpu-persistd");
        without.push(readyMs());
        c.check("systemctl stop gpu-persistd && systemctl unmask --runtime gpu-persistd.socket");
        // The socket unit's own start limit (5 in 10 s) is not what is measured here.
        c.check("systemctl reset-failed gpu-persistd.socket; systemctl start gpu-persistd.socket gpu-persistd");
        withUnit.push(readyMs());
      }
      const median = (xs: number[]): number => xs.sort((a, b) => a - b)[2] ?? 0;
      expect(
        median(withUnit),
        `with the socket unit ${withUnit.join(", ")} ms, without ${without.join(", ")} ms`,
      ).toBeLessThanOrEqual(1.2 * median(without) + 50);
    }, 120_000);

    /** Back to the shipped setup and both units running, whatever a failed test left. */
    function recover(): void {
      simConfig({});
      dropIn();
      c.run("rm -f /etc/gpu-persistd/config.json");
      c.check("systemctl daemon-reload && systemctl reset-failed gpu-persistd gpu-persistd.socket");
      c.check("systemctl start gpu-persistd.socket gpu-persistd");
    }

    it("a daemon that cannot start (bad configuration) lets its waiting client go, then the socket is gone", async () => {
      try {
        c.check("systemctl stop gpu-persistd && systemctl start gpu-persistd.socket");
        c.writeFile("/etc/gpu-persistd/config.json", JSON.stringify({ healthIntervalMs: "soon" }));
        const started = Date.now();
        const waiting = nvml("get 0");
        const waitedMs = Date.now() - started;
        expect(waiting.stdout, waiting.stderr).toMatch(/^mode 0 ms \d+/);
        expect(waitedMs).toBeLessThan(FAILED_START_BOUND_MS);
        await until(() => prop("ExecMainStatus") === "78", 10_000, "the daemon exited 78");
        await until(() => c.run(`test -e ${RUN}/socket`).code !== 0, 10_000, "the socket unit stopped");
        // Now NVML asks the driver at once, as with no daemon installed.
        expect(nvml("get 0").stdout).toMatch(/^mode 0 ms \d+/);
      } finally {
        recover();
      }
      expect(prop("ActiveState")).toBe("active");
    }, 60_000);

    it("a daemon in a restart loop keeps each waiting client under RestartSec plus one start; the start limit then removes the socket", async () => {
      try {
        dropIn(true);
        c.check("systemctl daemon-reload && systemctl stop gpu-persistd");
        // NVML's library fails every start (exit 69): Restart=on-failure every 2 s.
        simConfig({ faults: [{ call: "nvmlInit_v2", return: 999 }] });
        c.writeFile("/etc/gpu-persistd/config.json", JSON.stringify({ driverWaitMs: 0 }));
        const waits: number[] = [];
        for (let i = 0; i < 3; i++) {
          const started = Date.now();
          const r = nvml("get 0");
          waits.push(Date.now() - started);
          expect(r.stdout, r.stderr).toMatch(/^mode 0 ms \d+/);
        }
        expect(Math.max(...waits), `waits ${waits.join(", ")} ms`).toBeLessThan(FAILED_START_BOUND_MS);
        await until(
          () => prop("Result", "gpu-persistd.socket") === "service-start-limit-hit",
          60_000,
          "the start limit hit, failing the socket unit",
        );
        await until(
          () => c.run(`test -e ${RUN}/socket`).code !== 0,
          10_000,
          "the socket unit failed and removed the socket",
        );
      } finally {
        recover();
      }
    }, 120_000);

    it("with the flag off, a release tears the GPU down and a stop every GPU; an admin's flag stays and status names it", async () => {
      c.check("gpu-persistd release 0");
      expect(nvml("state 0").stdout.trim()).toBe("torn down");
      expect(nvml("state 1").stdout.trim()).toBe("held");
      c.check("gpu-persistd hold 0");
      c.check("systemctl stop gpu-persistd.socket gpu-persistd");
      for (let i = 0; i < GPUS; i++) expect(nvml(`state ${i}`).stdout.trim()).toBe("torn down");
      // The admin's `nvidia-smi -i 1 -pm 1` with no daemon socket: the legacy flag.
      expect(nvml("set 1 1").stdout).toMatch(/^set 1/);
      c.check("systemctl start gpu-persistd.socket gpu-persistd");
      expect(status().devices[1]).toMatchObject({ state: "held", legacyFlag: "enabled", persistence: "enabled" });
      expect(c.check("gpu-persistd status")).toContain("legacy persistence flag");
      expect(c.check("journalctl -u gpu-persistd -b --no-pager")).toContain("nvidia-smi -i 1 -pm 0");
      c.check("systemctl stop gpu-persistd.socket gpu-persistd");
      expect(nvml("state 1").stdout.trim()).toBe("initialised");
      expect(nvml("state 0").stdout.trim()).toBe("torn down");
      // The fix the daemon names clears it.
      expect(nvml("set 1 0").stdout).toMatch(/^set 0/);
      expect(nvml("state 1").stdout.trim()).toBe("torn down");
      c.check("systemctl start gpu-persistd.socket gpu-persistd");
    }, 120_000);
  });
}
