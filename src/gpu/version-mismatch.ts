// NVML_ERROR_LIB_RM_VERSION_MISMATCH: the driver's user-space libraries were upgraded while
// the old kernel module stays loaded, so nvmlInit fails until a reboot (or until every GPU
// user stops and the modules are reloaded). Restarting the daemon cannot mend that, so it
// degrades instead: the GPUs it holds stay held (from systemd's fd store, or by the nodes
// the module lists), watched through their nodes, and every channel names both versions.
import { NvmlError } from "../../native-bindings/nvml-errors.js";
import { NVML_ERROR_LIB_RM_VERSION_MISMATCH } from "../../native-bindings/nvml-return-codes.js";
import { fixes } from "../fixes.js";

export interface VersionMismatch {
  /** The user-space driver version of the NVML library loaded (580.95.05), null when unknown. */
  libraryVersion: string | null;
  /** The loaded kernel module's version (580.159.04), null when unknown. */
  moduleVersion: string | null;
}

export function isVersionMismatch(err: unknown): boolean {
  return err instanceof NvmlError && err.code === NVML_ERROR_LIB_RM_VERSION_MISMATCH;
}

/** One line naming both versions and the fix. */
export function mismatchText(m: VersionMismatch): string {
  return (
    `NVML ${m.libraryVersion ?? "(version unknown)"} does not match the loaded nvidia kernel module ` +
    `${m.moduleVersion ?? "(version unknown)"} (NVML_ERROR_LIB_RM_VERSION_MISMATCH: the driver was upgraded ` +
    `without a reboot). The GPUs held stay held. To fix: ${fixes.versionMismatch}`
  );
}
