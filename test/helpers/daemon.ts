// Runs the built daemon (dist/gpu-persistd.mjs) as a child process against the simulator,
// the way an admin or systemd would, and reads what it reports.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, afterEach } from "vitest";
import { type DaemonStatus, parseDaemonStatus } from "../../src/status/daemon-status.js";
import { VERSION } from "../../src/version.js";

export const ROOT = resolve(import.meta.dirname, "../..");
export const BUNDLE = join(ROOT, "dist/gpu-persistd.mjs");
export const SIM_LIBRARY = join(ROOT, "dist/libnvidia-ml-sim.so");

/** Keeps the machine's /etc/gpu-persistd/config.json out of the tests. */
const EMPTY_CONFIG_DIR = mkdtempSync(join(tmpdir(), "gpu-persistd-config-"));
const EMPTY_CONFIG = join(EMPTY_CONFIG_DIR, "config.json");
writeFileSync(EMPTY_CONFIG, "{}");
// Per test file (each imports this module afresh): vitest's workers end without running exit handlers.
afterAll(() => rmSync(EMPTY_CONFIG_DIR, { recursive: true, force: true }));
// Short event waits: a release waits for the one in flight (10 s by default) before it ends the NVML session.
const BASE_ENV = { PATH: process.env.PATH, GPU_PERSISTD_CONFIG: EMPTY_CONFIG };

export interface SimConfig {
  gpus?: number | Record<string, unknown>[];
  attachDelayMs?: number;
  setDelayMs?: number;
  faults?: Record<string, unknown>[];
  events?: Record<string, unknown>[];
  statePath?: string;
  callLogPath?: string;
  /** The stand-in nodes' directory: the simulated NVML session then holds an fd on each GPU it attaches, as real NVML does. */
  attachDir?: string;
  /** Recovery actions that come due: GPU `gpu` reports `action` from `afterMs` on. */
  recoveries?: { gpu: number; action: number; afterMs: number }[];
}

/** A scratch directory with a runtime dir, a simulator config and its call log. */
export class Scratch {
  readonly dir = mkdtempSync(join(tmpdir(), "gpu-persistd-test-"));
  readonly runtimeDir = join(this.dir, "run");
  readonly simConfigPath = join(this.dir, "sim.json");
  readonly callLogPath = join(this.dir, "calls.log");

  writeSimConfig(config: SimConfig): void {
    writeFileSync(this.simConfigPath, JSON.stringify({ callLogPath: this.callLogPath, ...config }));
  }

  /** Every NVML call the simulator served: [call, gpu index, return code]. */
  calls(): { call: string; gpu: number; ret: number; pid: number; time: number }[] {
    if (!existsSync(this.callLogPath)) return [];
    return readFileSync(this.callLogPath, "utf8")
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((line) => {
        const [time, pid, call, gpu, ret] = line.split(" ");
        return { time: Number(time), pid: Number(pid), call: call as string, gpu: Number(gpu), ret: Number(ret) };
      });
  }

  callCount(name: string, gpu?: number): number {
    return this.calls().filter((c) => c.call === name && (gpu === undefined || c.gpu === gpu)).length;
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class DaemonProcess {
  readonly child: ChildProcess;
  output = "";
  readonly exited: Promise<Exit>;

  /** Runs the bundle with `node` (default: the Node running the tests). */
  constructor(args: string[], env: NodeJS.ProcessEnv = {}, node = process.execPath) {
    this.child = spawn(node, [BUNDLE, ...args], {
      env: { ...BASE_ENV, ...env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child.stdout?.on("data", (d: Buffer) => {
      this.output += d.toString();
    });
    this.child.stderr?.on("data", (d: Buffer) => {
      this.output += d.toString();
    });
    this.exited = new Promise((resolve) => this.child.on("exit", (code, signal) => resolve({ code, signal })));
  }

  get pid(): number {
    return this.child.pid as number;
  }

  /** Resolves once `text` appears in the output; rejects if the process exits first. */
  async waitFor(text: string | RegExp, timeoutMs = 20_000): Promise<void> {
    const found = () => (typeof text === "string" ? this.output.includes(text) : text.test(this.output));
    const deadline = Date.now() + timeoutMs;
    let exited = false;
    void this.exited.then(() => {
      exited = true;
    });
    while (!found()) {
      if (exited) throw new Error(`daemon exited before printing ${text}:\n${this.output}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${text}:\n${this.output}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async waitReady(): Promise<void> {
    await this.waitFor(/ready: \d+\/\d+ GPUs held/);
  }

  /** Sends a signal and waits for the exit; kills it for good if it takes longer than `timeoutMs`. */
  async stop(signal: NodeJS.Signals = "SIGTERM", timeoutMs = 10_000): Promise<Exit & { ms: number }> {
    const start = performance.now();
    this.child.kill(signal);
    const timer = setTimeout(() => this.child.kill("SIGKILL"), timeoutMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return { ...exit, ms: performance.now() - start };
  }
}

/** Runs the bundle to completion (a client command, or a daemon that fails to start). */
/** Runs the bundle to completion; `prefix` goes before it (["setpriv", ..., node] to run as another user). */
export function runBundle(
  args: string[],
  env: NodeJS.ProcessEnv = {},
  timeoutMs = 20_000,
  node = process.execPath,
  prefix: string[] = [],
) {
  const [command, ...before] = prefix.length ? prefix : [node];
  const result = spawnSync(command as string, [...before, BUNDLE, ...args], {
    env: { ...BASE_ENV, ...env },
    encoding: "utf8",
    timeout: timeoutMs,
  });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr, output: result.stdout + result.stderr };
}

/** The running daemon's status, read with `status --json` and checked as every client checks it. */
export function statusJson(runtimeDir: string): DaemonStatus {
  const result = runBundle(["status", "--json", `--runtime-dir=${runtimeDir}`]);
  if (result.code !== 0) throw new Error(`status failed (${result.code}): ${result.output}`);
  return parseDaemonStatus(JSON.parse(result.stdout), VERSION);
}

/** Paths of the files the process holds open, from /proc/PID/fd. */
export function openFiles(pid: number): string[] {
  const dir = `/proc/${pid}/fd`;
  return readdirSync(dir).flatMap((fd) => {
    try {
      return [readlinkSync(join(dir, fd))];
    } catch {
      return [];
    }
  });
}

/**
 * What every daemon suite sets up per test: a scratch directory with its simulator config,
 * the daemons started in it, and their teardown after each test (registered on creation).
 */
export class DaemonFixture {
  #scratch: Scratch | null = null;
  readonly #daemons: DaemonProcess[] = [];

  constructor() {
    afterEach(async () => {
      for (const d of this.#daemons.splice(0)) {
        if (d.child.exitCode === null && d.child.signalCode === null) await d.stop("SIGKILL");
      }
      this.#scratch?.cleanup();
      this.#scratch = null;
    });
  }

  /** This test's scratch directory (prepare, start or run made it). */
  get scratch(): Scratch {
    if (!this.#scratch) throw new Error("no scratch directory yet: call prepare, start or run first");
    return this.#scratch;
  }

  /** A fresh scratch directory whose simulator config is `sim`. */
  prepare(sim: SimConfig = {}): Scratch {
    this.#scratch?.cleanup();
    this.#scratch = new Scratch();
    this.#scratch.writeSimConfig(sim);
    return this.#scratch;
  }

  /** The environment that points the daemon at this test's simulator config, plus `extra`. */
  env(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
    return { GPU_PERSISTD_SIM_CONFIG: this.scratch.simConfigPath, ...extra };
  }

  /** Starts a daemon on the current scratch directory's runtime dir, with `node`. */
  spawn(args: string[], env: NodeJS.ProcessEnv = {}, node = process.execPath): DaemonProcess {
    const d = new DaemonProcess([`--runtime-dir=${this.scratch.runtimeDir}`, ...args], this.env(env), node);
    this.#daemons.push(d);
    return d;
  }

  /** prepare(sim), then spawn. */
  start(args: string[], sim: SimConfig = {}, env: NodeJS.ProcessEnv = {}): DaemonProcess {
    this.prepare(sim);
    return this.spawn(args, env);
  }

  /** prepare(sim), then run the bundle to completion. */
  run(args: string[], sim: SimConfig = {}, env: NodeJS.ProcessEnv = {}) {
    this.prepare(sim);
    return runBundle([`--runtime-dir=${this.scratch.runtimeDir}`, ...args], this.env(env));
  }
}
