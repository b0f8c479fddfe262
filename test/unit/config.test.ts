import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config/load-config.js";
import { configSchema } from "../../src/config/schema.js";
import { FatalError } from "../../src/fatal-error.js";

const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-config-test-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;

function file(contents: string): string {
  const path = join(dir, `config-${fileCount++}.json`);
  writeFileSync(path, contents);
  return path;
}

function configError(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    expect(err).toBeInstanceOf(FatalError);
    expect((err as FatalError).exitCode).toBe(78);
    return (err as Error).message;
  }
  throw new Error("expected a configuration error");
}

describe("configuration sources", () => {
  it("gives the defaults when the default file is absent", () => {
    const config = loadConfig({ overrides: {} }, { GPU_PERSISTD_CONFIG: undefined });
    expect(config).toMatchObject({
      persistenceMode: true,
      runtimeDir: "/run/nvidia-persistenced",
      nvmlLibrary: "libnvidia-ml.so.1",
      devices: [],
      dryRun: false,
    });
  });

  it("applies file, then environment, then command line", () => {
    const path = file(JSON.stringify({ runtimeDir: "/from-file", dryRun: true, devices: ["0"], logLevel: "warn" }));
    const previous = { ...process.env };
    process.env.GPU_PERSISTD_RUNTIME_DIR = "/from-env";
    process.env.GPU_PERSISTD_DEVICES = "1,2";
    try {
      const config = loadConfig({ path, overrides: { runtimeDir: "/from-cli" } });
      expect(config.runtimeDir).toBe("/from-cli");
      // Held parsed: GPU selectors, not strings to parse again.
      expect(config.devices).toEqual([
        { kind: "index", index: 1, text: "1" },
        { kind: "index", index: 2, text: "2" },
      ]);
      expect(config.dryRun).toBe(true);
      expect(config.logLevel).toBe("warn");
    } finally {
      process.env = previous;
    }
  });

  it("reads booleans and numbers from the environment strictly", () => {
    const previous = { ...process.env };
    process.env.GPU_PERSISTD_DRY_RUN = "yes";
    process.env.GPU_PERSISTD_NVML_TIMEOUT_MS = "2500";
    try {
      const config = loadConfig({ path: file("{}"), overrides: {} });
      expect(config.dryRun).toBe(true);
      expect(config.nvmlTimeoutMs).toBe(2500);
      process.env.GPU_PERSISTD_DRY_RUN = "maybe";
      expect(configError(() => loadConfig({ path: file("{}"), overrides: {} }))).toContain("dryRun");
    } finally {
      process.env = previous;
    }
  });
});

describe("bad configuration exits 78 and names the key, the value and what is allowed", () => {
  it.each([
    ['{"frobnicate": 1}', ["unknown setting 'frobnicate'", "known settings:", "persistenceMode"]],
    ['{"persistenceMode": "maybe"}', ["persistenceMode", "maybe", "it must be a JSON boolean"]],
    ['{"logLevel": "loud"}', ["logLevel", "loud", "debug"]],
    ['{"devices": ["0", "banana"]}', ["devices", '"banana"', "PCI bus id"]],
    ['{"simulate": "999"}', ["simulate", "999", "1..256"]],
    ['{"nvmlTimeoutMs": 0}', ["nvmlTimeoutMs", "from 1 to 2147483647"]],
    ['{"healthIntervalMs": 3000000000}', ["healthIntervalMs", "from 1 to 2147483647"]],
    ['{"driverWaitMs": 2147483648}', ["driverWaitMs", "from 0 to 2147483647"]],
    ['{"__proto__": {"dryRun": true}}', ["unknown setting '__proto__'"]],
    ['{"toString": 1}', ["unknown setting 'toString'"]],
    ["{not json", ["not valid JSON"]],
    ["[1, 2]", ["must hold a JSON object"]],
  ])("%s", (contents, fragments) => {
    const path = file(contents);
    const message = configError(() => loadConfig({ path, overrides: {} }));
    for (const fragment of fragments) expect(message).toContain(fragment);
  });

  it("refuses a huge file before parsing it", () => {
    const path = file(`{"user": "${"x".repeat(100_000)}"}`);
    expect(configError(() => loadConfig({ path, overrides: {} }))).toContain("at most 65536 are accepted");
  });

  it("refuses a missing file named explicitly", () => {
    expect(configError(() => loadConfig({ path: join(dir, "absent.json"), overrides: {} }))).toContain(
      "cannot read config file",
    );
  });

  it("loads any JSON object either successfully or with a configuration error, never otherwise", () => {
    const keys = Object.keys(configSchema);
    const value = fc.oneof(
      fc.boolean(),
      fc.integer(),
      fc.string(),
      fc.array(fc.string(), { maxLength: 3 }),
      fc.constant(null),
    );
    fc.assert(
      fc.property(fc.dictionary(fc.oneof(fc.constantFrom(...keys), fc.string()), value, { maxKeys: 5 }), (object) => {
        const path = file(JSON.stringify(object));
        try {
          loadConfig({ path, overrides: {} });
          return true;
        } catch (err) {
          return err instanceof FatalError && err.exitCode === 78;
        }
      }),
      { numRuns: 300 },
    );
  });
});

describe("the libuv pool size", () => {
  it("is one thread per GPU, at least 4 and at most 128, simulated GPUs counted from --simulate", async () => {
    const { threadPoolSize } = await import("../../src/libuv-environment.js");
    expect(threadPoolSize(["node", "x", "--simulate=8"], {})).toBe(8);
    expect(threadPoolSize(["node", "x", "--simulate=1"], {})).toBe(4);
    expect(threadPoolSize(["node", "x", "--simulate=256"], {})).toBe(128);
    expect(threadPoolSize(["node", "x", "--simulate=dgx-h100"], {})).toBe(8);
    expect(threadPoolSize(["node", "x"], { GPU_PERSISTD_SIMULATE: "64" })).toBe(64);
  });

  it("counts real GPUs as the PCI devices sysfs lists under the nvidia driver (the unit hides /proc/driver/nvidia)", async () => {
    const { threadPoolSize } = await import("../../src/libuv-environment.js");
    const driver = join(dir, "sys-bus-pci-drivers-nvidia");
    mkdirSync(driver, { recursive: true });
    const gpus = Array.from({ length: 8 }, (_, i) => `0000:${(0x18 + i).toString(16)}:00.0`);
    for (const name of [...gpus, "bind", "unbind", "new_id", "remove_id", "uevent", "module"]) {
      writeFileSync(join(driver, name), "");
    }
    expect(threadPoolSize(["node", "x"], {}, driver)).toBe(8);
    expect(threadPoolSize(["node", "x"], {}, join(dir, "no-such-driver"))).toBe(4);
  });
});

describe("config file types", () => {
  const load = (values: object) => {
    const path = join(dir, "types.json");
    writeFileSync(path, JSON.stringify(values));
    return loadConfig({ path, overrides: {} }, {});
  };

  it("holds the metrics listen address parsed, and null when off", () => {
    expect(load({ metricsListen: "[::1]:9400" }).metricsListen).toEqual({ host: "::1", port: 9400 });
    expect(load({}).metricsListen).toBeNull();
  });

  it("takes GPU indexes as numbers", () => {
    expect(load({ devices: [0, 1, 2] }).devices.map((d) => d.text)).toEqual(["0", "1", "2"]);
  });

  it("refuses a string where JSON has a type of its own, naming the key and both types (exit 78)", () => {
    for (const [values, text] of [
      [{ persistenceMode: "yes" }, "persistenceMode in config file "],
      [{ devices: "0,1" }, "it must be a JSON array"],
      [{ healthIntervalMs: "100" }, "it must be a JSON number"],
    ] as const) {
      let error: unknown;
      try {
        load(values);
      } catch (err) {
        error = err;
      }
      expect(error).toMatchObject({ exitCode: 78 });
      expect((error as Error).message).toContain(text);
    }
  });

  it("a bad command-line value is bad usage (64), named by its option", () => {
    const source = {
      defaultPath: join(dir, "none.json"),
      overrides: { logFormat: "xml" as never },
      overrideOptions: { logFormat: "--log-format" },
    };
    expect(() => loadConfig(source, {})).toThrow(/option '--log-format': logFormat/);
    expect(() => loadConfig(source, {})).toThrow(expect.objectContaining({ exitCode: 64 }));
  });
});

describe("settings the command line overrides", () => {
  it("are named, so a user in the config file under the unit's --user is not lost silently", async () => {
    const { loadConfigWithNotes } = await import("../../src/config/load-config.js");
    const path = join(dir, "notes.json");
    writeFileSync(path, JSON.stringify({ user: "gpu-admin", logLevel: "warn" }));
    const { config, notes } = loadConfigWithNotes(
      { path, overrides: { user: "nvidia-persistenced", logLevel: "warn" }, overrideOptions: { user: "--user" } },
      {},
    );
    expect(config.user).toBe("nvidia-persistenced");
    expect(notes).toEqual([
      `user "gpu-admin" in config file ${path} is overridden by the command line (--user "nvidia-persistenced"); under systemd the unit's ExecStart sets it: change it there (systemctl edit gpu-persistd)`,
    ]);
  });
});
