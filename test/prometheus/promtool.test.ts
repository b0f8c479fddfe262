// The shipped alert rules and the daemon's metrics, checked by Prometheus' own promtool:
// `check rules`, `test rules` (gpu-persistd.rules.test.yml beside this file, cases for every
// alert) and `check metrics` (naming, units, help). promtool comes with Debian's `prometheus`:
// test/run-all.sh unpacks that package's promtool into .ci-cache (without installing the
// package: no Prometheus server on the host) and puts it on PATH; without it the suite fails.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, it } from "vitest";
import { everyMetricFamily } from "../../scripts/docs-reference.js";
import { ROOT } from "../helpers/daemon.js";

const RULES = join(ROOT, "packaging/prometheus/gpu-persistd.rules.yml");
const RULE_TESTS = join(ROOT, "test/prometheus/gpu-persistd.rules.test.yml");

/** Where test/run-all.sh unpacks it; else a promtool on PATH. */
const UNPACKED = join(ROOT, ".ci-cache/prometheus/usr/bin/promtool");
const PROMTOOL = existsSync(UNPACKED) ? UNPACKED : "promtool";

beforeAll(() => {
  if (PROMTOOL === "promtool" && spawnSync("sh", ["-c", "command -v promtool"]).status !== 0) {
    throw new Error(
      `promtool is missing: run test/run-all.sh as root once (it unpacks Debian's prometheus package into ${UNPACKED}), or put a promtool on PATH`,
    );
  }
});

function promtool(args: string[], input?: string) {
  const result = spawnSync(PROMTOOL, args, { encoding: "utf8", input, cwd: join(ROOT, "test/prometheus") });
  return { code: result.status, output: `${result.stdout}${result.stderr}` };
}

describe("Prometheus alert rules", () => {
  it("pass promtool check rules", () => {
    const result = promtool(["check", "rules", RULES]);
    expect(result.output).toContain("SUCCESS");
    expect(result.code, result.output).toBe(0);
  });

  it("pass their promtool test rules cases", () => {
    const result = promtool(["test", "rules", RULE_TESTS]);
    expect(result.code, result.output).toBe(0);
  });
});

describe("the daemon's metrics", () => {
  it("pass promtool check metrics, every family present", () => {
    const text = everyMetricFamily();
    for (const family of [
      "gpu_persistd_xid_events_total",
      "gpu_persistd_gpu_numa_online",
      "gpu_persistd_rpc",
      "gpu_persistd_nvml_degraded",
      "gpu_persistd_gpu_power_watts",
      "gpu_persistd_gpu_performance_state",
      "gpu_persistd_gpu_energy_joules_total",
      "gpu_persistd_gpu_initialisation_seconds",
      "gpu_persistd_gpu_recovery_action",
    ]) {
      expect(text).toContain(family);
    }
    const result = promtool(["check", "metrics"], text);
    expect(result.output).toBe("");
    expect(result.code).toBe(0);
  });
});
