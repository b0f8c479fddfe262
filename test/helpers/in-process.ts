// The fast layer's harness: the daemon's own modules in this process, over the simulated
// libnvidia-ml loaded through the real koffi binding. Ordering comes from the simulator's
// gates (a call blocks until the test opens the gate), never from sleeping.
import { mkdirSync, readdirSync, readlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import koffi from "koffi";
import pino from "pino";
import { afterEach } from "vitest";
import type { ConfigValues } from "../../src/config/schema.js";
import { newConfig, parsedConfig } from "../../src/config/schema.js";
import { Daemon } from "../../src/daemon/daemon.js";
import { RuntimeDir } from "../../src/runtime-dir.js";
import { SystemdNotifier } from "../../src/systemd/notify.js";
import type { StopKind } from "../../src/systemd/stop-kind.js";
import { Scratch, SIM_LIBRARY, type SimConfig } from "./daemon.js";
import { boundUnixSocket } from "./unix-socket.js";

const sim = koffi.load(SIM_LIBRARY);
const simReset = sim.func("void gpuPersistdSimReset()");
const simOpenGate = sim.func("void gpuPersistdSimOpenGate()");
const simAwaitGated = sim.func("int gpuPersistdSimAwaitGated(int count, int timeoutMs)");
const simFallOffTheBus = sim.func("void gpuPersistdSimFallOffTheBus(int gpu)");
const simGpuState = sim.func("int gpuPersistdSimGpuState(int gpu)");

/** As the simulated driver sees GPU `index`: held by an open node, kept initialised by the legacy flag, or torn down. */
/** A root client, as the RPC server's peer credentials name it, for calls made straight to the backend. */
export const ROOT = { uid: 0, gid: 0, pid: 4242 };

export function gpuState(index: number): "held" | "initialised" | "torn down" {
  const state = simGpuState(index) as number;
  if (state < 0) throw new Error(`the simulator has no GPU ${index}`);
  return state === 2 ? "held" : state === 1 ? "initialised" : "torn down";
}
const simSetRecoveryAction = sim.func("void gpuPersistdSimSetRecoveryAction(int gpu, int action)");

/** GPU `index` falls off the bus now: NVML answers GPU_IS_LOST for it, its Xid 79 is queued, its node's ioctls fail. */
export function fallOffTheBus(index: number): void {
  simFallOffTheBus(index);
}

/** The driver now reports NVML recovery action `action` for GPU `index` (0 none, 1 reset, 3 drain P2P; -1 not reported). */
export function setRecoveryAction(index: number, action: number): void {
  simSetRecoveryAction(index, action);
}

/** Resolves once `count` NVML calls wait at the simulator's gate (on a pool thread, not by polling). */
export function gated(count: number, timeoutMs = 10_000): Promise<number> {
  return new Promise((resolve, reject) =>
    simAwaitGated.async(count, timeoutMs, (err: Error | null, n: number) => {
      if (err) reject(err);
      else if (n < count) reject(new Error(`only ${n} of ${count} NVML calls reached the gate in ${timeoutMs} ms`));
      else resolve(n);
    }),
  );
}

export function openGate(): void {
  simOpenGate();
}

/** sd_notify messages, recorded in order instead of sent. */
export class RecordingNotifier extends SystemdNotifier {
  readonly sent: Record<string, string>[] = [];

  constructor() {
    super({}, () => {});
  }

  override get enabled(): boolean {
    return true;
  }

  override send(fields: Record<string, string | number>): boolean {
    this.sent.push(Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, String(v)])));
    return true;
  }

  /** Every message that has `key`. */
  with(key: string): Record<string, string>[] {
    return this.sent.filter((m) => key in m);
  }
}

const libc = koffi.load("libc.so.6");
const dup = libc.func("int dup(int fd)");
const closeFd = libc.func("int close(int fd)");
/**
 * A notifier that also plays systemd's fd store: FDSTORE=1 keeps a duplicate of each fd
 * under its FDNAME (as PID 1 does), FDSTOREREMOVE=1 closes them, and handBack() lists them
 * as the next start would get them. Share one between two daemons to restart in-process.
 */
export class FdStoreNotifier extends RecordingNotifier {
  readonly stored = new Map<string, number[]>();

  override send(fields: Record<string, string | number>, fds: readonly number[] = []): boolean {
    super.send(fields);
    const name = String(fields.FDNAME ?? "stored");
    if (fields.FDSTORE)
      this.stored.set(name, [...(this.stored.get(name) ?? []), ...fds.map((fd) => dup(fd) as number)]);
    if (fields.FDSTOREREMOVE) {
      for (const fd of this.stored.get(name) ?? []) closeFd(fd);
      this.stored.delete(name);
    }
    return true;
  }

  /** What the next start is handed (LISTEN_FDS), in the store's order; the store keeps its own copies. */
  handBack(): { fd: number; name: string }[] {
    return [...this.stored].flatMap(([name, fds]) => fds.map((fd) => ({ fd: dup(fd) as number, name })));
  }

  /** The unit is stopped for good: PID 1 closes everything it kept. */
  flush(): void {
    for (const fds of this.stored.values()) for (const fd of fds) closeFd(fd);
    this.stored.clear();
  }
}

/** The end of the process: shutdown's `_exit`, which tests catch. */
export class ProcessExit extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

export interface LogLine {
  level: number;
  msg: string;
  gpuIndex?: number;
  [key: string]: unknown;
}

/** One in-process daemon on simulated GPUs. */
export class InProcessDaemon {
  readonly scratch: Scratch;
  readonly notifier: RecordingNotifier;
  readonly lines: LogLine[] = [];
  readonly daemon: Daemon;
  /** What a SIGHUP reads: tests change it to change the "file". */
  nextConfig: Partial<ConfigValues> = {};
  exitCode: number | null = null;

  constructor(
    scratch: Scratch,
    config: Partial<ConfigValues>,
    {
      notifier = new RecordingNotifier(),
      passedFds,
    }: { notifier?: RecordingNotifier; passedFds?: { fd: number; name: string }[] } = {},
  ) {
    this.scratch = scratch;
    this.notifier = notifier;
    const log = pino(
      { level: "debug", base: null, timestamp: false },
      { write: (l: string) => this.lines.push(JSON.parse(l)) },
    );
    const base: ConfigValues = { ...defaults(), runtimeDir: scratch.runtimeDir, simulate: "on", ...config };
    this.nextConfig = base;
    const runtime = RuntimeDir.claim(scratch.runtimeDir, {});
    this.daemon = new Daemon(parsedConfig(base), {
      log,
      runtime,
      notifier: this.notifier,
      env: { GPU_PERSISTD_SIM_CONFIG: scratch.simConfigPath },
      reloadConfig: () => parsedConfig({ ...base, ...this.nextConfig }),
      setLogLevel: (level) => {
        log.level = level;
      },
      exit: (code) => {
        this.exitCode = code;
        throw new ProcessExit(code);
      },
      uvmRetry: { everyMs: 5, forMs: 50 },
      ...(passedFds ? { passedFds } : {}),
    });
  }

  get context() {
    return this.daemon.context;
  }

  get registry() {
    const registry = this.daemon.context.registry;
    if (!registry) throw new Error("no registry yet: the daemon has not identified its GPUs");
    return registry;
  }

  /** Log messages, in order. */
  messages(): string[] {
    return this.lines.map((l) => (l.gpuIndex === undefined ? l.msg : `GPU ${l.gpuIndex}: ${l.msg}`));
  }

  /**
   * Stops as the unit's ExecStop= does before a restart (SIGUSR2: the fd store keeps the
   * GPUs), or for good as SIGTERM does; resolves the exit code.
   */
  async stop(kind: StopKind = "keep"): Promise<number> {
    return this.daemon.stop(0, "test", kind).catch((err: unknown) => {
      if (err instanceof ProcessExit) return err.code;
      throw err;
    });
  }
}

function defaults(): ConfigValues {
  const conf = newConfig();
  conf.validate({ allowed: "strict" });
  return conf.getProperties();
}

/** Fds of this process open on the simulator's stand-in node for `minor` (or "uvm": nvidia-uvm). */
export function fdsOn(runtimeDir: string, minor: number | "uvm"): number[] {
  const target = `${runtimeDir}/sim-dev/nvidia${minor === "uvm" ? "-uvm" : minor}`;
  return readdirSync("/proc/self/fd").flatMap((fd) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`) === target ? [Number(fd)] : [];
    } catch {
      return [];
    }
  });
}

/**
 * Per test: a scratch directory, the simulator reset to `sim`, and the daemons stopped and
 * every gate opened afterwards.
 */
export class InProcessFixture {
  readonly #daemons: InProcessDaemon[] = [];
  #scratch: Scratch | null = null;

  constructor() {
    afterEach(async () => {
      openGate();
      const daemons = this.#daemons.splice(0);
      for (const d of daemons) {
        if (d.exitCode === null) await d.stop();
      }
      // The reset also ends an event wait in flight; the next test starts with none.
      simReset();
      for (const d of daemons) await d.context.session?.nvml.idle(5000);
      this.#scratch?.cleanup();
      this.#scratch = null;
    });
  }

  get scratch(): Scratch {
    if (!this.#scratch) throw new Error("call daemon() first");
    return this.#scratch;
  }

  /**
   * A daemon (not started) on simulated GPUs configured by `sim`. With `attach`, the
   * simulated NVML session holds an fd on each GPU's stand-in node, as real NVML does. With
   * `socketUnit`, both sockets are bound in the runtime directory and handed over, as
   * gpu-persistd.socket does before the daemon runs.
   */
  daemon(
    sim: SimConfig,
    config: Partial<ConfigValues> = {},
    {
      attach = false,
      notifier,
      passedFds,
      socketUnit = false,
    }: {
      attach?: boolean;
      notifier?: RecordingNotifier;
      passedFds?: { fd: number; name: string }[];
      socketUnit?: boolean;
    } = {},
  ): InProcessDaemon {
    simReset();
    this.#scratch = new Scratch();
    if (socketUnit) {
      mkdirSync(this.#scratch.runtimeDir, { mode: 0o755 });
      passedFds = ["socket", "gpu-persistd.sock"].map((name) => ({
        fd: boundUnixSocket(join(this.#scratch?.runtimeDir ?? "", name), "stream"),
        name: "gpu-persistd.socket",
      }));
    }
    writeFileSync(this.#scratch.callLogPath, "");
    this.#scratch.writeSimConfig(attach ? { attachDir: join(this.#scratch.runtimeDir, "sim-dev"), ...sim } : sim);
    // The simulator reads its configuration from the environment at nvmlInit; --simulate
    // points its persistence routing and stand-ins at the runtime directory, as here.
    process.env.GPU_PERSISTD_SIM_CONFIG = this.#scratch.simConfigPath;
    process.env.GPU_PERSISTD_SIM_PERSISTENCE_SOCKET = join(this.#scratch.runtimeDir, "socket");
    process.env.GPU_PERSISTD_SIM_DEVICE_DIR = join(this.#scratch.runtimeDir, "sim-dev");
    delete process.env.GPU_PERSISTD_SIM_GPUS;
    delete process.env.GPU_PERSISTD_SIM_PROFILE;
    const d = new InProcessDaemon(this.#scratch, config, {
      ...(notifier ? { notifier } : {}),
      ...(passedFds ? { passedFds } : {}),
    });
    this.#daemons.push(d);
    return d;
  }

  /**
   * The same daemon started again in this test's scratch directory, as systemd restarts it:
   * what the store kept is handed over. The simulator keeps its state (as the driver does).
   */
  restart(previous: InProcessDaemon, config: Partial<ConfigValues> = {}, sim?: SimConfig): InProcessDaemon {
    const scratch = previous.scratch;
    if (sim) scratch.writeSimConfig(sim);
    simReset();
    const notifier = previous.notifier;
    const passedFds = notifier instanceof FdStoreNotifier ? notifier.handBack() : [];
    const d = new InProcessDaemon(scratch, config, { notifier, passedFds });
    this.#daemons.push(d);
    return d;
  }
}
