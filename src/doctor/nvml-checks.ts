// NVML as the daemon loads it: the library, nvmlInit, the driver version against the kernel
// module, and each GPU's persistence state beside what the running daemon holds.
import { Nvml } from "../../native-bindings/nvml.js";
import { NvmlError, NvmlLoadError } from "../../native-bindings/nvml-errors.js";
import {
  NVML_ERROR_DRIVER_NOT_LOADED,
  NVML_ERROR_LIB_RM_VERSION_MISMATCH,
} from "../../native-bindings/nvml-return-codes.js";
import type { Config } from "../config/schema.js";
import { fixes, legacyFlagNote } from "../fixes.js";
import { describeError } from "../gpu/describe-error.js";
import { nvmlLibraryFor } from "../simulation.js";
import type { DaemonStatus } from "../status/daemon-status.js";
import { type Check, fail, pass } from "./check.js";
import { kernelDriverVersion } from "./driver-checks.js";
import type { HostRoot } from "./host-root.js";

/** The id of the check that says NVML calls are stuck: the process must end with _exit. */
export const STUCK_CHECK = "nvml-hung";
/** How long past their time-out stuck calls get to return. */
const STUCK_GRACE_MS = 1000;

const MISMATCH_FIX = `the kernel module and libnvidia-ml come from different driver releases (usually an upgrade without a reboot): ${fixes.versionMismatch}`;

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
    // The error's cause alone (its own fix is the check's fix, said once); a custom path gets its own fix.
    const cause = err.message;
    const fix =
      config.simulate === "" && config.nvmlLibrary !== "libnvidia-ml.so.1"
        ? `nvmlLibrary is ${config.nvmlLibrary}: point it at the driver's libnvidia-ml.so.1, or remove the setting`
        : fixes.installNvml;
    return [fail("nvml-library", "NVML library", cause, fix)];
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
          ? fixes.loadDriver
          : "see NVML's error above; dmesg | grep -i nvrm shows the driver's side";
    const versions =
      code === NVML_ERROR_LIB_RM_VERSION_MISMATCH
        ? ` (NVML ${(await nvml.libraryVersion()) ?? "version unknown"}, kernel module ${kernelDriverVersion(host) ?? "version unknown"})`
        : "";
    checks.push(
      fail("driver-version", "NVML and kernel driver", `nvmlInit failed: ${describeError(err)}${versions}`, fix),
    );
    return finish(nvml, config, checks, false);
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
            fixes.loadDriver,
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
  } catch (err) {
    checks.push(fail("nvml", "NVML", describeError(err), "dmesg | grep -i -e nvrm -e xid shows the driver's side"));
  }
  return finish(nvml, config, checks, true);
}

/**
 * Ends the NVML session, unless a call is still stuck in the driver: nvmlShutdown beside it
 * crashes real NVML, and the stuck thread would keep the process alive (doctor then exits
 * with _exit; see STUCK_CHECK).
 */
async function finish(nvml: Nvml, config: Config, checks: Check[], initialised: boolean): Promise<Check[]> {
  if (!(await nvml.idle(STUCK_GRACE_MS))) {
    checks.push(
      fail(
        STUCK_CHECK,
        "NVML responsiveness",
        `NVML calls did not return within ${config.nvmlTimeoutMs + STUCK_GRACE_MS} ms: the driver is hung`,
        "dmesg | grep -i -e nvrm -e xid; a GPU reset (nvidia-smi -r -i N) or a reboot",
      ),
    );
  } else if (initialised) {
    await nvml.shutdown().catch(() => {});
  }
  return checks;
}

/** One check per GPU, the GPUs asked in parallel (a hung GPU costs one time-out, not one each). */
async function gpuChecks(nvml: Nvml, daemon: DaemonStatus | null): Promise<Check[]> {
  const count = await nvml.deviceCount();
  if (count === 0) {
    return [fail("gpus", "GPUs", "NVML sees no GPU", "lspci | grep -i nvidia; dmesg | grep -i nvrm")];
  }
  return Promise.all(Array.from({ length: count }, (_, index) => gpuCheck(nvml, daemon, index)));
}

async function gpuCheck(nvml: Nvml, daemon: DaemonStatus | null, index: number): Promise<Check> {
  const id = `gpu:${index}`;
  try {
    const handle = await nvml.handleByIndex(index);
    const uuid = await nvml.uuid(handle);
    const { busId } = await nvml.pciInfo(handle);
    const title = `GPU ${index} ${busId}`;
    const held = daemon?.devices.find((d) => d.uuid === uuid);
    // The daemon's own NVML reading where it has one: doctor's session may see another state
    // (the simulator keeps state per process).
    const persistence =
      held && held.persistence !== "unknown"
        ? held.persistence
        : (await nvml.persistenceMode(handle)) === 1
          ? "enabled"
          : "disabled";
    // An admin's legacy flag keeps the GPU up whatever the daemon does: said on every outcome.
    const flag = held?.legacyFlag === "enabled" ? ` (${legacyFlagNote(index)})` : "";
    const detail = `persistence ${persistence}${flag}`;
    if (!daemon) {
      return fail(
        id,
        title,
        `${detail}; not held: gpu-persistd is not running`,
        "systemctl start gpu-persistd.service",
      );
    }
    if (held && !held.selected) return pass(id, title, `${detail}; not selected (devices setting), so not held`);
    if (held && !held.wanted)
      return pass(id, title, `${detail}; persistence mode off (persistenceMode false), so not held`);
    if (!held?.held) {
      const lost = held?.lost ? " (lost: NVML reported the GPU fell off the bus)" : "";
      return fail(
        id,
        title,
        `${detail}; not held${lost}${held?.error ? `: ${held.error}` : ""}`,
        held?.lost
          ? "the GPU needs a reset or a reboot; then systemctl restart gpu-persistd"
          : `gpu-persistd hold ${busId}`,
      );
    }
    if (persistence !== "enabled") {
      return fail(id, title, `${detail}, though held`, `gpu-persistd hold ${busId}`);
    }
    if (held.uvm === "failed") {
      return fail(id, title, `${detail}, held; UVM registration failed: ${held.uvmError}`, fixes.uvmRegistration);
    }
    const extras = [
      held.uvm === "registered" ? "UVM registration held" : "",
      held.numa ? `NUMA node ${held.numa.nid} ${held.numa.status}` : "",
    ].filter(Boolean);
    return pass(
      id,
      title,
      `${detail}, held by gpu-persistd (PID ${daemon.pid})${extras.map((e) => `; ${e}`).join("")}`,
    );
  } catch (err) {
    return fail(id, `GPU ${index}`, `NVML: ${describeError(err)}`, `nvidia-smi -i ${index} -q; dmesg | grep -i nvrm`);
  }
}
