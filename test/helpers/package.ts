// The .deb, built once per test file from the current dist/ (scripts/package.mjs).
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { ROOT } from "./daemon.js";
import { Container, nspawnUnavailable } from "./nspawn.js";

export const VERSION = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")).version as string;

/**
 * The Debian releases packages are built for, each in its own directory of dist/;
 * "standalone" is gpu-persistd-standalone (its own Node), for Debian 11 and Ubuntu 20.04/22.04.
 */
export type Suite = "debian-12" | "debian-13" | "standalone";

/** The simulator's package for `suite` (under dist/), built beside the daemon's from the same build. */
export const simulatorDeb = (suite: Suite = "debian-12"): string =>
  `${suite}/gpu-persistd-simulator_${VERSION}_amd64.deb`;

/** The daemon's package for `suite`, under dist/. */
export const daemonDeb = (suite: Suite = "debian-12"): string =>
  suite === "standalone"
    ? `standalone/gpu-persistd-standalone_${VERSION}_amd64.deb`
    : `${suite}/gpu-persistd_${VERSION}_amd64.deb`;

/** The tarball and the .rpm built from the standalone package's tree, under dist/. */
export const TARBALL = `standalone/gpu-persistd-${VERSION}-linux-x64.tar.gz`;
export const RPM = `standalone/gpu-persistd-${VERSION}-1.x86_64.rpm`;

/**
 * Builds the packages `suite` needs and returns the daemon's, as a path under dist/: the
 * Debian 12 and 13 ones for those (a minute less than all), every package for "standalone",
 * whose tests also install the regular one.
 */
export function buildDeb(suite: Suite = "debian-12"): string {
  const only = suite === "standalone" ? [] : ["--only=debian"];
  execFileSync(process.execPath, ["scripts/package.mjs", ...only], {
    cwd: ROOT,
    stdio: ["ignore", "ignore", "inherit"],
  });
  return daemonDeb(suite);
}

/** Every file outside what apt, dpkg, logs and the boot itself change, then the users and groups. */
export const SNAPSHOT = [
  "find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp",
  "-o -path /var/cache -o -path /var/log -o -path /var/lib/apt -o -path /var/lib/dpkg \\) -prune -o -print | sort;",
  "echo '--- users'; cat /etc/passwd /etc/group",
].join(" ");

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

const built = new Map<Suite, string>();

/**
 * The checks `gpu-persistd doctor --json` fails on the installed system (exit 1 expected:
 * the containers have no NVIDIA driver), each failure's fix checked to be there.
 */
export function doctorFailures(container: Container): string[] {
  const doctor = container.run(`GPU_PERSISTD_SIM_CONFIG=${SIM_CONFIG} gpu-persistd doctor --json`);
  if (doctor.code !== 1) throw new Error(`doctor exited ${doctor.code}, not 1:\n${doctor.stdout}${doctor.stderr}`);
  const checks = JSON.parse(doctor.stdout).checks as { id: string; ok: boolean; fix?: string }[];
  const failed = checks.filter((c) => !c.ok);
  if (failed.some((c) => !c.fix)) throw new Error(`doctor failed a check without a fix:\n${doctor.stdout}`);
  if (failed.some((c) => c.id === "kernel-module" && !c.fix?.includes("modprobe nvidia"))) {
    throw new Error(`doctor's fix for the kernel module does not say modprobe nvidia:\n${doctor.stdout}`);
  }
  return failed.map((c) => c.id);
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
    // Hosts of one file (and suite) share one build.
    if (!built.has(suite)) built.set(suite, buildDeb(suite));
    host.deb = built.get(suite) as string;
    host.withSimulator = `/mnt/dist/${host.deb} /mnt/dist/${simulatorDeb(suite)}`;
    host.container = await Container.boot(rootfs(), [[join(ROOT, "dist"), "/mnt/dist"]]);
  }, 180_000);
  afterAll(async () => {
    await host.container?.poweroff();
  });
  return host;
}
