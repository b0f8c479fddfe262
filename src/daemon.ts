// The daemon's life: claim the runtime directory, bring every selected GPU up in parallel,
// serve status, and on SIGTERM/SIGINT let go of everything and exit, never waiting on a
// hung NVML call.
import type { Server } from "node:net";
import { hardExit } from "../native-bindings/libc.js";
import { Nvml } from "../native-bindings/nvml.js";
import { NvmlError, NvmlLoadError } from "../native-bindings/nvml-errors.js";
import {
  NVML_ERROR_DRIVER_NOT_LOADED,
  NVML_ERROR_LIB_RM_VERSION_MISMATCH,
  NVML_ERROR_LIBRARY_NOT_FOUND,
  NVML_ERROR_NO_PERMISSION,
} from "../native-bindings/nvml-return-codes.js";
import { VERSION } from "./cli/help.js";
import type { Config } from "./config/schema.js";
import { type ControlRequest, startControlServer } from "./control/control-server.js";
import { ExitCode } from "./exit-codes.js";
import { FatalError } from "./fatal-error.js";
import { holdGpus, identifyGpus, selectGpus } from "./gpu/bring-up.js";
import { describeError } from "./gpu/describe-error.js";
import { REAL_DEVICE_DIR, releaseDeviceNode } from "./gpu/device-node.js";
import { type GpuRecord, gpuStatus } from "./gpu/gpu-record.js";
import { parseGpuSelector } from "./gpu/gpu-selector.js";
import { PersistenceSetter } from "./gpu/persistence-setter.js";
import type { Log } from "./log.js";
import type { RuntimeDir } from "./runtime-dir.js";
import { configureSimulator, createStandInNodes, simulatorLibraryPath } from "./simulation.js";

export interface DaemonStatus {
  pid: number;
  version: string;
  simulated: boolean;
  dryRun: boolean;
  devices: ReturnType<typeof gpuStatus>[];
}

/** Exit code for an NVML failure that leaves the daemon nothing to do. */
function exitCodeForNvml(err: unknown): ExitCode {
  if (!(err instanceof NvmlError)) return ExitCode.FAILURE;
  switch (err.code) {
    case NVML_ERROR_NO_PERMISSION:
      return ExitCode.NO_PERMISSION;
    case NVML_ERROR_DRIVER_NOT_LOADED:
    case NVML_ERROR_LIBRARY_NOT_FOUND:
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH:
      return ExitCode.UNAVAILABLE;
    default:
      return ExitCode.FAILURE;
  }
}

export class Daemon {
  readonly #config: Config;
  readonly #log: Log;
  readonly #runtime: RuntimeDir;
  readonly #setter: PersistenceSetter;
  #nvml: Nvml | null = null;
  #gpus: GpuRecord[] = [];
  #control: Server | null = null;
  #stopping = false;

  constructor(config: Config, log: Log, runtime: RuntimeDir) {
    this.#config = config;
    this.#log = log;
    this.#runtime = runtime;
    this.#setter = new PersistenceSetter(config.dryRun);
  }

  get gpus(): readonly GpuRecord[] {
    return this.#gpus;
  }

  status(): DaemonStatus {
    return {
      pid: process.pid,
      version: VERSION,
      simulated: this.#config.simulate !== "",
      dryRun: this.#config.dryRun,
      devices: this.#gpus.map(gpuStatus),
    };
  }

  #loadNvml(): Nvml {
    const simulate = this.#config.simulate;
    let path = this.#config.nvmlLibrary;
    if (simulate !== "") {
      configureSimulator(simulate);
      path = simulatorLibraryPath();
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
      await nvml.init();
    } catch (err) {
      const hint =
        err instanceof NvmlError && err.code === NVML_ERROR_DRIVER_NOT_LOADED
          ? " Load the NVIDIA kernel module (modprobe nvidia) and check that /dev/nvidiactl exists."
          : err instanceof NvmlError && err.code === NVML_ERROR_NO_PERMISSION
            ? " Run as root (as the systemd unit does)."
            : "";
      throw new FatalError(
        exitCodeForNvml(err) === ExitCode.FAILURE ? ExitCode.UNAVAILABLE : exitCodeForNvml(err),
        `cannot initialise NVML from ${nvml.path}: ${describeError(err)}.${hint}`,
      );
    }
  }

  /** Brings the GPUs up; throws FatalError when no selected GPU can be held. */
  async start(): Promise<void> {
    const config = this.#config;
    this.#log.info(
      { version: VERSION, runtimeDir: this.#runtime.dir, dryRun: config.dryRun },
      `Started (${process.pid})`,
    );
    if (config.nvidiaCfgPath) {
      this.#log.info(`--nvidia-cfg-path ${config.nvidiaCfgPath} accepted and ignored: GPUs are found through NVML`);
    }
    const started = performance.now();
    const nvml = this.#loadNvml();
    await this.#initNvml(nvml);
    this.#nvml = nvml;
    this.#log.info({ driver: await nvml.driverVersion().catch(describeError) }, "NVML initialised");
    const count = await nvml.deviceCount().catch((err: unknown) => {
      throw new FatalError(ExitCode.UNAVAILABLE, `cannot count GPUs: ${describeError(err)}`);
    });
    if (count === 0) {
      throw new FatalError(
        ExitCode.UNAVAILABLE,
        "NVML reports no GPUs: check that the NVIDIA driver sees them (nvidia-smi -L, dmesg | grep -i nvrm).",
      );
    }
    this.#gpus = await identifyGpus(nvml, count, this.#log);
    const selectors = config.devices.map((d) => parseGpuSelector(d)).filter((s) => s !== null);
    const { selected, unmatched } = selectGpus(this.#gpus, selectors);
    for (const message of unmatched) this.#log.error(message);

    let deviceDir = REAL_DEVICE_DIR;
    if (config.simulate !== "") {
      deviceDir = this.#runtime.simDeviceDir;
      this.#runtime.track(deviceDir);
      createStandInNodes(
        deviceDir,
        this.#gpus.filter((g) => g.minor >= 0).map((g) => g.minor),
      );
    }
    if (!config.persistenceMode) {
      this.#log.info("starting with every GPU released (--no-persistence-mode)");
    } else {
      await holdGpus(selected, { nvml, setter: this.#setter, deviceDir, log: this.#log });
      const held = selected.filter((g) => g.fd !== null);
      if (held.length === 0) {
        const first = selected.find((g) => g.error !== null);
        throw new FatalError(
          selected.length > 0 && selected.every((g) => g.error?.startsWith("NVML_ERROR_NO_PERMISSION"))
            ? ExitCode.NO_PERMISSION
            : ExitCode.FAILURE,
          selected.length === 0
            ? "no GPU is selected: check --devices against 'nvidia-smi -L'"
            : `no selected GPU could be held (first failure: GPU ${first?.index} ${first?.pciBusId}: ${first?.error})`,
        );
      }
    }
    this.#control = await startControlServer(this.#runtime.controlSocket, (r) => this.#handleControl(r), this.#log);
    const held = this.#gpus.filter((g) => g.fd !== null).length;
    this.#log.info(
      { held, selected: selected.length, bringUpMs: Math.round(performance.now() - started) },
      `ready: ${held}/${selected.length} GPUs held`,
    );
  }

  #handleControl(request: ControlRequest): unknown {
    if (request.command === "status") return this.status();
    throw new Error(`unknown command '${request.command}' (known: status)`);
  }

  #releaseAll(): void {
    for (const gpu of this.#gpus) {
      if (gpu.fd === null) continue;
      releaseDeviceNode(gpu.fd);
      gpu.fd = null;
    }
  }

  /**
   * Lets go of everything and ends the process with `code`. Never waits on NVML longer
   * than stopTimeoutMs: a hung call cannot hold a reboot up.
   */
  async stop(code: ExitCode, reason: string): Promise<never> {
    if (this.#stopping) return new Promise<never>(() => {});
    this.#stopping = true;
    this.#log.info(`stopping: ${reason}`);
    this.#control?.close();
    this.#releaseAll();
    this.#runtime.remove();
    const nvml = this.#nvml;
    if (nvml) {
      const limit = new Promise<string>((resolve) =>
        setTimeout(
          () => resolve(`nvmlShutdown did not return within ${this.#config.stopTimeoutMs} ms`),
          this.#config.stopTimeoutMs,
        ).unref(),
      );
      const outcome = await Promise.race([nvml.shutdown().then(() => "", describeError), limit]);
      if (outcome) this.#log.warn(`exiting without a clean NVML shutdown: ${outcome}`);
    }
    this.#log.info(`Shutdown (${process.pid})`);
    // _exit: process.exit() would wait for NVML calls still blocked on the thread pool.
    return hardExit(code);
  }
}
