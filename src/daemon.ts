// The daemon's life: claim the runtime directory, bring every selected GPU up in parallel
// (telling systemd how it goes), serve status, check NVML's health to gate the watchdog,
// reload on SIGHUP, and on SIGTERM/SIGINT let go of everything and exit, never waiting on
// a hung NVML call.
import type { Server as HttpServer } from "node:http";
import type { Server } from "node:net";
import { hardExit } from "../native-bindings/libc.js";
import { Nvml } from "../native-bindings/nvml.js";
import { NvmlError, NvmlLoadError } from "../native-bindings/nvml-errors.js";
import { NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_NO_PERMISSION } from "../native-bindings/nvml-return-codes.js";
import { VERSION } from "./cli/help.js";
import type { Config } from "./config/schema.js";
import { type ControlRequest, startControlServer } from "./control/control-server.js";
import { ExitCode } from "./exit-codes.js";
import { FatalError } from "./fatal-error.js";
import { type BringUpContext, holdGpus, identifyGpus, selectGpus } from "./gpu/bring-up.js";
import { describeError } from "./gpu/describe-error.js";
import { deviceNodePath, holdDeviceNode, REAL_DEVICE_DIR, releaseDeviceNode } from "./gpu/device-node.js";
import { initWhenDriverLoads } from "./gpu/driver-wait.js";
import { type GpuRecord, type GpuStatus, gpuStatus } from "./gpu/gpu-record.js";
import { parseGpuSelector } from "./gpu/gpu-selector.js";
import { PersistenceSetter } from "./gpu/persistence-setter.js";
import { HealthMonitor } from "./health/health-monitor.js";
import { XidWaiter } from "./health/xid-events.js";
import { gpuLog, type Log } from "./log.js";
import { DaemonMetrics } from "./metrics/daemon-metrics.js";
import { type ListenAddress, parseLoopbackAddress } from "./metrics/listen-address.js";
import { startMetricsListener } from "./metrics/metrics-listener.js";
import { MetricsTextfile } from "./metrics/metrics-textfile.js";
import { dropPrivileges, resolveIdentity } from "./privileges.js";
import { NvPdStatus, type PciAddress, type PersistenceBackend } from "./rpc/persistence-program.js";
import { RpcServer } from "./rpc/rpc-server.js";
import type { RuntimeDir } from "./runtime-dir.js";
import { createStandInNodes, nvmlLibraryFor } from "./simulation.js";
import type { SystemdNotifier } from "./systemd/notify.js";
import { watchdogUsec } from "./systemd/notify.js";
import { Watchdog } from "./systemd/watchdog.js";

export interface DaemonStatus {
  pid: number;
  version: string;
  simulated: boolean;
  dryRun: boolean;
  uid: number;
  /** False while a GPU released over RPC must not be pinned by an NVML session. */
  nvmlSession: boolean;
  rpcRequests: number;
  memory: NodeJS.MemoryUsage;
  devices: GpuStatus[];
}

/** While bring-up runs, systemd's start timeout is pushed this far ahead, this often. */
const EXTEND_EVERY_MS = 5000;
const EXTEND_BY_USEC = 20_000_000;
/** Failures named in the STATUS line; the rest are counted. */
const STATUS_FAILURES_SHOWN = 3;

/** NVML that cannot start is "unavailable" (69), unless it said we lack permission (77). */
function exitCodeForNvml(err: unknown): ExitCode {
  return err instanceof NvmlError && err.code === NVML_ERROR_NO_PERMISSION
    ? ExitCode.NO_PERMISSION
    : ExitCode.UNAVAILABLE;
}

export interface DaemonDeps {
  log: Log;
  runtime: RuntimeDir;
  notifier: SystemdNotifier;
  /** Reads the configuration again (file, environment, the same command line), for SIGHUP. */
  reloadConfig: () => Config;
  /** Applies a new log level to the live logger. */
  setLogLevel: (level: Config["logLevel"]) => void;
  env: NodeJS.ProcessEnv;
}

export class Daemon {
  #config: Config;
  readonly #deps: DaemonDeps;
  readonly #log: Log;
  readonly #setter: PersistenceSetter;
  #nvml: Nvml | null = null;
  #gpus: GpuRecord[] = [];
  #deviceDir = REAL_DEVICE_DIR;
  #control: Server | null = null;
  #rpc: RpcServer | null = null;
  /** Whether the NVML session is initialised (it attaches, and so pins, every GPU). */
  #nvmlOpen = false;
  /** GPUs an RPC client released: while any is, the NVML session stays closed. */
  readonly #releasedByRpc = new Set<GpuRecord>();
  /** RPC state changes run one at a time, as the original's single-threaded server does. */
  #rpcQueue: Promise<unknown> = Promise.resolve();
  #health: HealthMonitor | null = null;
  #xid: XidWaiter | null = null;
  #watchdog: Watchdog | null = null;
  readonly #metrics = new DaemonMetrics();
  #metricsListener: HttpServer | null = null;
  #metricsTextfile: MetricsTextfile | null = null;
  #stopping = false;
  #reloading: Promise<void> | null = null;

  constructor(config: Config, deps: DaemonDeps) {
    this.#config = config;
    this.#deps = deps;
    this.#log = deps.log;
    this.#setter = new PersistenceSetter(config.dryRun);
  }

  status(): DaemonStatus {
    return {
      pid: process.pid,
      version: VERSION,
      simulated: this.#config.simulate !== "",
      dryRun: this.#config.dryRun,
      uid: process.getuid?.() ?? -1,
      nvmlSession: this.#nvmlOpen,
      rpcRequests: this.#rpc?.requests ?? 0,
      memory: process.memoryUsage(),
      devices: this.#gpus.map(gpuStatus),
    };
  }

  /** The Prometheus text of every metric, as served and written. */
  metricsText(): string {
    return this.#metrics.render({
      version: VERSION,
      devices: this.#gpus.map(gpuStatus),
      rpcRequests: this.#rpc?.requestCounts ?? new Map(),
    });
  }

  /** The systemd STATUS= text: `7/8 GPUs persistent; 00000000:1B:00.0: NVML_ERROR_NO_PERMISSION`. */
  statusLine(): string {
    const selected = this.#gpus.filter((g) => g.selected);
    const held = selected.filter((g) => g.fd !== null).length;
    const wanted = this.#config.persistenceMode;
    const failures = selected.filter(
      (g) => g.fd === null && (this.#releasedByRpc.has(g) || (wanted && (g.error !== null || g.lost))),
    );
    const why = (g: GpuRecord) =>
      g.lost ? "lost" : this.#releasedByRpc.has(g) ? "released" : (g.error ?? "").split(":")[0];
    const shown = failures.slice(0, STATUS_FAILURES_SHOWN).map((g) => `${g.pciBusId || `GPU ${g.index}`}: ${why(g)}`);
    if (failures.length > STATUS_FAILURES_SHOWN) shown.push(`${failures.length - STATUS_FAILURES_SHOWN} more`);
    const head = `${held}/${selected.length} GPUs persistent${wanted ? "" : " (started with --no-persistence-mode)"}`;
    return [head, ...shown].join("; ");
  }

  #loadNvml(): Nvml {
    const simulate = this.#config.simulate;
    const path = nvmlLibraryFor(this.#config, this.#deps.env);
    if (simulate !== "") {
      this.#log.info({ library: path }, `simulating GPUs (${simulate === "on" ? "as configured" : simulate})`);
    }
    try {
      return Nvml.load(path, this.#config.nvmlTimeoutMs);
    } catch (err) {
      if (err instanceof NvmlLoadError) throw new FatalError(ExitCode.UNAVAILABLE, err.message);
      throw err;
    }
  }

  async #initNvml(nvml: Nvml): Promise<void> {
    try {
      await initWhenDriverLoads(nvml, this.#config.driverWaitMs, this.#log, this.#deps.notifier);
    } catch (err) {
      if (err instanceof FatalError) throw err;
      const hint =
        err instanceof NvmlError && err.code === NVML_ERROR_DRIVER_NOT_LOADED
          ? " Load the NVIDIA kernel module (modprobe nvidia) and check that /dev/nvidiactl exists."
          : err instanceof NvmlError && err.code === NVML_ERROR_NO_PERMISSION
            ? " Run as root (as the systemd unit does)."
            : "";
      throw new FatalError(
        exitCodeForNvml(err),
        `cannot initialise NVML from ${nvml.path}: ${describeError(err)}.${hint}`,
      );
    }
  }

  /** Keeps systemd's start timeout ahead of a slow bring-up; returns the stopper. */
  #extendWhileSlow(progress: () => string): () => void {
    if (!this.#deps.notifier.enabled) return () => {};
    const timer = setInterval(
      () => this.#deps.notifier.extendTimeout(EXTEND_BY_USEC, `bringing GPUs up: ${progress()}`),
      EXTEND_EVERY_MS,
    );
    timer.unref();
    return () => clearInterval(timer);
  }

  /** Brings the GPUs up; throws FatalError when no selected GPU can be held. */
  async start(): Promise<void> {
    const config = this.#config;
    this.#log.info(
      { version: VERSION, runtimeDir: this.#deps.runtime.dir, dryRun: config.dryRun },
      `Started (${process.pid})`,
    );
    if (config.nvidiaCfgPath) {
      this.#log.info(`--nvidia-cfg-path ${config.nvidiaCfgPath} accepted and ignored: GPUs are found through NVML`);
    }
    // Before any GPU is touched: an unknown user must not leave GPUs half set up.
    const identity = resolveIdentity(config.user, config.group);
    const started = performance.now();
    let settled = 0;
    let total = 0;
    const stopExtending = this.#extendWhileSlow(() => `${settled}/${total} settled`);
    try {
      await this.#bringUp(
        (n) => {
          total = n;
        },
        () => {
          settled++;
        },
      );
    } finally {
      stopExtending();
    }
    this.#control = await startControlServer(
      this.#deps.runtime.controlSocket,
      (r) => this.#handleControl(r),
      this.#log,
    );
    // From here on NVML's setter would reach this daemon through the socket: close it first.
    this.#setter.closeForRpc();
    this.#log.debug("NVML's persistence setter closed: the RPC socket opens now");
    this.#rpc = await RpcServer.listen(this.#deps.runtime.rpcSocket, this.#rpcBackend(), this.#log);
    this.#log.info(`serving the persistence RPC protocol on ${this.#deps.runtime.rpcSocket}`);
    if (config.metricsListen) {
      // Before the drop: a port below 1024 needs root to bind, not to serve.
      const address = parseLoopbackAddress(config.metricsListen) as ListenAddress;
      this.#metricsListener = await startMetricsListener(address, () => this.metricsText());
      this.#log.info(`serving metrics on http://${config.metricsListen}/metrics`);
    }
    if (identity) {
      // Outside systemd the dropped user must still be able to remove its runtime files.
      dropPrivileges(identity, this.#deps.runtime.managedBySystemd ? [] : [this.#deps.runtime.dir]);
      this.#log.info(`now running as ${identity.description}`);
    }
    this.#startHealth();
    await this.#startXidWaiter();
    const selected = this.#gpus.filter((g) => g.selected).length;
    const held = this.#gpus.filter((g) => g.fd !== null).length;
    const bringUpMs = performance.now() - started;
    this.#metrics.recordBringUp(bringUpMs / 1000);
    if (config.metricsTextfile) {
      // After the drop: the first write proves the daemon's final user may write there.
      this.#metricsTextfile = new MetricsTextfile(
        config.metricsTextfile,
        () => this.metricsText(),
        this.#log,
        config.user || "root",
      );
      this.#metricsTextfile.start(config.healthIntervalMs);
      this.#log.info(`writing metrics to ${config.metricsTextfile} every ${config.healthIntervalMs} ms`);
    }
    this.#log.info({ held, selected, bringUpMs: Math.round(bringUpMs) }, `ready: ${held}/${selected} GPUs held`);
    this.#deps.notifier.ready(this.statusLine());
  }

  async #bringUp(onTotal: (n: number) => void, onSettled: () => void): Promise<void> {
    const config = this.#config;
    const nvml = this.#loadNvml();
    await this.#initNvml(nvml);
    this.#nvml = nvml;
    this.#nvmlOpen = true;
    this.#log.info({ driver: await nvml.driverVersion().catch(describeError) }, "NVML initialised");
    const count = await nvml.deviceCount().catch((err: unknown) => {
      throw new FatalError(ExitCode.UNAVAILABLE, `cannot count GPUs: ${describeError(err)}`);
    });
    onTotal(count);
    if (count === 0) {
      throw new FatalError(
        ExitCode.UNAVAILABLE,
        "NVML reports no GPUs: check that the NVIDIA driver sees them (nvidia-smi -L, dmesg | grep -i nvrm).",
      );
    }
    this.#gpus = await identifyGpus(nvml, count, this.#log, this.#config.bringUpConcurrency);
    const { selected, unmatched } = this.#select(config);
    onTotal(selected.length);
    if (config.simulate !== "") {
      this.#deviceDir = this.#deps.runtime.simDeviceDir;
      this.#deps.runtime.track(this.#deviceDir);
      createStandInNodes(
        this.#deviceDir,
        this.#gpus.filter((g) => g.minor >= 0).map((g) => g.minor),
      );
    }
    if (!config.persistenceMode) {
      this.#log.info("starting with every GPU released (--no-persistence-mode)");
      return;
    }
    await holdGpus(selected, { ...this.#holdContext(nvml), onSettled });
    if (selected.some((g) => g.fd !== null)) return;
    const first = selected.find((g) => g.error !== null);
    throw new FatalError(
      selected.length > 0 && selected.every((g) => g.error?.startsWith("NVML_ERROR_NO_PERMISSION"))
        ? ExitCode.NO_PERMISSION
        : ExitCode.FAILURE,
      selected.length === 0
        ? `no GPU is selected: ${unmatched.join("; ")}. Check --devices against 'nvidia-smi -L'.`
        : `no selected GPU could be held (first failure: GPU ${first?.index} ${first?.pciBusId}: ${first?.error})`,
    );
  }

  #holdContext(nvml: Nvml): BringUpContext {
    return {
      nvml,
      setter: this.#setter,
      deviceDir: this.#deviceDir,
      log: this.#log,
      concurrency: this.#config.bringUpConcurrency,
    };
  }

  #select(config: Config): ReturnType<typeof selectGpus> {
    const selectors = config.devices.map((d) => parseGpuSelector(d)).filter((s) => s !== null);
    const selection = selectGpus(this.#gpus, selectors);
    for (const message of selection.unmatched) this.#log.error(message);
    return selection;
  }

  #startHealth(): void {
    const nvml = this.#nvml;
    if (!nvml) return;
    const usec = watchdogUsec(this.#deps.env);
    // Several checks per watchdog interval, so one slow round does not cost a restart.
    const intervalMs = usec ? Math.min(this.#config.healthIntervalMs, usec / 1000 / 3) : this.#config.healthIntervalMs;
    this.#health = new HealthMonitor(
      nvml,
      {
        heldGpus: () => this.#gpus.filter((g) => g.fd !== null),
        nvmlOpen: () => this.#nvmlOpen,
        onDrift: (gpu, reason) => void this.#reHold(gpu, reason),
        onPersistenceOff: (gpu) => this.#persistenceOff(gpu),
        onLost: (gpu, reason) => this.#markLost(gpu, reason),
        onRound: (seconds, healthy) => this.#metrics.observeHealthRound(seconds, healthy),
      },
      Math.max(10, Math.round(intervalMs)),
      this.#log,
    );
    this.#health.start();
    if (usec && this.#deps.notifier.enabled) {
      const health = this.#health;
      this.#watchdog = new Watchdog(this.#deps.notifier, usec, () => health.lastHealthyAt, this.#log);
      this.#watchdog.start();
      this.#log.info(`watchdog: pinging every ${Math.round(usec / 2000)} ms while NVML health checks pass`);
    }
  }

  /** Drift: the fd no longer holds the node. Open it again (never through NVML's setter). */
  async #reHold(gpu: GpuRecord, reason: string): Promise<void> {
    const log = gpuLog(this.#log, { gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pciBusId });
    log.warn(`the GPU is not held as it should be: ${reason}; holding it again`);
    const old = gpu.fd;
    try {
      gpu.fd = await holdDeviceNode(this.#deviceDir, gpu.minor);
      gpu.nodePath = deviceNodePath(this.#deviceDir, gpu.minor);
      gpu.error = null;
      log.info("holding the GPU again");
    } catch (err) {
      gpu.fd = null;
      gpu.error = describeError(err);
      log.error(`cannot hold the GPU again: ${gpu.error}`);
      this.#deps.notifier.status(this.statusLine());
    }
    if (old !== null) {
      try {
        releaseDeviceNode(old);
      } catch {
        // Already closed under us: that was the drift.
      }
    }
  }

  /** GPUs already warned about: once each, not every health round. */
  readonly #persistenceOffWarned = new Set<GpuRecord>();

  #persistenceOff(gpu: GpuRecord): void {
    if (this.#config.dryRun || this.#persistenceOffWarned.has(gpu)) return;
    this.#persistenceOffWarned.add(gpu);
    gpuLog(this.#log, { gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pciBusId }).warn(
      "persistence mode reads disabled although the daemon holds this GPU (the legacy flag was cleared: nvidia-smi -pm 0?). " +
        "The daemon's open fd keeps the GPU initialised; NVML's setter is not called while the RPC socket listens.",
    );
  }

  async #startXidWaiter(): Promise<void> {
    const nvml = this.#nvml;
    if (!nvml || !this.#nvmlOpen) return;
    this.#xid = new XidWaiter(
      nvml,
      {
        gpuByHandle: (handle) => this.#gpus.find((g) => g.handle === handle),
        onLost: (gpu, reason) => this.#markLost(gpu, reason),
        onXid: (gpu, xid) => {
          gpu.xids[xid] = (gpu.xids[xid] ?? 0) + 1;
        },
      },
      this.#log,
    );
    try {
      const watched = await this.#xid.start(this.#gpus.filter((g) => g.handle !== null));
      this.#log.info(`watching Xid events on ${watched} GPUs`);
    } catch (err) {
      this.#xid = null;
      this.#log.warn(`cannot watch Xid events: ${describeError(err)}`);
    }
  }

  /** Stops the Xid waiter, waiting at most stopTimeoutMs for its NVML call to return. */
  async #stopXidWaiter(): Promise<void> {
    const xid = this.#xid;
    this.#xid = null;
    if (!xid) return;
    const limitMs = this.#config.stopTimeoutMs;
    await Promise.race([xid.stop(), new Promise((r) => setTimeout(r, limitMs).unref())]);
  }

  #markLost(gpu: GpuRecord, reason: string): void {
    if (gpu.lost) return;
    gpu.lost = true;
    gpu.error = reason;
    this.#release(gpu);
    gpuLog(this.#log, { gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pciBusId }).error(
      `GPU is lost (${reason}): released it; the other GPUs stay held. A reset or reboot is needed to recover it.`,
    );
    this.#deps.notifier.status(this.statusLine());
  }

  #release(gpu: GpuRecord): void {
    if (gpu.fd === null) return;
    releaseDeviceNode(gpu.fd);
    gpu.fd = null;
    gpu.nodePath = null;
  }

  #gpuAt(address: PciAddress): GpuRecord | undefined {
    return this.#gpus.find((g) => {
      const m = /^([0-9A-F]+):([0-9A-F]+):([0-9A-F]+)\./i.exec(g.pciBusId);
      return (
        m !== null &&
        Number.parseInt(m[1] as string, 16) === address.domain &&
        Number.parseInt(m[2] as string, 16) === address.bus &&
        Number.parseInt(m[3] as string, 16) === address.slot
      );
    });
  }

  #rpcBackend(): PersistenceBackend {
    return {
      mode: (address) => {
        const gpu = this.#gpuAt(address);
        return gpu ? gpu.fd !== null : null;
      },
      setMode: (address, enabled) => {
        const run = this.#rpcQueue.then(() => this.#setModeOverRpc(address, enabled));
        this.#rpcQueue = run.catch(() => {});
        return run;
      },
      // No simulated or supported GPU has coherent (NUMA) memory: nothing to online or offline.
      setNuma: (address) => (this.#gpuAt(address) ? NvPdStatus.SUCCESS : null),
    };
  }

  async #setModeOverRpc(address: PciAddress, enabled: boolean): Promise<NvPdStatus> {
    const gpu = this.#gpuAt(address);
    if (!gpu) return NvPdStatus.DEVICE_NOT_FOUND;
    const log = gpuLog(this.#log, { gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pciBusId });
    if (!enabled) {
      if (gpu.fd === null) return NvPdStatus.SUCCESS;
      this.#release(gpu);
      gpu.persistence = "disabled";
      this.#releasedByRpc.add(gpu);
      log.info("released the GPU at an RPC client's request: this daemon has no fd left on its node");
      await this.#closeNvmlSession();
      this.#deps.notifier.status(this.statusLine());
      return NvPdStatus.SUCCESS;
    }
    if (gpu.fd !== null) return NvPdStatus.SUCCESS;
    if (gpu.lost) return NvPdStatus.DRIVER;
    try {
      // Never NVML's setter here: with our socket up it would call this very daemon.
      gpu.fd = await holdDeviceNode(this.#deviceDir, gpu.minor);
      gpu.nodePath = deviceNodePath(this.#deviceDir, gpu.minor);
    } catch (err) {
      gpu.error = describeError(err);
      log.error(`cannot hold the GPU at an RPC client's request: ${gpu.error}`);
      return NvPdStatus.IO;
    }
    gpu.error = null;
    gpu.persistence = "enabled";
    this.#releasedByRpc.delete(gpu);
    log.info("holding the GPU at an RPC client's request");
    if (this.#releasedByRpc.size === 0) await this.#reopenNvmlSession();
    this.#deps.notifier.status(this.statusLine());
    return NvPdStatus.SUCCESS;
  }

  /** Ends the NVML session, which pins every GPU, so a released GPU is free for a reset. */
  async #closeNvmlSession(): Promise<void> {
    const nvml = this.#nvml;
    if (!nvml || !this.#nvmlOpen) return;
    // No new calls from here; the Xid wait and any health call in flight must return first.
    this.#nvmlOpen = false;
    await this.#stopXidWaiter();
    if (!(await nvml.idle(this.#config.stopTimeoutMs))) {
      this.#nvmlOpen = true;
      this.#log.warn("NVML calls are still in flight: the NVML session stays open, so it still pins every GPU");
      return;
    }
    try {
      await nvml.shutdown();
      this.#log.info("NVML session closed while a GPU is released; health checks pause until it is held again");
    } catch (err) {
      this.#log.warn(`nvmlShutdown failed: ${describeError(err)}`);
    }
  }

  async #reopenNvmlSession(): Promise<void> {
    const nvml = this.#nvml;
    if (!nvml || this.#nvmlOpen) return;
    try {
      await nvml.init();
      for (const gpu of this.#gpus) {
        if (gpu.pciBusId) gpu.handle = await nvml.handleByPciBusId(gpu.pciBusId);
      }
      this.#nvmlOpen = true;
      this.#log.info("every released GPU is held again: NVML session reopened, health checks resume");
      await this.#startXidWaiter();
    } catch (err) {
      this.#log.error(`cannot reopen the NVML session: ${describeError(err)}; health checks stay paused`);
    }
  }

  #handleControl(request: ControlRequest): unknown {
    if (request.command === "status") return this.status();
    throw new Error(`unknown command '${request.command}' (known: status)`);
  }

  /** SIGHUP: re-read the configuration and apply what can change while running. */
  reload(): Promise<void> {
    if (this.#stopping) return Promise.resolve();
    this.#reloading ??= this.#reload().finally(() => {
      this.#reloading = null;
    });
    return this.#reloading;
  }

  async #reload(): Promise<void> {
    this.#deps.notifier.reloading();
    this.#log.info("reloading the configuration (SIGHUP)");
    let next: Config;
    try {
      next = this.#deps.reloadConfig();
    } catch (err) {
      this.#log.error(`reload failed, keeping the running configuration: ${(err as Error).message}`);
      this.#deps.notifier.ready(this.statusLine());
      return;
    }
    const restartOnly = (
      [
        "runtimeDir",
        "nvmlLibrary",
        "simulate",
        "user",
        "group",
        "dryRun",
        "logFormat",
        "metricsListen",
        "metricsTextfile",
      ] as const
    ).filter((key) => JSON.stringify(next[key]) !== JSON.stringify(this.#config[key]));
    for (const key of restartOnly) {
      this.#log.warn(`${key} changed: it takes effect when the daemon restarts (systemctl restart gpu-persistd)`);
    }
    const previous = this.#config;
    this.#config = { ...next, ...Object.fromEntries(restartOnly.map((k) => [k, previous[k]])) };
    this.#deps.setLogLevel(this.#config.logLevel);
    await this.#applySelection();
    this.#log.info(`reload done: ${this.statusLine()}`);
    this.#deps.notifier.ready(this.statusLine());
  }

  /** Holds newly wanted GPUs and releases the ones no longer wanted; the rest are untouched. */
  async #applySelection(): Promise<void> {
    const nvml = this.#nvml;
    if (!nvml) return;
    this.#select(this.#config);
    const want = (g: GpuRecord) => this.#config.persistenceMode && g.selected && !g.lost;
    for (const gpu of this.#gpus) {
      if (gpu.fd !== null && !want(gpu)) {
        this.#release(gpu);
        gpuLog(this.#log, { gpuIndex: gpu.index, gpuUuid: gpu.uuid, gpuPciBusId: gpu.pciBusId }).info(
          "released the GPU (no longer selected)",
        );
      }
    }
    const toHold = this.#gpus.filter((g) => g.fd === null && want(g));
    await holdGpus(toHold, this.#holdContext(nvml));
  }

  /**
   * Lets go of everything and ends the process with `code`. Never waits on NVML longer
   * than stopTimeoutMs: a hung call cannot hold a reboot up.
   */
  async stop(code: ExitCode, reason: string): Promise<never> {
    if (this.#stopping) return new Promise<never>(() => {});
    this.#stopping = true;
    this.#deps.notifier.stopping();
    this.#log.info(`stopping: ${reason}`);
    this.#watchdog?.stop();
    this.#health?.stop();
    const xid = this.#xid;
    this.#xid = null;
    void xid?.stop();
    this.#control?.close();
    this.#rpc?.close();
    for (const gpu of this.#gpus) this.#release(gpu);
    this.#metricsListener?.close();
    this.#metricsListener?.closeAllConnections();
    // The file then says what is true after the stop: no GPU held.
    this.#metricsTextfile?.stop();
    for (const left of this.#deps.runtime.remove()) this.#log.warn(`could not remove ${left}`);
    const nvml = this.#nvmlOpen ? this.#nvml : null;
    this.#nvmlOpen = false;
    if (nvml) {
      // nvmlShutdown beside a call still inside NVML (the Xid wait, a health check) crashes
      // real NVML: give them stopTimeoutMs to return, else leave the session to the kernel.
      const started = performance.now();
      const limitMs = this.#config.stopTimeoutMs;
      if (!(await nvml.idle(limitMs))) {
        this.#log.warn(`exiting without a clean NVML shutdown: NVML calls still in flight after ${limitMs} ms`);
      } else {
        const left = Math.max(1, limitMs - (performance.now() - started));
        const limit = new Promise<string>((resolve) =>
          setTimeout(() => resolve(`nvmlShutdown did not return within ${limitMs} ms`), left).unref(),
        );
        const outcome = await Promise.race([nvml.shutdown().then(() => "", describeError), limit]);
        if (outcome) this.#log.warn(`exiting without a clean NVML shutdown: ${outcome}`);
      }
    }

    this.#log.info(`Shutdown (${process.pid})`);
    // _exit: process.exit() would wait for NVML calls still blocked on the thread pool.
    return hardExit(code);
  }
}
