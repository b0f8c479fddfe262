// The configuration's asks as pure functions, one row per case (go-systemd style).
import { describe, expect, it } from "vitest";
import { healthIntervalMs, unmatchedMessages, wanted } from "../../src/daemon/hold-policy.js";
import { parseGpuSelector } from "../../src/selection/gpu-selector.js";

describe("wanted", () => {
  for (const [persistenceMode, selected, expected] of [
    [true, true, true],
    [true, false, false],
    [false, true, false],
    [false, false, false],
  ] as const) {
    it(`persistenceMode ${persistenceMode}, selected ${selected}: ${expected}`, () => {
      expect(wanted({ persistenceMode }, { selected })).toBe(expected);
    });
  }
});

describe("healthIntervalMs", () => {
  for (const [configured, watchdogUsec, expected, why] of [
    [15_000, null, 15_000, "no watchdog: as configured"],
    [15_000, 30_000_000, 15_000, "half a 30 s watchdog is the default itself"],
    [15_000, 10_000_000, 5_000, "a 10 s watchdog: half of it"],
    [1_000, 30_000_000, 1_000, "shorter than half the watchdog: as configured"],
    [15_000, 2_000, 10, "a 2 ms watchdog: never below 10 ms"],
    [1_500.4, null, 1_500, "rounded to whole ms"],
  ] as const) {
    it(why, () => {
      expect(healthIntervalMs(configured, watchdogUsec)).toBe(expected);
    });
  }
});

describe("unmatched selectors", () => {
  it("names each selector that matches no GPU, by its kind", () => {
    const parsed = ["0", "GPU-0f3e", "00000000:18:00.0"].flatMap((t) => parseGpuSelector(t) ?? []);
    expect(parsed.map((s) => s.text)).toEqual(["0", "GPU-0f3e", "00000000:18:00.0"]);
    expect(unmatchedMessages(parsed.slice(0, 1), 8)).toEqual([
      "--devices names '0', but no GPU has that index (8 GPUs found)",
    ]);
    expect(unmatchedMessages([], 8)).toEqual([]);
  });
});
