// Pure helpers every client shares: PCI addresses as integers, and the status validator.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseGpuSelector, selectorMatches } from "../../src/selection/gpu-selector.js";
import { formatPciAddress, parsePciAddress, samePciDevice } from "../../src/selection/pci-address.js";
import { parseDaemonStatus, STATUS_FORMAT } from "../../src/status/daemon-status.js";
import { statusLine } from "../../src/status/status-line.js";

describe("PCI addresses", () => {
  it("parses NVML's three forms into integers", () => {
    expect(parsePciAddress("00000000:1B:00.0")).toEqual({ domain: 0, bus: 0x1b, device: 0, function: 0 });
    expect(parsePciAddress("0001:1b:02")).toEqual({ domain: 1, bus: 0x1b, device: 2, function: 0 });
    expect(parsePciAddress("1b:00.3")).toEqual({ domain: 0, bus: 0x1b, device: 0, function: 3 });
    for (const bad of ["", "1b", "GPU-1", "0:0:0.8", "123456789:00:00.0", "0:100:0.0"]) {
      expect(parsePciAddress(bad), bad).toBeNull();
    }
  });

  it("formats as NVML does and parses back to the same address", () => {
    fc.assert(
      fc.property(
        fc.record({
          domain: fc.integer({ min: 0, max: 0xffffffff }),
          bus: fc.integer({ min: 0, max: 0xff }),
          device: fc.integer({ min: 0, max: 0xff }),
          function: fc.integer({ min: 0, max: 7 }),
        }),
        (a) => {
          expect(parsePciAddress(formatPciAddress(a))).toEqual(a);
        },
      ),
    );
    expect(formatPciAddress({ domain: 0, bus: 0x1b, device: 0, function: 0 })).toBe("00000000:1B:00.0");
  });

  it("matches on domain, bus and device, ignoring the function, as the RPC protocol does", () => {
    const a = { domain: 0, bus: 0x18, device: 0, function: 0 };
    expect(samePciDevice(a, { ...a, function: 3 })).toBe(true);
    expect(samePciDevice(a, { ...a, bus: 0x19 })).toBe(false);
    const selector = parseGpuSelector("18:00.1");
    expect(selector && selectorMatches(selector, { index: 4, uuid: "GPU-x", pci: a })).toBe(true);
    expect(selector && selectorMatches(selector, { index: 4, uuid: "GPU-x", pci: null })).toBe(false);
  });
});

const gpu = {
  index: 0,
  uuid: "GPU-a",
  name: "H100",
  pciBusId: "00000000:06:00.0",
  minor: 0,
  state: "held",
  claims: ["persistence"],
  selected: true,
  held: true,
  lost: false,
  persistence: "enabled",
  legacyFlag: "disabled",
  xids: {},
  error: null,
  errorCode: null,
  uvm: "off",
  uvmError: null,
  numa: null,
  wanted: true,
  since: "2026-12-06T02:00:00.000Z",
  releasedBy: null,
  fix: null,
  powerWatts: 74.4,
  pstate: 0,
  energyJoules: null,
  initialisation: "unknown",
  initSeconds: null,
  recoveryAction: null,
};
const status = {
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
  memory: { rss: 1, heapUsed: 1, external: 1 },
  devices: [gpu],
};

describe("the status reply", () => {
  it("accepts what the daemon sends", () => {
    expect(parseDaemonStatus(status, "0.1.0")).toEqual(status);
  });

  it("names the daemon's version and the fix when the format differs", () => {
    expect(() => parseDaemonStatus({ ...status, format: 1, version: "0.0.9" }, "0.1.0")).toThrow(
      /gpu-persistd 0\.0\.9 answered a status that this gpu-persistd 0\.1\.0 cannot read \(status format 1, expected 2\); restart the daemon/,
    );
    expect(() => parseDaemonStatus({ ...status, devices: [{ ...gpu, held: "yes" }] }, "0.1.0")).toThrow(
      /device 0: 'held' is "yes", expected boolean/,
    );
    expect(() => parseDaemonStatus("nope", "0.1.0")).toThrow(/the running daemon answered .* \(not a JSON object\)/);
    expect(() => parseDaemonStatus({ ...status, devices: [{ ...gpu, powerWatts: "74 W" }] }, "0.1.0")).toThrow(
      /device 0: 'powerWatts' is "74 W", expected number\|null/,
    );
  });
});

describe("the STATUS= line", () => {
  const dev = (over: Record<string, unknown>) => ({ ...gpu, ...over }) as (typeof status.devices)[0] & { state: never };
  it("counts held GPUs and names up to three that are not, by cause", () => {
    const devices = [
      dev({}),
      dev({ index: 1, pciBusId: "00000000:07:00.0", state: "lost", held: false }),
      dev({
        index: 2,
        pciBusId: "00000000:08:00.0",
        state: "failed",
        held: false,
        errorCode: "NVML_ERROR_NO_PERMISSION",
      }),
      dev({ index: 3, pciBusId: "00000000:09:00.0", state: "released", held: false }),
      dev({ index: 4, pciBusId: "00000000:0A:00.0", state: "released", held: false }),
    ];
    expect(statusLine(devices as never, true)).toBe(
      "1/5 GPUs persistent; 00000000:07:00.0: lost; 00000000:08:00.0: NVML_ERROR_NO_PERMISSION; 00000000:09:00.0: released; 1 more",
    );
    expect(statusLine([dev({ state: "identified", held: false })] as never, false)).toBe(
      "0/1 GPUs persistent (started with --no-persistence-mode)",
    );
  });
});
