// Everything one running daemon is made of. The composition root (daemon.ts) creates it;
// the start-up, reload and shutdown steps fill and empty it; the adapters read it.
import type { Server as HttpServer } from "node:http";
import type { Server } from "node:net";
import type { NvidiaKernel } from "../../native-bindings/nvidia-kernel.js";
import type { Config } from "../config/schema.js";
import type { GpuRegistry } from "../gpu/gpu-registry.js";
import { IntentBook } from "../gpu/intents.js";
import type { NvmlSession } from "../gpu/nvml-session.js";
import type { Reconciler } from "../gpu/reconciler.js";
import type { SessionCoordinator } from "../gpu/session-coordinator.js";
import { StateSince } from "../gpu/state-since.js";
import { GpuTelemetry } from "../health/gpu-telemetry.js";
import type { HealthMonitor } from "../health/health-monitor.js";
import type { XidEvents } from "../health/xid-events.js";
import type { Log } from "../log.js";
import { DaemonMetrics } from "../metrics/daemon-metrics.js";
import type { MetricsTextfile } from "../metrics/metrics-textfile.js";
import type { RpcServer } from "../rpc/rpc-server.js";
import type { RuntimeDir } from "../runtime-dir.js";
import { FdStore, storedNames } from "../systemd/fd-store.js";
import { type PassedFd, passedFds } from "../systemd/listen-fds.js";
import type { SystemdNotifier } from "../systemd/notify.js";
import type { Watchdog } from "../systemd/watchdog.js";
import { ReleaseLeases } from "./release-leases.js";

export interface DaemonDeps {
  log: Log;
  runtime: RuntimeDir;
  notifier: SystemdNotifier;
  /** Reads the configuration again (file, environment, the same command line), for SIGHUP. */
  reloadConfig: () => Config;
  /** Applies a new log level to the live logger. */
  setLogLevel: (level: Config["logLevel"]) => void;
  env: NodeJS.ProcessEnv;
  /** Ends the process at once (libc _exit in production; tests record the code). */
  exit: (code: number) => never;
  /** What systemd handed over (default: read from LISTEN_FDS in env); in-process tests hand fds over themselves. */
  passedFds?: PassedFd[];
  /** UVM registration retries while the NVLink fabric is not ready (default: every 1 s for 30 s, as NVIDIA's daemon). */
  uvmRetry?: { everyMs: number; forMs: number };
}

export class DaemonContext {
  config: Config;
  readonly deps: DaemonDeps;
  readonly metrics = new DaemonMetrics();
  /** Per GPU: power, P-state, energy since held, the initialisation paid, the recovery action. */
  readonly telemetry = new GpuTelemetry();
  session: NvmlSession | null = null;
  registry: GpuRegistry | null = null;
  /** What is wanted of each GPU, and by whom: read by the reconciler, the state record and every reader. */
  readonly intents = new IntentBook();
  /** The one writer of what holds a GPU: adapters change intents, then await it. */
  reconciler: Reconciler | null = null;
  coordinator: SessionCoordinator | null = null;
  /** The driver's ioctls (or the simulator's stand-in), for the registry's holds and probes. */
  kernel: NvidiaKernel | null = null;
  readonly leases: ReleaseLeases;
  /** When each GPU entered its present state, for the status record. */
  readonly since = new StateSince();
  control: Server | null = null;
  rpc: RpcServer | null = null;
  health: HealthMonitor | null = null;
  xid: XidEvents | null = null;
  watchdog: Watchdog | null = null;
  metricsListener: HttpServer | null = null;
  metricsTextfile: MetricsTextfile | null = null;
  /** systemd's fd store: holds the GPUs across restarts (a no-op outside systemd). */
  readonly fdStore: FdStore;
  /** What systemd handed over at start (LISTEN_FDS), read once. */
  readonly passedFds: PassedFd[];
  /** The socket unit's listening sockets, by path. */
  handedSockets: ReadonlyMap<string, number> = new Map();
  /**
   * Resolved once bring-up's holds settled and the session coordinator runs. The sockets are
   * served before (NVML routes persistence calls there): a change a client asks for meanwhile
   * waits for it, a query is answered at once.
   */
  readonly broughtUp: { promise: Promise<void>; resolve: () => void };
  /** READY=1 was sent: every selected GPU has settled. */
  ready = false;
  /** The last SIGHUP's outcome: when, and why it was refused (null: applied); null before any. */
  lastReload: { at: Date; refused: string | null } | null = null;
  stopping = false;

  constructor(config: Config, deps: DaemonDeps) {
    this.config = config;
    this.deps = deps;
    this.passedFds = deps.passedFds ?? passedFds(deps.env);
    this.fdStore = new FdStore(deps.notifier, storedNames(this.passedFds));
    this.leases = new ReleaseLeases(this.fdStore, deps.log);
    let resolve = (): void => {};
    const promise = new Promise<void>((r) => {
      resolve = r;
    });
    this.broughtUp = { promise, resolve };
  }

  get log(): Log {
    return this.deps.log;
  }
}
