// The shipped alert rules and the daemon's metrics, checked by Prometheus' own promtool:
// `check rules`, `test rules` (test/prometheus/gpu-persistd.rules.test.yml, one case set per
// alert at least) and `check metrics` (naming, units, help). promtool comes with Debian's
// `prometheus`; test/run-all.sh installs it when run as root.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { DaemonMetrics } from "../../src/metrics/daemon-metrics.js";
import type { GpuStatus } from "../../src/status/daemon-status.js";
import { ROOT } from "../helpers/daemon.js";

const RULES = join(ROOT, "packaging/prometheus/gpu-persistd.rules.yml");
const RULE_TESTS = join(ROOT, "test/prometheus/gpu-persistd.rules.test.yml");
const hasPromtool = spawnSync("sh", ["-c", "command -v promtool"]).status === 0;
const skipped = hasPromtool
  ? ""
  : " (SKIPPED: promtool is missing: apt-get install --no-install-recommends prometheus)";
if (!hasPromtool) console.warn(`prometheus-rules.test.ts${skipped}`);

function promtool(args: string[], input?: string) {
  const result = spawnSync("promtool", args, { encoding: "utf8", input, cwd: join(ROOT, "test/prometheus") });
  return { code: result.status, output: `${result.stdout}${result.stderr}` };
}

describe("Prometheus alert rules", () => {
  it("names each alert's test: every shipped alert has promtool cases", () => {
    const alerts = (parse(readFileSync(RULES, "utf8")) as { groups: { rules: { alert: string }[] }[] }).groups
      .flatMap((g) => g.rules)
      .map((r) => r.alert);
    const tested = new Set(
      (
        parse(readFileSync(RULE_TESTS, "utf8")) as { tests: { alert_rule_test: { alertname: string }[] }[] }
      ).tests.flatMap((t) => t.alert_rule_test.map((a) => a.alertname)),
    );
    expect(alerts.length).toBeGreaterThanOrEqual(5);
    expect(alerts.filter((a) => !tested.has(a))).toEqual([]);
    // Prometheus' naming: CamelCase alert names, every series of ours snake_case with the prefix.
    for (const alert of alerts) expect(alert).toMatch(/^GpuPersistd[A-Z][A-Za-z]+$/);
  });

  it.skipIf(!hasPromtool)(`pass promtool check rules${skipped}`, () => {
    const result = promtool(["check", "rules", RULES]);
    expect(result.output).toContain("SUCCESS");
    expect(result.code, result.output).toBe(0);
  });

  it.skipIf(!hasPromtool)(`pass their promtool test rules cases${skipped}`, () => {
    const result = promtool(["test", "rules", RULE_TESTS]);
    expect(result.code, result.output).toBe(0);
  });
});

describe("the daemon's metrics", () => {
  it.skipIf(!hasPromtool)(`pass promtool check metrics, every family present${skipped}`, () => {
    const gpu: GpuStatus = {
      index: 0,
      uuid: "GPU-9e3779b9-6ef3-4f37-86ef-c5e6902c0000",
      name: "NVIDIA GH200 480GB",
      pciBusId: "00000000:18:00.0",
      minor: 0,
      state: "held",
      claims: [],
      selected: true,
      held: true,
      lost: false,
      persistence: "enabled",
      xids: { "13": 2, "79": 1 },
      error: null,
      errorCode: null,
      uvm: "registered",
      uvmError: null,
      numa: { nid: 1, status: "online", autoOnline: true, memSizeBytes: 1 << 30 },
    };
    const metrics = new DaemonMetrics();
    metrics.recordBringUp(0.25);
    metrics.observeHealthRound(0.002, true, 2);
    metrics.observeHealthRound(12, false, 2);
    const text = metrics.render({
      version: "0.1.0",
      devices: [gpu, { ...gpu, index: 1, state: "lost", held: false, lost: true, uvm: "failed" }],
      rpcRequests: new Map([["get_persistence_mode", new Map([["ok", 3]])]]),
    });
    for (const family of ["gpu_persistd_xid_events_total", "gpu_persistd_gpu_numa_online", "gpu_persistd_rpc"]) {
      expect(text).toContain(family);
    }
    const result = promtool(["check", "metrics"], text);
    expect(result.output).toBe("");
    expect(result.code).toBe(0);
  });
});
