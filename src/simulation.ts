// --simulate: the daemon loads the simulated libnvidia-ml built beside it and tells it the
// GPU count or profile through the environment it reads at nvmlInit.
import { chmodSync, closeSync, existsSync, fchmodSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { ExitCode } from "./exit-codes.js";
import { FatalError } from "./fatal-error.js";
import { deviceNodePath } from "./gpu/device-node.js";
import { RPC_SOCKET_NAME, SIM_DEVICE_DIR_NAME } from "./runtime-dir.js";
import { claimDirectory, openOwnedFile } from "./safe-files.js";

const SIM_LIBRARY = "libnvidia-ml-sim.so";

/** The simulator beside the bundle (dist/), or in dist/ when running from the sources. */
function simulatorLibraryPath(): string {
  const candidates = [new URL(`./${SIM_LIBRARY}`, import.meta.url), new URL(`../dist/${SIM_LIBRARY}`, import.meta.url)];
  const found = candidates.map((u) => fileURLToPath(u)).find((p) => existsSync(p));
  if (!found) {
    throw new FatalError(
      ExitCode.UNAVAILABLE,
      `--simulate needs the GPU simulator (${SIM_LIBRARY}), which is not installed: ` +
        "apt-get install gpu-persistd-simulator (from the sources: npm run build)",
    );
  }
  return found;
}

/**
 * "on" keeps the count of GPU_PERSISTD_SIM_CONFIG's file; a number or a profile overrides it.
 * As real NVML routes persistence calls to /var/run/nvidia-persistenced/socket, the simulator
 * routes them to the runtime directory's socket, and keeps its stand-ins' state beside them.
 */
function configureSimulator(simulate: string, runtimeDir: string, env: NodeJS.ProcessEnv): void {
  if (/^\d+$/.test(simulate)) env.GPU_PERSISTD_SIM_GPUS = simulate;
  else if (simulate !== "on") env.GPU_PERSISTD_SIM_PROFILE = simulate;
  env.GPU_PERSISTD_SIM_PERSISTENCE_SOCKET = join(runtimeDir, RPC_SOCKET_NAME);
  env.GPU_PERSISTD_SIM_DEVICE_DIR = join(runtimeDir, SIM_DEVICE_DIR_NAME);
}

/**
 * The NVML library the configuration names: the simulator under --simulate (told its GPU
 * count through `env`), else nvmlLibrary. The daemon and doctor load the same one.
 */
export function nvmlLibraryFor(
  config: { simulate: string; nvmlLibrary: string; runtimeDir: string },
  env: NodeJS.ProcessEnv,
): string {
  if (config.simulate === "") return config.nvmlLibrary;
  configureSimulator(config.simulate, config.runtimeDir, env);
  return simulatorLibraryPath();
}

/**
 * Stand-in device nodes: plain files the daemon opens and holds as it would /dev/nvidiaN.
 * The directory and files must be ours (a link or another user's file there is refused).
 */
export function createStandInNodes(dir: string, minors: number[]): void {
  // mkdir's mode is cut by the umask (the unit's UMask=0077 gives 0700), and the daemon must
  // reach the nodes after --user to hold a released GPU again, as it can /dev.
  if (claimDirectory(dir, 0o755)) chmodSync(dir, 0o755);
  for (const path of [...minors.map((minor) => deviceNodePath(dir, minor)), join(dir, "nvidia-uvm")]) {
    const fd = openOwnedFile(path, 0o666);
    // As the driver's nodes: any user may open them, also the daemon after --user.
    fchmodSync(fd, 0o666);
    closeSync(fd);
  }
}
