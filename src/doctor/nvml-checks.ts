// NVML as the daemon loads it: the library, nvmlInit, the driver version against the kernel
// module, and each GPU's persistence state beside what the running daemon holds.
import { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlLoadError } from "../../native-bindings/nvml-errors.js";
import {
  NVML_ERROR_DRIVER_NOT_LOADED,
  NVML_ERROR_LIB_RM_VERSION_MISMATCH,
} from "../../native-bindings/nvml-return-codes.js";
import type { Config } from "../config/schema.js";
import type { DaemonStatus } from "../daemon.js";
import { describeError } from "../gpu/describe-error.js";
import { nvmlLibraryFor } from "../simulation.js";
import { type Check, fail, pass } from "./check.js";
import { kernelDriverVersion } from "./driver-checks.js";
import type { HostRoot } from "./host-root.js";

const MISMATCH_FIX =
  "the kernel module and libnvidia-ml come from different driver releases (usually an upgrade without a reboot): " +
  "reboot, or stop every GPU client and reload the modules (rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && modprobe nvidia)";

export async function nvmlChecks(
  host: HostRoot,
  config: Config,
  env: NodeJS.ProcessEnv,
  daemon: DaemonStatus | null,
): Promise<Check[]> {
  const library = nvmlLibraryFor(config, env);
  let nvml: Nvml;
  try {
    nvml = Nvml.load(library, config.nvmlTimeoutMs);
  } catch (err) {
    if (!(err instanceof NvmlLoadError)) throw err;
    return [
      fail(
        "nvml-library",
        "NVML library",
        err.message,
        "install the driver's NVML library (Debian: apt-get install libnvidia-ml1), or set nvmlLibrary in the config to its path",
      ),
    ];
  }
  const checks = [pass("nvml-library", "NVML library", `loaded ${library}`)];
  try {
    await nvml.init();
  } catch (err) {
    const code = err instanceof NvmlError ? err.code : -1;
    const fix =
      code === NVML_ERROR_LIB_RM_VERSION_MISMATCH
        ? MISMATCH_FIX
        : code === NVML_ERROR_DRIVER_NOT_LOADED
          ? "modprobe nvidia, and check that /dev/nvidiactl exists"
          : "see NVML's error above; dmesg | grep -i nvrm shows the driver's side";
    checks.push(fail("driver-version", "NVML and kernel driver", `nvmlInit failed: ${describeError(err)}`, fix));
    return checks;
  }
  try {
    const libraryVersion = await nvml.driverVersion();
    const kernelVersion = kernelDriverVersion(host);
    checks.push(
      kernelVersion === null
        ? fail(
            "driver-version",
            "NVML and kernel driver",
            `NVML is driver ${libraryVersion}; /proc/driver/nvidia/version is missing or unreadable`,
            "modprobe nvidia",
          )
        : kernelVersion !== libraryVersion
          ? fail(
              "driver-version",
              "NVML and kernel driver",
              `libnvidia-ml is ${libraryVersion}, the kernel module ${kernelVersion}`,
              MISMATCH_FIX,
            )
          : pass("driver-version", "NVML and kernel driver", `both ${libraryVersion}`),
    );
    checks.push(...(await gpuChecks(nvml, daemon)));
  } finally {
    await nvml.shutdown().catch(() => {});
  }
  return checks;
}

async function gpuChecks(nvml: Nvml, daemon: DaemonStatus | null): Promise<Check[]> {
  const count = await nvml.deviceCount();
  if (count === 0) {
    return [fail("gpus", "GPUs", "NVML sees no GPU", "lspci | grep -i nvidia; dmesg | grep -i nvrm")];
  }
  const checks: Check[] = [];
  for (let index = 0; index < count; index++) {
    const id = `gpu:${index}`;
    try {
      const handle = await nvml.handleByIndex(index);
      const uuid = await nvml.uuid(handle);
      const { busId } = await nvml.pciInfo(handle);
      const persistence = (await nvml.persistenceMode(handle)) === 1 ? "enabled" : "disabled";
      const title = `GPU ${index} ${busId}`;
      const held = daemon?.devices.find((d) => d.uuid === uuid);
      const detail = `persistence ${persistence}`;
      if (!daemon) {
        checks.push(
          fail(id, title, `${detail}; not held: gpu-persistd is not running`, "systemctl start gpu-persistd.service"),
        );
      } else if (held && !held.selected) {
        checks.push(pass(id, title, `${detail}; not selected (devices setting), so not held`));
      } else if (!held?.held) {
        checks.push(
          fail(
            id,
            title,
            `${detail}; not held${held?.lost ? " (lost: NVML reported the GPU fell off the bus)" : ""}${held?.error ? `: ${held.error}` : ""}`,
            held?.lost
              ? "the GPU needs a reset or a reboot; then systemctl restart gpu-persistd"
              : `gpu-persistd hold ${busId}`,
          ),
        );
      } else if (persistence !== "enabled") {
        checks.push(
          fail(
            id,
            title,
            `${detail}, though held`,
            "systemctl restart gpu-persistd.service (it enables persistence at start unless dryRun is set)",
          ),
        );
      } else {
        checks.push(pass(id, title, `${detail}, held by gpu-persistd (PID ${daemon.pid})`));
      }
    } catch (err) {
      checks.push(
        fail(id, `GPU ${index}`, `NVML: ${describeError(err)}`, `nvidia-smi -i ${index} -q; dmesg | grep -i nvrm`),
      );
    }
  }
  return checks;
}
