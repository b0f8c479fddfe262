// Real systemd 252 in systemd-nspawn (about a second a boot): a Debian bookworm rootfs built
// once with mmdebstrap and cached, booted with a throw-away overlay, commands run inside
// with nsenter. docs/development.md (test/systemd/) says what the suite checks and needs.
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { ROOT } from "./daemon.js";

const ROOTFS_PACKAGES = "systemd,systemd-sysv,dbus,procps,man-db";
const REQUIRED_TOOLS = ["systemd-nspawn", "mmdebstrap", "nsenter", "pgrep", "systemd-analyze"];

/** Why this machine cannot run the suite, or null when it can. Never passed over in silence: tests fail with it. */
/** Polls `condition` every 100 ms (a container's state, read through nsenter) until it holds; throws naming `what` after `timeoutMs`. */
export async function until(condition: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function nspawnUnavailable(): string | null {
  if (process.getuid?.() !== 0) return "the real-systemd tests need root (systemd-nspawn, nsenter)";
  const missing = REQUIRED_TOOLS.filter((tool) => spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0);
  if (missing.length) {
    return `missing ${missing.join(", ")}: apt-get install -y --no-install-recommends systemd systemd-container mmdebstrap util-linux procps`;
  }
  return null;
}

/**
 * A Debian minbase rootfs of `suite` with `include`, cached under .ci-cache/NAME (about 20 s
 * the first time); `extra` are more mmdebstrap arguments (hooks).
 */
function cachedRootfs(name: string, include: string, suite = "bookworm", extra: string[] = []): string {
  const rootfs = join(ROOT, ".ci-cache", name);
  if (existsSync(join(rootfs, ".complete"))) return rootfs;
  const building = `${rootfs}.building`;
  rmSync(building, { recursive: true, force: true });
  mkdirSync(dirname(rootfs), { recursive: true });
  const args = [
    "--quiet",
    "--variant=minbase",
    ...(include ? [`--include=${include}`] : []),
    ...extra,
    suite,
    building,
  ];
  execFileSync("mmdebstrap", args, { stdio: ["ignore", "ignore", "inherit"] });
  writeFileSync(join(building, ".complete"), "");
  rmSync(rootfs, { recursive: true, force: true });
  renameSync(building, rootfs);
  return rootfs;
}

/** A bootable Debian 12 with systemd. Bump the name's suffix when ROOTFS_PACKAGES changes. */
export function bookwormRootfs(): string {
  return cachedRootfs("rootfs-bookworm-2", ROOTFS_PACKAGES);
}

/** A bootable Debian 13 (trixie) with systemd, for the package's "Debian 12 and later". */
export function trixieRootfs(): string {
  return cachedRootfs("rootfs-trixie-1", ROOTFS_PACKAGES, "trixie");
}

/**
 * Debian 12 with systemd and the servers a lab already runs: munge, Slurm 22.05 (slurmctld,
 * slurmd), Prometheus and its node exporter, Debian's nodejs (the package's dependency) and
 * curl, so the fleet suites install gpu-persistd with dpkg and reach no mirror. Prometheus
 * and the exporter are not started at boot: the container shares the host's network, and
 * the tests start their own on unusual ports. About 660 MB, built once (a minute or two).
 */
export function fleetRootfs(): string {
  return cachedRootfs(
    "rootfs-bookworm-fleet-1",
    `${ROOTFS_PACKAGES},nodejs,munge,slurm-wlm,prometheus,prometheus-node-exporter,curl`,
    "bookworm",
    ['--customize-hook=chroot "$1" systemctl disable prometheus.service prometheus-node-exporter.service'],
  );
}

/** A bootable Debian 11 (bullseye, systemd 247, nodejs 12 in its archive), for the standalone package. */
export function bullseyeRootfs(): string {
  return cachedRootfs("rootfs-bullseye-1", ROOTFS_PACKAGES, "bullseye");
}

/** Debian 12 minbase: what the debian:bookworm-slim image holds (apt, no systemd). */
export function bookwormSlimRootfs(): string {
  return cachedRootfs("rootfs-bookworm-slim-1", "");
}

/** Lays out the installed tree (scripts/stage.mjs) in a fresh directory. */
export function stageInstall(): string {
  const dir = mkdtempSync(join(tmpdir(), "gpu-persistd-stage-"));
  // The container binds this host's node at /usr/bin/node, as Debian's nodejs installs it.
  execFileSync(process.execPath, [join(ROOT, "scripts/stage.mjs"), dir, "--node=/usr/bin/node"], { cwd: ROOT });
  return dir;
}

export interface HolderWatch {
  samples: number;
  /** Per node: the samples in which no process held it. */
  gaps: Record<string, number>;
  /** Who held what at the last sample (pid -> nodes). */
  last: Record<string, string[]>;
}

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * A cgroup of its own for one container, under the caller's (cgroup2), or null where there
 * is no cgroup2 to make one in. nspawn --keep-unit puts the container in "payload" beside
 * itself, under the caller's cgroup: containers booted from the same cgroup (suites run side
 * by side) would share every unit's cgroup, and each systemd would find the other's
 * processes in its units (as pid 0: `systemctl kill` fails with EIO, stops wait them out).
 */
function ownCgroup(name: string): string | null {
  const mount = readFileSync("/proc/self/mountinfo", "utf8")
    .split("\n")
    .map((l) => l.split(" - "))
    .find(([, fs]) => fs?.startsWith("cgroup2 "))?.[0]
    ?.split(" ")[4];
  const self = /^0::(.*)$/m.exec(readFileSync("/proc/self/cgroup", "utf8"))?.[1];
  if (!mount || self === undefined) return null;
  const dir = join(mount, self, name);
  mkdirSync(dir);
  return dir;
}

/** Removes a cgroup left empty, and the empty cgroups nspawn made inside it. */
function removeCgroup(dir: string): void {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (entry.isDirectory()) removeCgroup(join(dir, entry.name));
  }
  rmdirSync(dir);
}

export class Container {
  readonly #nspawn: ChildProcess;
  readonly #cgroup: string | null;
  readonly pid1: number;

  private constructor(nspawn: ChildProcess, cgroup: string | null, pid1: number) {
    this.#nspawn = nspawn;
    this.#cgroup = cgroup;
    this.pid1 = pid1;
  }

  /** Boots the rootfs with `binds` ([host, guest], read-only) and waits until systemd is up. */
  static async boot(rootfs: string, binds: [string, string][]): Promise<Container> {
    const machine = `gpdtest${process.pid}${Date.now() % 100000}`;
    const cgroup = ownCgroup(machine);
    const args = [
      "--quiet",
      "--keep-unit",
      "--register=no",
      "--volatile=overlay",
      `--machine=${machine}`,
      "-D",
      rootfs,
      "-b",
      "--console=pipe",
      ...binds.map(([host, guest]) => `--bind-ro=${host}:${guest}`),
    ];
    // Into its own cgroup before it execs nspawn, so that the container is born there.
    const enter = cgroup ? `echo $$ >${cgroup}/cgroup.procs && ` : "";
    const nspawn = spawn("sh", ["-c", `${enter}exec systemd-nspawn "$@"`, "sh", ...args], {
      env: { ...process.env, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY: "1" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let console = "";
    nspawn.stdout?.on("data", (d: Buffer) => {
      console += d.toString();
    });
    nspawn.stderr?.on("data", (d: Buffer) => {
      console += d.toString();
    });
    // nspawn's first child can be a short-lived helper: look PID 1 up again until systemd answers.
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (nspawn.exitCode !== null) throw new Error(`systemd-nspawn exited (${nspawn.exitCode}):\n${console}`);
      const found = spawnSync("pgrep", ["-P", String(nspawn.pid)], { encoding: "utf8" }).stdout.trim();
      const pid1 = Number(found.split("\n")[0]) || 0;
      if (pid1) {
        const container = new Container(nspawn, cgroup, pid1);
        const state = container.run("systemctl is-system-running", 5000).stdout.trim();
        if (state === "running" || state === "degraded") return container;
      }
      if (Date.now() > deadline) throw new Error(`systemd did not finish booting in the container:\n${console}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** Runs a shell command inside the container, in all its namespaces. */
  run(command: string, timeoutMs = 30_000): Run {
    const result = spawnSync("nsenter", ["-t", String(this.pid1), "-a", "sh", "-c", command], {
      encoding: "utf8",
      timeout: timeoutMs,
    });
    return { code: result.status ?? -1, stdout: result.stdout ?? "", stderr: result.stderr ?? "" };
  }

  /** Starts a shell command inside the container without waiting for it. */
  start(command: string): ChildProcess {
    return spawn("nsenter", ["-t", String(this.pid1), "-a", "sh", "-c", command], {
      stdio: ["ignore", "pipe", "pipe"],
    });
  }

  /**
   * Starts test/helpers/holder-watcher.mjs inside (with the container's node): it samples
   * every few ms which of `nodes` some process holds. The returned function stops it and
   * resolves the samples and, per node, the samples in which nobody held it.
   */
  async watchHolders(nodes: readonly string[]): Promise<() => Promise<HolderWatch>> {
    this.writeFile(
      "/usr/local/lib/holder-watcher.mjs",
      readFileSync(join(ROOT, "test/helpers/holder-watcher.mjs"), "utf8"),
    );
    const child = this.start(`exec node /usr/local/lib/holder-watcher.mjs ${nodes.join(",")} /run/watch.json`);
    await new Promise<void>((resolve, reject) => {
      child.stdout?.on("data", (d: Buffer) => d.toString().includes("watching") && resolve());
      child.on("exit", (code) => reject(new Error(`the holder watcher exited (${code})`)));
    });
    return async () => {
      const exited = new Promise((r) => child.once("exit", r));
      this.check("kill -TERM $(cat /run/watch.json.pid)");
      await exited;
      const result = JSON.parse(this.check("cat /run/watch.json")) as HolderWatch;
      this.check("rm -f /run/watch.json /run/watch.json.pid");
      return result;
    };
  }

  /** Like run, but throws with the output when the command fails. */
  check(command: string, timeoutMs = 30_000): string {
    const result = this.run(command, timeoutMs);
    if (result.code !== 0) throw new Error(`'${command}' failed (${result.code}):\n${result.stdout}${result.stderr}`);
    return result.stdout;
  }

  /** Writes a file inside the container (its overlay root, seen from the host). */
  writeFile(path: string, contents: string): void {
    const hostPath = join(`/proc/${this.pid1}/root`, path);
    mkdirSync(dirname(hostPath), { recursive: true });
    writeFileSync(hostPath, contents);
  }

  /**
   * The shipped unit on `gpus` simulated GPUs (a drop-in, then a daemon-reload is the
   * caller's): ExecStart with --simulate and the simulator's config, the start limit lifted
   * unless `startLimit` (the suites start the unit more often than it allows), and `extra`
   * [Service] lines.
   */
  simulateDropIn(gpus: number, simConfig: string, o: { startLimit?: boolean; extra?: string[] } = {}): void {
    this.writeFile(
      "/etc/systemd/system/gpu-persistd.service.d/simulate.conf",
      [
        ...(o.startLimit ? [] : ["[Unit]", "StartLimitIntervalSec=0"]),
        "[Service]",
        "ExecStart=",
        `ExecStart=/usr/bin/gpu-persistd --user nvidia-persistenced --simulate=${gpus}`,
        `Environment=GPU_PERSISTD_SIM_CONFIG=${simConfig}`,
        ...(o.extra ?? []),
      ].join("\n"),
    );
  }

  /** The fds on `node` now, any process's (PID 1's fd store included), matched by inode. */
  fdsOn(node: string): string[] {
    return this.run(`find -L /proc/[0-9]*/fd -maxdepth 1 -samefile ${node} 2>/dev/null`)
      .stdout.trim()
      .split("\n")
      .filter(Boolean);
  }

  /** One property of a unit, as `systemctl show -p NAME --value` prints it. */
  unitProperty(unit: string, name: string): string {
    return this.check(`systemctl show ${unit} -p ${name} --value`).trim();
  }

  async poweroff(): Promise<void> {
    const exited = new Promise((resolve) => this.#nspawn.once("exit", resolve));
    if (this.#nspawn.exitCode === null) {
      this.run("systemctl poweroff", 5000);
      const timer = setTimeout(() => this.#nspawn.kill("SIGKILL"), 15_000);
      await exited;
      clearTimeout(timer);
    }
    // Best effort: an empty cgroup left behind costs nothing, and the container is gone.
    if (this.#cgroup) {
      try {
        removeCgroup(this.#cgroup);
      } catch {}
    }
  }
}

/**
 * Boots a container with gpu-persistd installed as the package would install it: the
 * staged tree bound read-only at /usr/lib/gpu-persistd, the host's node, the unit and
 * sysusers file in place, the user created.
 */
export async function bootWithDaemon(stage: string, rootfs: string = bookwormRootfs()): Promise<Container> {
  const node = realpathSync(process.execPath);
  const container = await Container.boot(rootfs, [
    [join(stage, "usr/lib/gpu-persistd"), "/usr/lib/gpu-persistd"],
    [node, "/usr/bin/node"],
  ]);
  for (const [from, to] of [
    ["usr/bin/gpu-persistd", "/usr/bin/gpu-persistd"],
    ["usr/lib/systemd/system/gpu-persistd.service", "/usr/lib/systemd/system/gpu-persistd.service"],
    ["usr/lib/systemd/system/gpu-persistd.socket", "/usr/lib/systemd/system/gpu-persistd.socket"],
    ["usr/lib/sysusers.d/gpu-persistd.conf", "/usr/lib/sysusers.d/gpu-persistd.conf"],
    ["usr/share/man/man8/gpu-persistd.8", "/usr/share/man/man8/gpu-persistd.8"],
    ["usr/lib/udev/rules.d/71-gpu-persistd.rules", "/usr/lib/udev/rules.d/71-gpu-persistd.rules"],
  ] as const) {
    container.writeFile(to, readFileSync(join(stage, from), "utf8"));
  }
  container.check("chmod 0755 /usr/bin/gpu-persistd && systemd-sysusers && systemctl daemon-reload");
  return container;
}
