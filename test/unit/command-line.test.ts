import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseCommandLine } from "../../src/cli/command-line.js";
import { OPTIONS } from "../../src/cli/options.js";
import { FatalError } from "../../src/fatal-error.js";

function usageError(argv: string[]): FatalError {
  try {
    parseCommandLine(argv);
  } catch (err) {
    expect(err).toBeInstanceOf(FatalError);
    expect((err as FatalError).exitCode).toBe(64);
    return err as FatalError;
  }
  throw new Error(`expected a usage error for ${argv.join(" ")}`);
}

describe("nvidia-persistenced's command line", () => {
  it.each([
    [["-v"], "version"],
    [["--version"], "version"],
    [["-version"], "version"],
    [["-h"], "help"],
    [["--help"], "help"],
    [["-help"], "help"],
  ] as const)("%j asks for %s", (argv, what) => {
    expect(parseCommandLine([...argv])[what]).toBe(true);
  });

  it.each([[["-V"]], [["--verbose"]], [["-verbose"]]])("%j logs at debug level", (argv) => {
    expect(parseCommandLine(argv).overrides.logLevel).toBe("debug");
  });

  it.each([
    [["-u", "nvidia-persistenced"]],
    [["-unvidia-persistenced"]],
    [["--user=nvidia-persistenced"]],
    [["--user", "nvidia-persistenced"]],
    [["-user", "nvidia-persistenced"]],
    [["-user=nvidia-persistenced"]],
  ])("%j sets the user", (argv) => {
    expect(parseCommandLine(argv).overrides.user).toBe("nvidia-persistenced");
  });

  it.each([[["-g", "video"]], [["--group=video"]], [["--group", "video"]], [["-group", "video"]]])(
    "%j sets the group",
    (argv) => {
      expect(parseCommandLine(argv).overrides.group).toBe("video");
    },
  );

  it("takes bundled short flags", () => {
    const cl = parseCommandLine(["-Vf", "-u", "nobody"]);
    expect(cl.overrides).toMatchObject({ logLevel: "debug", user: "nobody" });
  });

  it.each([
    [["--persistence-mode"], true],
    [["--no-persistence-mode"], false],
    [["-no-persistence-mode"], false],
    [["--no-persistence-mode", "--persistence-mode"], true],
    [["--persistence-mode", "--no-persistence-mode"], false],
  ])("%j: persistence mode %s (the last one wins)", (argv, expected) => {
    expect(parseCommandLine(argv).overrides.persistenceMode).toBe(expected);
  });

  it.each([
    [["--uvm-persistence-mode"], true],
    [["--no-uvm-persistence-mode"], false],
  ])("%j: UVM persistence %s", (argv, expected) => {
    expect(parseCommandLine(argv).overrides.uvmPersistenceMode).toBe(expected);
  });

  it.each([[["--nvidia-cfg-path=/usr/lib"]], [["--nvidia-cfg-path", "/usr/lib"]]])("%j is accepted", (argv) => {
    expect(parseCommandLine(argv).overrides.nvidiaCfgPath).toBe("/usr/lib");
  });

  it.each([[["-f"]], [["--foreground"]]])("%j is accepted", (argv) => {
    expect(parseCommandLine(argv).command).toBe("run");
  });
});

describe("gpu-persistd's own options", () => {
  it.each([
    [["--simulate"], "on"],
    [["--simulate=8"], "8"],
    [["--simulate", "8"], "8"],
    [["--simulate=dgx-h100"], "dgx-h100"],
    [["--simulate", "dgx-h100"], "dgx-h100"],
    [["-simulate", "4"], "4"],
  ])("%j simulates %s", (argv, expected) => {
    expect(parseCommandLine(argv).overrides.simulate).toBe(expected);
  });

  it("does not take the next option as --simulate's value", () => {
    const cl = parseCommandLine(["--simulate", "--dry-run"]);
    expect(cl.overrides).toMatchObject({ simulate: "on", dryRun: true });
  });

  it("reads the remaining options", () => {
    const cl = parseCommandLine([
      "--runtime-dir=/tmp/x",
      "--config",
      "/tmp/c.json",
      "--nvml-library=/opt/libnvidia-ml.so.1",
      "--devices=0,GPU-abc, 0000:18:00.0",
      "--dry-run",
      "--log-format=json",
    ]);
    expect(cl.configPath).toBe("/tmp/c.json");
    expect(cl.overrides).toEqual({
      runtimeDir: "/tmp/x",
      nvmlLibrary: "/opt/libnvidia-ml.so.1",
      devices: ["0", "GPU-abc", "0000:18:00.0"],
      dryRun: true,
      logFormat: "json",
    });
  });

  it("reads the status command and its --json", () => {
    expect(parseCommandLine(["status", "--json", "--runtime-dir", "/x"])).toMatchObject({
      command: "status",
      json: true,
      overrides: { runtimeDir: "/x" },
    });
  });

  it("reads health-check and its --slurm", () => {
    expect(parseCommandLine(["health-check"])).toMatchObject({ command: "health-check", slurm: false });
    expect(parseCommandLine(["health-check", "--slurm", "--runtime-dir=/x"])).toMatchObject({
      command: "health-check",
      slurm: true,
      overrides: { runtimeDir: "/x" },
    });
  });

  it("reads doctor with --json, --root and setting overrides", () => {
    expect(parseCommandLine(["doctor", "--json", "--root=/img", "--metrics-listen", "127.0.0.1:9400"])).toMatchObject({
      command: "doctor",
      json: true,
      root: "/img",
      overrides: { metricsListen: "127.0.0.1:9400" },
    });
  });
});

describe("bad usage exits 64 and names the option", () => {
  it.each([
    [["--bogus"], "unrecognized option '--bogus'"],
    [["-x"], "unrecognized option '-x'"],
    [["--user"], "option '--user' needs a value"],
    [["--dry-run=yes"], "option '--dry-run' takes no value"],
    [["frobnicate"], "unknown command 'frobnicate'"],
    [["status", "extra"], "unexpected argument 'extra'"],
    [["status", "--root=/x"], "option '--root' is for 'doctor' only"],
    [["status", "--slurm"], "option '--slurm' is for 'health-check' only"],
    [["health-check", "3"], "unexpected argument '3'"],
  ])("%j", (argv, message) => {
    const err = usageError(argv);
    expect(err.message).toContain(message);
    expect(err.message).toContain("gpu-persistd --help");
  });

  it("never throws anything but a usage error, whatever the arguments", () => {
    const token = fc.oneof(
      fc.string(),
      fc.constantFrom(...OPTIONS.flatMap((o) => [`--${o.long}`, `-${o.long}`, o.short ? `-${o.short}` : "-"])),
    );
    fc.assert(
      fc.property(fc.array(token, { maxLength: 6 }), (argv) => {
        try {
          parseCommandLine(argv);
        } catch (err) {
          return err instanceof FatalError && err.exitCode === 64;
        }
        return true;
      }),
      { numRuns: 2000 },
    );
  });
});
