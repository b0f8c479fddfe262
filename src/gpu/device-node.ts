// Holding a GPU: one open fd on its device node keeps the kernel driver from tearing the
// GPU's state down when its last other client exits. Closing that fd lets it go. Only the
// GPU registry calls these.
import { closeSync, open } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { fixes } from "../fixes.js";

const openAsync = promisify(open);

export const REAL_DEVICE_DIR = "/dev";

export function deviceNodePath(dir: string, minor: number): string {
  return join(dir, `nvidia${minor}`);
}

/** A device node could not be opened; `code` is the errno name. */
export class DeviceNodeError extends Error {
  readonly path: string;
  readonly code: string;
  constructor(path: string, err: NodeJS.ErrnoException) {
    const code = err.code ?? "EIO";
    super(
      code === "ENOENT"
        ? `${path} does not exist: ${fixes.deviceNodesMissing}`
        : code === "EACCES" || code === "EPERM"
          ? `no permission to open ${path}: ${fixes.deviceNodeAccess}`
          : `cannot open ${path}: ${err.message}`,
    );
    this.name = "DeviceNodeError";
    this.path = path;
    this.code = code;
  }
}

/** Opens the node read-write (as CUDA does) off the main thread: a cold GPU's open can take seconds. */
export async function openDeviceNode(path: string): Promise<number> {
  try {
    return await openAsync(path, "r+");
  } catch (err) {
    throw new DeviceNodeError(path, err as NodeJS.ErrnoException);
  }
}

export function closeDeviceNode(fd: number): void {
  closeSync(fd);
}
