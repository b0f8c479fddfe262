// The fleet health check's decision, as a table: each GPU state against the node's state in
// Slurm, an admin's drain reason against the check's own prefix.
import { describe, expect, it } from "vitest";
import { parseSinfoNode } from "../../src/commands/health-check.js";
import { type DaemonStatus, type GpuStatus, STATUS_FORMAT } from "../../src/status/daemon-status.js";
import { healthVerdict, type NodeState, nodeAction, REASON_PREFIX } from "../../src/status/health-verdict.js";

function gpu(
  index: number,
  state: GpuStatus["state"],
  error: string | null = null,
  recoveryAction: GpuStatus["recoveryAction"] = "none",
): GpuStatus {
  return {
    index,
    uuid: `GPU-0000000${index}-0000-0000-0000-000000000000`,
    name: "NVIDIA H100 80GB HBM3",
    pciBusId: `00000000:${(0x18 + index).toString(16).toUpperCase()}:00.0`,
    minor: index,
    state,
    claims: [],
    selected: true,
    held: state === "held",
    lost: state === "lost",
    persistence: "enabled",
    legacyFlag: "disabled",
    xids: {},
    error,
    errorCode: null,
    uvm: "off",
    uvmError: null,
    numa: null,
    wanted: true,
    since: null,
    releasedBy: null,
    fix: null,
    powerWatts: 74.4,
    pstate: 0,
    energyJoules: 1200,
    initialisation: "already-initialised",
    initSeconds: null,
    recoveryAction,
  };
}

function status(...devices: GpuStatus[]): DaemonStatus {
  return {
    format: STATUS_FORMAT,
    pid: 1,
    version: "0.1.0",
    simulated: true,
    dryRun: false,
    uid: 0,
    ready: true,
    nvmlSession: true,
    nvmlDegraded: null,
    rpcRequests: 0,
    persistenceMode: true,
    unmatchedSelectors: [],
    lastReload: null,
    memory: { rss: 0, heapUsed: 0, external: 0 },
    devices,
  };
}

const up: NodeState = { offline: false, reason: "" };
const ownDrain: NodeState = { offline: true, reason: `${REASON_PREFIX} GPU 1 00000000:19:00.0 lost: Xid 79` };
const adminDrain: NodeState = { offline: true, reason: "bad DIMM, ticket 4711" };
const lost = gpu(1, "lost", "Xid 79: GPU has fallen off the bus");

describe("health verdict", () => {
  it.each([
    ["every GPU held", status(gpu(0, "held"), gpu(1, "held")), [], false, true, "gpu-persistd: 2/2 GPUs held"],
    [
      "a GPU lost",
      status(gpu(0, "held"), lost),
      [],
      false,
      false,
      "gpu-persistd: GPU 1 00000000:19:00.0 lost: Xid 79: GPU has fallen off the bus",
    ],
    [
      "a GPU failed",
      status(gpu(0, "failed", "NVML_ERROR_NO_PERMISSION: Insufficient Permissions (nvmlDeviceSetPersistenceMode)")),
      [],
      false,
      false,
      "gpu-persistd: GPU 0 00000000:18:00.0 failed: NVML_ERROR_NO_PERMISSION: Insufficient Permissions (nvmlDeviceSetPersistenceMode)",
    ],
    [
      "a GPU the devices setting names is missing",
      status(gpu(0, "held")),
      ["00000000:1F:00.0"],
      false,
      false,
      "gpu-persistd: GPU 00000000:1F:00.0 missing: NVML reports no such GPU",
    ],
    [
      "a GPU released by an admin, by default",
      status(gpu(0, "held"), gpu(1, "released")),
      [],
      false,
      true,
      "gpu-persistd: 1/2 GPUs held (1 released by an admin)",
    ],
    [
      "a GPU released, with healthCheckDrainReleased",
      status(gpu(0, "held"), gpu(1, "released")),
      [],
      true,
      false,
      "gpu-persistd: GPU 1 00000000:19:00.0 released",
    ],
    [
      "a GPU still coming up",
      status(gpu(0, "holding")),
      [],
      false,
      false,
      "gpu-persistd: GPU 0 00000000:18:00.0 not held yet (holding)",
    ],
    [
      "a held GPU the driver wants reset: drained with the exact command",
      status(gpu(0, "held"), gpu(1, "held", null, "gpu-reset")),
      [],
      false,
      false,
      "gpu-persistd: GPU 1 00000000:19:00.0 recovery action gpu-reset: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1",
    ],
    [
      "a GPU released for its reset while the action is still pending: still drained",
      status(gpu(0, "held"), gpu(1, "released", null, "gpu-reset")),
      [],
      false,
      false,
      "gpu-persistd: GPU 1 00000000:19:00.0 recovery action gpu-reset: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1",
    ],
    [
      "a node reboot asked",
      status(gpu(0, "held", null, "node-reboot")),
      [],
      false,
      false,
      "gpu-persistd: GPU 0 00000000:18:00.0 recovery action node-reboot: reboot the node (a GPU reset is not enough)",
    ],
    [
      "a P2P drain asked",
      status(gpu(0, "held", null, "drain-p2p")),
      [],
      false,
      false,
      "gpu-persistd: GPU 0 00000000:18:00.0 recovery action drain-p2p: stop its NVLink and P2P traffic; the driver then reports the next action",
    ],
    [
      "a drain and reset asked",
      status(gpu(0, "held", null, "drain-and-reset")),
      [],
      false,
      false,
      "gpu-persistd: GPU 0 00000000:18:00.0 recovery action drain-and-reset: let running jobs end, then run: gpu-persistd release 0 -- nvidia-smi -r -i 0",
    ],
    [
      "an action this version does not know",
      status(gpu(0, "held", null, "action-7")),
      [],
      false,
      false,
      "gpu-persistd: GPU 0 00000000:18:00.0 recovery action action-7: see NVIDIA's GPU recovery guide",
    ],
    [
      "a driver that does not report recovery actions: healthy",
      status(gpu(0, "held", null, null)),
      [],
      false,
      true,
      "gpu-persistd: 1/1 GPUs held",
    ],
    [
      "three GPUs lost: two named, one counted",
      status(gpu(0, "lost", "Xid 79"), gpu(1, "lost", "Xid 79"), gpu(2, "lost", "Xid 79")),
      [],
      false,
      false,
      "gpu-persistd: GPU 0 00000000:18:00.0 lost: Xid 79; GPU 1 00000000:19:00.0 lost: Xid 79; 1 more",
    ],
  ] as const)("%s", (_name, s, unmatched, drainReleased, healthy, reason) => {
    expect(healthVerdict({ status: { ...s, unmatchedSelectors: [...unmatched] }, drainReleased })).toEqual({
      healthy,
      reason,
    });
  });

  // The daemon's record says the GPUs are deliberately not persistent: no drain for a setting.
  const off = (...devices: GpuStatus[]): DaemonStatus => ({
    ...status(...devices.map((g) => ({ ...g, wanted: false }))),
    persistenceMode: false,
  });

  it("persistence mode off, as configured, is healthy: a deliberate setting never drains a node", () => {
    expect(healthVerdict({ status: off(gpu(0, "identified"), gpu(1, "identified")), drainReleased: false })).toEqual({
      healthy: true,
      reason: "gpu-persistd: 0/0 GPUs held (persistence mode off, as configured)",
    });
  });

  it("a selector the daemon could not match drains, whatever the other settings", () => {
    const s = { ...off(gpu(0, "identified")), unmatchedSelectors: ["9"] };
    expect(healthVerdict({ status: s, drainReleased: false })).toEqual({
      healthy: false,
      reason: "gpu-persistd: GPU 9 missing: NVML reports no such GPU",
    });
  });

  it("resumes once the action clears: drained for it, then healthy and resumed", () => {
    const drained = healthVerdict({
      status: status(gpu(0, "held", null, "gpu-reset")),
      drainReleased: false,
    });
    expect(nodeAction(drained, up)).toEqual({ action: "drain", reason: drained.reason });
    const cleared = healthVerdict({ status: status(gpu(0, "held")), drainReleased: false });
    expect(nodeAction(cleared, { offline: true, reason: drained.reason })).toEqual({ action: "resume" });
  });

  it("a GPU not selected does not count", () => {
    const other = { ...gpu(1, "lost", "Xid 79"), selected: false, wanted: false };
    expect(healthVerdict({ status: status(gpu(0, "held"), other), drainReleased: false }).healthy).toBe(true);
  });

  it("no daemon: unhealthy, saying so", () => {
    const reason = "daemon is not running (no daemon listening on /run/nvidia-persistenced/gpu-persistd.sock)";
    expect(healthVerdict({ status: null, unavailable: reason, drainReleased: false })).toEqual({
      healthy: false,
      reason: `gpu-persistd: ${reason}`,
    });
  });
});

describe("what the Slurm health check does to the node", () => {
  const healthy = { healthy: true, reason: "gpu-persistd: 2/2 GPUs held" };
  const sick = { healthy: false, reason: "gpu-persistd: GPU 1 00000000:19:00.0 lost: Xid 79" };
  const otherSick = { healthy: false, reason: "gpu-persistd: GPU 0 00000000:18:00.0 failed: NVML_ERROR_UNKNOWN" };
  it.each([
    ["healthy, node up: nothing", healthy, up, "none"],
    ["healthy, drained by this check: resume", healthy, ownDrain, "resume"],
    ["healthy, drained by an admin: never resumed", healthy, adminDrain, "none"],
    ["unhealthy, node up: drain", sick, up, "drain"],
    ["unhealthy, drained by an admin: left alone, reason kept", sick, adminDrain, "none"],
    ["unhealthy, already drained with the same reason: nothing", sick, { offline: true, reason: sick.reason }, "none"],
    ["unhealthy, drained by this check for another GPU: reason updated", otherSick, ownDrain, "drain"],
    ["unhealthy, down without a reason: drain", sick, { offline: true, reason: "" }, "drain"],
  ] as const)("%s", (_name, verdict, node, action) => {
    const result = nodeAction(verdict, node);
    expect(result.action).toBe(action);
    if (result.action === "drain") expect(result.reason).toBe(verdict.reason);
  });

  it("an admin reason that merely contains the prefix is not ours", () => {
    expect(nodeAction(healthy, { offline: true, reason: `admin: see ${REASON_PREFIX} logs` }).action).toBe("none");
  });

  it("reads sinfo's '%t %E' line as NHC does", () => {
    expect(parseSinfoNode("idle none\n")).toEqual({ offline: false, reason: "" });
    expect(parseSinfoNode("drain gpu-persistd: GPU 1 00000000:19:00.0 lost: Xid 79")).toEqual({
      offline: true,
      reason: "gpu-persistd: GPU 1 00000000:19:00.0 lost: Xid 79",
    });
    expect(parseSinfoNode("drng bad DIMM")).toEqual({ offline: true, reason: "bad DIMM" });
    expect(parseSinfoNode("down* Not responding")).toEqual({ offline: true, reason: "Not responding" });
    expect(parseSinfoNode("mix none")).toEqual({ offline: false, reason: "" });
  });
});
