// The runtime directory: PID file (the single-instance lock) and the daemon's sockets.
import {
  closeSync,
  fchmodSync,
  ftruncateSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmdirSync,
  rmSync,
  writeSync,
} from "node:fs";
import { join, resolve } from "node:path";
import { tryLockFile } from "../native-bindings/libc.js";
import { ExitCode } from "./exit-codes.js";
import { FatalError } from "./fatal-error.js";

export const PID_FILE_NAME = "nvidia-persistenced.pid";
export const CONTROL_SOCKET_NAME = "gpu-persistd.sock";
export const RPC_SOCKET_NAME = "socket";
export const SIM_DEVICE_DIR_NAME = "sim-dev";

export function controlSocketPath(dir: string): string {
  return join(dir, CONTROL_SOCKET_NAME);
}

function permissionAware(err: unknown, what: string): FatalError {
  const e = err as NodeJS.ErrnoException;
  if (e.code === "EACCES" || e.code === "EPERM" || e.code === "EROFS") {
    return new FatalError(
      ExitCode.NO_PERMISSION,
      `${what}: ${e.message}. Run as root (as the systemd unit does), or point --runtime-dir at a writable directory.`,
    );
  }
  return new FatalError(ExitCode.FAILURE, `${what}: ${e.message}`);
}

export class RuntimeDir {
  readonly dir: string;
  /** systemd created it (RuntimeDirectory=) and removes it when the service stops. */
  readonly managedBySystemd: boolean;
  readonly #createdDir: boolean;
  readonly #pidFd: number;
  #extraPaths: string[] = [];

  private constructor(dir: string, createdDir: boolean, pidFd: number, managedBySystemd: boolean) {
    this.dir = dir;
    this.managedBySystemd = managedBySystemd;
    this.#createdDir = createdDir;
    this.#pidFd = pidFd;
  }

  get pidFile(): string {
    return join(this.dir, PID_FILE_NAME);
  }
  get controlSocket(): string {
    return controlSocketPath(this.dir);
  }
  get rpcSocket(): string {
    return join(this.dir, RPC_SOCKET_NAME);
  }
  get simDeviceDir(): string {
    return join(this.dir, SIM_DEVICE_DIR_NAME);
  }

  /**
   * Creates the directory if needed, locks the PID file and writes our PID. A second
   * instance is refused with the PID of the first. The lock, not the file's existence,
   * decides: a file left by a killed daemon is simply taken over.
   */
  static claim(dir: string, env: NodeJS.ProcessEnv = process.env): RuntimeDir {
    let created = false;
    try {
      created = mkdirSync(dir, { recursive: true, mode: 0o755 }) !== undefined;
    } catch (err) {
      throw permissionAware(err, `cannot create runtime directory ${dir}`);
    }
    const pidPath = join(dir, PID_FILE_NAME);
    let fd: number;
    try {
      fd = openSync(pidPath, "a+", 0o644);
    } catch (err) {
      throw permissionAware(err, `cannot open PID file ${pidPath}`);
    }
    // "a+" only to create without truncating: another instance's PID must survive our look.
    if (!tryLockFile(fd)) {
      const holder = readFileSync(pidPath, "utf8").trim() || "unknown";
      closeSync(fd);
      throw new FatalError(
        ExitCode.FAILURE,
        `another persistence daemon (PID ${holder}) holds the lock on ${pidPath}. ` +
          "Stop it first (systemctl stop gpu-persistd nvidia-persistenced), or give this one another --runtime-dir.",
      );
    }
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n`, 0);
    // As nvidia-persistenced's: readable by all, whatever the umask (the unit sets 0077).
    fchmodSync(fd, 0o644);
    const managed = (env.RUNTIME_DIRECTORY ?? "").split(":").some((d) => resolve(d) === resolve(dir));
    return new RuntimeDir(dir, created, fd, managed);
  }

  /** Records a path (a socket, the stand-in device directory) to remove at exit. */
  track(path: string): void {
    this.#extraPaths.push(path);
  }

  /**
   * Removes everything this daemon put here, and the directory if it created it. Returns
   * what it could not remove, with the reason. Under systemd's RuntimeDirectory= nothing is
   * left to do: systemd removes the whole directory when the service stops, also what a
   * dropped user may no longer unlink.
   */
  remove(): string[] {
    const left: string[] = [];
    const attempt = (path: string, action: () => void): void => {
      try {
        action();
      } catch (err) {
        if (!this.managedBySystemd) left.push(`${path}: ${(err as NodeJS.ErrnoException).code ?? err}`);
      }
    };
    for (const path of this.#extraPaths) attempt(path, () => rmSync(path, { recursive: true, force: true }));
    attempt(this.pidFile, () => rmSync(this.pidFile, { force: true }));
    closeSync(this.#pidFd);
    if (this.#createdDir) attempt(this.dir, () => rmdirSync(this.dir));
    return left;
  }
}
