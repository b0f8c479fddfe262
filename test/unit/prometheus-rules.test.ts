// The shipped alert rules, without Prometheus: every alert has promtool cases, and the names
// follow Prometheus' conventions. promtool itself runs them in test/prometheus/promtool.test.ts.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { ROOT } from "../helpers/daemon.js";

const RULES = join(ROOT, "packaging/prometheus/gpu-persistd.rules.yml");
const RULE_TESTS = join(ROOT, "test/prometheus/gpu-persistd.rules.test.yml");
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
});
