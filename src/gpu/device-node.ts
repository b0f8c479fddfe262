// Holding a GPU: one open fd on its device node keeps the kernel driver from tearing the
// GPU's state down when its last other client exits. Closing that fd lets it go.
import { closeSync, open } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

const openAsync = promisify(open);

export const REAL_DEVICE_DIR = "/dev";

export function deviceNodePath(dir: string, minor: number): string {
  return join(dir, `nvidia${minor}`);
}

function explain(err: NodeJS.ErrnoException, path: string): string {
  switch (err.code) {
    case "ENOENT":
      return `${path} does not exist: is the nvidia kernel module loaded and its device nodes created (nvidia-modprobe, udev)?`;
    case "EACCES":
    case "EPERM":
      return `no permission to open ${path}: run as root, or give the daemon's user the device's group`;
    default:
      return `cannot open ${path}: ${err.message}`;
  }
}

/** Opens the node read-write (as CUDA does) off the main thread: a cold GPU's open can take seconds. */
export async function holdDeviceNode(dir: string, minor: number): Promise<number> {
  const path = deviceNodePath(dir, minor);
  try {
    return await openAsync(path, "r+");
  } catch (err) {
    throw new Error(explain(err as NodeJS.ErrnoException, path));
  }
}

export function releaseDeviceNode(fd: number): void {
  closeSync(fd);
}
