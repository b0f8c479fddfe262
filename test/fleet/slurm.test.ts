// The shipped Slurm health check against a real Slurm 22.05 (munge, slurmctld and slurmd in
// one Debian 12 container under real systemd), with gpu-persistd installed from its .deb on
// simulated GPUs: an Xid 79 drains the node naming the GPU, a stopped daemon drains it
// saying so, every GPU held again resumes it, an admin's drain is never undone, a GPU
// an admin released drains only when healthCheckDrainReleased says so, and NVML's recovery
// action GPU_RESET drains with the exact command until it clears. One boot for all.
import { describe, expect, it } from "vitest";
import { fleetRootfs } from "../helpers/nspawn.js";
import { packageHost, SIM_CONFIG, simulateInUnit } from "../helpers/package.js";

/** slurm.conf's HealthCheckInterval, in seconds: short, so the suite runs in about two minutes. */
const CHECK_INTERVAL_S = 5;
/** The daemon's healthIntervalMs here (its default is 15 s). */
const HEALTH_INTERVAL_MS = 5000;
/** What a node start, a Node start-up of the check and scontrol may add on two cores. */
const SLACK_MS = 4000;

const host = packageHost(fleetRootfs);
let node = "";

const run = (command: string, timeoutMs?: number) => host.container.check(command, timeoutMs);

/** The node's state and reason as slurmctld has them (sinfo's compact state, full reason). */
function nodeState(): { state: string; reason: string } {
  const [state = "", ...reason] = run(`sinfo -h -N -n ${node} -o '%t %E'`).trim().split(" ");
  return { state, reason: reason.join(" ") };
}

/** Polls until `want` holds for the node; returns the milliseconds it took. */
async function until(
  what: string,
  want: (n: { state: string; reason: string }) => boolean,
  limitMs: number,
): Promise<number> {
  const start = Date.now();
  for (;;) {
    const now = nodeState();
    if (want(now)) return Date.now() - start;
    if (Date.now() - start > limitMs) {
      throw new Error(
        `${what}: not within ${limitMs} ms; node is ${JSON.stringify(now)}\n` +
          host.container.run("tail -n 20 /var/log/slurm/slurmd.log; journalctl -q -u gpu-persistd -n 10").stdout,
      );
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** The simulator's configuration for the next daemon start: an Xid 79 on `gpu` after `afterMs`. */
function simulate(xid79?: { gpu: number; afterMs: number }): void {
  host.container.writeFile(
    SIM_CONFIG,
    JSON.stringify({
      statePath: "/run/nvidia-persistenced/sim-state",
      events: xid79 ? [{ gpu: xid79.gpu, type: 8, data: 79, afterMs: xid79.afterMs }] : [],
    }),
  );
}

const drained = (n: { state: string }) => /^(drain|drng)/.test(n.state);

describe("Slurm health check", () => {
  it("installs with Slurm, and the node is up while every GPU is held", async () => {
    simulateInUnit(host.container, 4);
    simulate();
    host.container.writeFile(
      "/run/systemd/system/gpu-persistd.service.d/health-interval.conf",
      `[Service]\nEnvironment=GPU_PERSISTD_HEALTH_INTERVAL_MS=${HEALTH_INTERVAL_MS}\n`,
    );
    run(`dpkg -i ${host.withSimulator}`, 120_000);
    expect(host.container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    node = run("hostname -s").trim();
    // One node that is its own controller; the shipped program as HealthCheckProgram.
    run(`echo "127.0.0.1 ${node}" >> /etc/hosts`);
    host.container.writeFile(
      "/etc/slurm/slurm.conf",
      [
        "ClusterName=fleet",
        `SlurmctldHost=${node}`,
        "SlurmUser=slurm",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "StateSaveLocation=/var/lib/slurm/slurmctld",
        "SlurmdSpoolDir=/var/lib/slurm/slurmd",
        "SlurmctldLogFile=/var/log/slurm/slurmctld.log",
        "SlurmdLogFile=/var/log/slurm/slurmd.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "ReturnToService=2",
        "HealthCheckProgram=/usr/lib/gpu-persistd/slurm-health-check",
        `HealthCheckInterval=${CHECK_INTERVAL_S}`,
        "HealthCheckNodeState=ANY",
        `NodeName=${node} CPUs=1 State=UNKNOWN`,
        "PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        "",
      ].join("\n"),
    );
    // No cgroup enforcement (proctrack/linuxproc, task/none): the v1 plugin loads without its
    // mounts, where autodetection sees the host's hybrid hierarchies and refuses to start.
    host.container.writeFile("/etc/slurm/cgroup.conf", "CgroupPlugin=cgroup/v1\n");
    run("mkdir -p /var/log/slurm && chown slurm: /var/log/slurm /var/lib/slurm/slurmctld");
    run("systemctl restart munge && systemctl start slurmctld slurmd", 60_000);
    await until("the node comes up", (n) => /^idle/.test(n.state), 30_000);
    const check = host.container.run("/usr/lib/gpu-persistd/slurm-health-check");
    expect(check.stdout).toBe(`gpu-persistd: 4/4 GPUs held (${node}: the node is up)\n`);
    expect(check.code).toBe(0);
  });

  it("drains the node when the daemon is stopped for good, saying so", async () => {
    // The socket unit too: while it listens, the check's own connection would start the daemon again.
    run("systemctl stop gpu-persistd.socket gpu-persistd");
    await until("drained for no daemon", (n) => drained(n), CHECK_INTERVAL_S * 1000 + SLACK_MS);
    expect(nodeState().reason).toBe(
      "gpu-persistd: daemon is not running (no daemon listening on /run/nvidia-persistenced/gpu-persistd.sock)",
    );
    const check = host.container.run("/usr/lib/gpu-persistd/slurm-health-check");
    expect(check.code).toBe(69);
  });

  it("resumes the node it drained once every GPU is held, and drains it on an Xid 79 naming the GPU", async () => {
    const XID_AFTER_MS = 12_000;
    simulate({ gpu: 2, afterMs: XID_AFTER_MS });
    const started = Date.now();
    run("systemctl start gpu-persistd.socket gpu-persistd");
    await until("resumed by the check", (n) => /^idle/.test(n.state) && n.reason === "none", XID_AFTER_MS - 1000);
    const xidAt = started + XID_AFTER_MS;
    const pci = JSON.parse(run("gpu-persistd status --json")).devices[2].pciBusId as string;
    await until(
      "drained for the lost GPU",
      (n) => drained(n) && n.reason.includes("GPU 2"),
      xidAt - Date.now() + CHECK_INTERVAL_S * 1000 + HEALTH_INTERVAL_MS + SLACK_MS,
    );
    expect(nodeState().reason).toBe(`gpu-persistd: GPU 2 ${pci} lost: Xid 79: GPU has fallen off the bus`);
    expect(run("cat /var/log/slurm/slurmctld.log")).toContain(`node ${node} reason set to: gpu-persistd: GPU 2 ${pci}`);
  });

  it("never resumes a node an admin drained, even with every GPU held", async () => {
    run(`scontrol update nodename=${node} state=drain reason="admin: DIMM test, ticket 4711"`);
    simulate();
    run("systemctl restart gpu-persistd");
    // Three checks pass with every GPU held: the admin's drain stays, with its reason.
    await new Promise((r) => setTimeout(r, 3 * CHECK_INTERVAL_S * 1000));
    expect(nodeState()).toMatchObject({ reason: "admin: DIMM test, ticket 4711" });
    expect(drained(nodeState())).toBe(true);
    const check = host.container.run("/usr/lib/gpu-persistd/slurm-health-check");
    expect(check.stdout).toContain("left alone: admin: DIMM test, ticket 4711");
    expect(check.code).toBe(0);
    run(`scontrol update nodename=${node} state=resume`);
    await until("resumed by the admin", (n) => /^idle/.test(n.state), 10_000);
  });

  it("leaves the node up while an admin has a GPU released, unless healthCheckDrainReleased is set", async () => {
    run("gpu-persistd release 1");
    await new Promise((r) => setTimeout(r, 2 * CHECK_INTERVAL_S * 1000 + 1000));
    expect(nodeState().state).toMatch(/^idle/);
    // The setting is read by each check from the config file: no daemon reload needed.
    run(
      `sed -i 's/^{/{\\n  "healthCheckDrainReleased": true,/' /etc/gpu-persistd/config.json && cat /etc/gpu-persistd/config.json`,
    );
    const pci = JSON.parse(run("gpu-persistd status --json")).devices[1].pciBusId as string;
    await until("drained for the released GPU", drained, CHECK_INTERVAL_S * 1000 + SLACK_MS);
    expect(nodeState().reason).toBe(`gpu-persistd: GPU 1 ${pci} released`);
    run("gpu-persistd hold 1");
    await until("resumed once held", (n) => /^idle/.test(n.state), CHECK_INTERVAL_S * 1000 + SLACK_MS);
  });

  it("drains on a simulated GPU reset with the command in the reason, and resumes once the action clears", async () => {
    const RESET_AT_MS = 8000;
    const CLEARED_AT_MS = 30_000;
    host.container.writeFile(
      SIM_CONFIG,
      JSON.stringify({
        statePath: "/run/nvidia-persistenced/sim-state",
        recoveries: [
          { gpu: 1, action: 1, afterMs: RESET_AT_MS },
          { gpu: 1, action: 0, afterMs: CLEARED_AT_MS },
        ],
      }),
    );
    const started = Date.now();
    run("systemctl restart gpu-persistd");
    const pci = JSON.parse(run("gpu-persistd status --json")).devices[1].pciBusId as string;
    const reading = CHECK_INTERVAL_S * 1000 + HEALTH_INTERVAL_MS + SLACK_MS;
    await until(
      "drained for the reset",
      (n) => drained(n) && n.reason.includes("recovery action"),
      RESET_AT_MS - (Date.now() - started) + reading,
    );
    expect(nodeState().reason).toBe(
      `gpu-persistd: GPU 1 ${pci} recovery action gpu-reset: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1`,
    );
    // The journal line carries the GPU's fields, so journalctl can select it.
    expect(run("journalctl -q -u gpu-persistd RECOVERY_ACTION=gpu-reset GPU_INDEX=1 -o cat")).toContain(
      "NVML reports recovery action gpu-reset: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1",
    );
    await until(
      "resumed once the action cleared",
      (n) => /^idle/.test(n.state) && n.reason === "none",
      CLEARED_AT_MS - (Date.now() - started) + reading,
    );
  });
});
