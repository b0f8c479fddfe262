// The Prometheus text format and the loopback-only address rule, without a daemon.
import { describe, expect, it } from "vitest";
import { parseLoopbackAddress } from "../../src/config/listen-address.js";
import { loadConfig } from "../../src/config/load-config.js";
import { family, Histogram } from "../../src/metrics/prometheus-text.js";

describe("Prometheus text", () => {
  it("escapes label values and help text as the exposition format requires", () => {
    const text = family("m", "gauge", "line\\one\nline two", [{ labels: { name: 'a "b"\\c\nd' }, value: 1 }]);
    expect(text).toBe('# HELP m line\\\\one\\nline two\n# TYPE m gauge\nm{name="a \\"b\\"\\\\c\\nd"} 1\n');
  });

  it("declares a family with no samples", () => {
    expect(family("m_total", "counter", "h", [])).toBe("# HELP m_total h\n# TYPE m_total counter\n");
  });

  it("keeps histogram buckets cumulative, with +Inf, sum and count", () => {
    const h = new Histogram([0.1, 1]);
    for (const v of [0.05, 0.5, 0.5, 3]) h.observe(v);
    const text = family("d_seconds", "histogram", "h", h.samples());
    expect(text).toContain('d_seconds_bucket{le="0.1"} 1\n');
    expect(text).toContain('d_seconds_bucket{le="1"} 3\n');
    expect(text).toContain('d_seconds_bucket{le="+Inf"} 4\n');
    expect(text).toContain("d_seconds_sum 4.05\n");
    expect(text).toContain("d_seconds_count 4\n");
  });
});

describe("metricsListen", () => {
  it.each([
    ["127.0.0.1:9400", { host: "127.0.0.1", port: 9400 }],
    ["127.1.2.3:1", { host: "127.1.2.3", port: 1 }],
    ["[::1]:9400", { host: "::1", port: 9400 }],
    ["localhost:65535", { host: "localhost", port: 65535 }],
  ])("accepts the loopback address %s", (value, expected) => {
    expect(parseLoopbackAddress(value)).toEqual(expected);
  });

  it.each([
    ["0.0.0.0:9400", "not a loopback address"],
    ["10.0.0.5:9400", "not a loopback address"],
    ["[::]:9400", "not a loopback address"],
    ["127.0.0.1", "is not HOST:PORT"],
    ["127.0.0.1:0", "not between 1 and 65535"],
    ["127.0.0.1:70000", "not between 1 and 65535"],
  ])("refuses %s, saying why", (value, why) => {
    expect(parseLoopbackAddress(value)).toContain(why);
  });

  it("is checked with the rest of the configuration (exit 78 names the key and the fix)", () => {
    expect(() => loadConfig({ overrides: { metricsListen: "0.0.0.0:9400" } }, {})).toThrow(
      /metricsListen: 0.0.0.0 is not a loopback address.*use metricsTextfile/,
    );
    expect(() => loadConfig({ overrides: { metricsTextfile: "metrics.txt" } }, {})).toThrow(
      /metricsTextfile: must be an absolute path ending in .prom/,
    );
  });
});
