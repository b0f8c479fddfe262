// The .deb, built once per test file from the current dist/ (scripts/package.mjs).
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { ROOT } from "./daemon.js";
import { Container, nspawnUnavailable } from "./nspawn.js";

export const VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;

/** The Debian releases packages are built for, each in its own directory of dist/. */
export type Suite = "debian-12" | "debian-13";

/** The simulator's package for `suite` (under dist/), built beside the daemon's from the same build. */
export const simulatorDeb = (suite: Suite = "debian-12"): string =>
  `${suite}/gpu-persistd-simulator_${VERSION}_amd64.deb`;

/** The daemon's package for `suite`, under dist/. */
export const daemonDeb = (suite: Suite = "debian-12"): string => `${suite}/gpu-persistd_${VERSION}_amd64.deb`;

/** Builds every package; returns the daemon's for `suite`, as a path under dist/. */
export function buildDeb(suite: Suite = "debian-12"): string {
  execFileSync(process.execPath, ["scripts/package.mjs"], { cwd: ROOT, stdio: ["ignore", "ignore", "inherit"] });
  return daemonDeb(suite);
}

export const APT = "DEBIAN_FRONTEND=noninteractive apt-get -y -q -o Dpkg::Use-Pty=0";
/** A drop-in in /run: gone with the boot, so not a file the package must clean. */
export const SIMULATE_DROP_IN = "/run/systemd/system/gpu-persistd.service.d/simulate.conf";
export const SIM_CONFIG = "/run/gpu-persistd-sim.json";

/**
 * Simulated GPUs for the package's unit. The simulator keeps persistence in a state file,
 * which doctor's NVML reads too (real NVML would ask the daemon over its socket).
 */
export function simulateInUnit(container: Container, gpus: number, extraOptions = ""): void {
  container.writeFile(SIM_CONFIG, JSON.stringify({ statePath: "/run/nvidia-persistenced/sim-state" }));
  container.writeFile(
    SIMULATE_DROP_IN,
    [
      "[Service]",
      "ExecStart=",
      `ExecStart=/usr/bin/gpu-persistd --user nvidia-persistenced --simulate=${gpus}${extraOptions ? ` ${extraOptions}` : ""}`,
      `Environment=GPU_PERSISTD_SIM_CONFIG=${SIM_CONFIG}`,
      "",
    ].join("\n"),
  );
}

/** The package built and a booted `rootfs()` with dist/ at /mnt/dist, for one test file. */
export interface PackageHost {
  /** The .deb's file name in /mnt/dist. */
  deb: string;
  /** apt-get's arguments for both packages: the daemon and the simulator that --simulate needs. */
  withSimulator: string;
  container: Container;
}

/**
 * Builds the package and boots `rootfs()` before the file's tests (failing them, with the
 * reason, where this machine cannot: `unavailable`), and powers it off after them.
 */
export function packageHost(
  rootfs: () => string,
  unavailable = nspawnUnavailable(),
  suite: Suite = "debian-12",
): PackageHost {
  const host = { deb: "", withSimulator: "", container: undefined as unknown as Container };
  beforeAll(async () => {
    if (unavailable) throw new Error(`cannot run the package suite: ${unavailable}`);
    host.deb = buildDeb(suite);
    host.withSimulator = `/mnt/dist/${host.deb} /mnt/dist/${simulatorDeb(suite)}`;
    host.container = await Container.boot(rootfs(), [[join(ROOT, "dist"), "/mnt/dist"]]);
  }, 180_000);
  afterAll(async () => {
    await host.container?.poweroff();
  });
  return host;
}
