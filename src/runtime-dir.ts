// The runtime directory: PID file (the single-instance lock) and the daemon's sockets.
import { closeSync, fchmodSync, ftruncateSync, rmdirSync, rmSync, unlinkSync, writeSync } from "node:fs";
import { join, resolve } from "node:path";
import { lockHolder, tryLockFile } from "../native-bindings/libc.js";
import { checkSocketPathLength } from "./connections/socket-file.js";
import { ExitCode } from "./exit-codes.js";
import { FatalError } from "./fatal-error.js";
import { claimDirectory, openOwnedFile, UnsafePathError } from "./safe-files.js";

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

function openPidFile(path: string): number {
  try {
    return openOwnedFile(path, 0o644);
  } catch (err) {
    if (err instanceof UnsafePathError) throw new FatalError(ExitCode.CONFIG, `unsafe PID file: ${err.message}`);
    throw permissionAware(err, `cannot open PID file ${path}`);
  }
}

/** Opens and write-locks the PID file; throws FatalError naming a running daemon's PID. */
function lockPidFile(path: string): number {
  for (let attempt = 0; attempt < 3; attempt++) {
    const fd = openPidFile(path);
    if (tryLockFile(fd)) return fd;
    const holder = lockHolder(fd);
    if (holder?.write) {
      closeSync(fd);
      throw new FatalError(
        ExitCode.FAILURE,
        `another persistence daemon (PID ${holder.pid}) holds the lock on ${path}. ` +
          "Stop it first (systemctl stop gpu-persistd nvidia-persistenced), or give this one another --runtime-dir.",
      );
    }
    // Only a read lock, which any user who can read the file may take: not a daemon. A new
    // file takes its place (the directory is ours alone, so no one else can plant one).
    closeSync(fd);
    unlinkSync(path);
  }
  throw new FatalError(ExitCode.FAILURE, `cannot lock the PID file ${path}: other processes keep locking it`);
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
   * Creates the directory if needed (refusing one another user owns or may write), locks
   * the PID file and writes our PID. A second daemon is refused with its PID. The lock, not
   * the file's existence, decides: a file left by a killed daemon is taken over, and so is
   * one another user merely holds a read lock on (only a daemon's write lock counts).
   */
  static claim(dir: string, env: NodeJS.ProcessEnv = process.env): RuntimeDir {
    checkSocketPathLength(join(dir, CONTROL_SOCKET_NAME), "--runtime-dir (runtimeDir)");
    let created: boolean;
    try {
      created = claimDirectory(dir, 0o755);
    } catch (err) {
      if (err instanceof UnsafePathError)
        throw new FatalError(ExitCode.CONFIG, `unsafe runtime directory: ${err.message}`);
      throw permissionAware(err, `cannot create runtime directory ${dir}`);
    }
    const pidPath = join(dir, PID_FILE_NAME);
    const fd = lockPidFile(pidPath);
    ftruncateSync(fd, 0);
    writeSync(fd, `${process.pid}\n`, 0);
    // As nvidia-persistenced's: readable by all, whatever the umask (the unit sets 0077).
    fchmodSync(fd, 0o644);
    const managed = (env.RUNTIME_DIRECTORY ?? "").split(":").some((d) => resolve(d) === resolve(dir));
    return new RuntimeDir(dir, created, fd, managed);
  }

  #dropped = false;

  /**
   * The daemon no longer runs as the directory's owner: what it cannot remove at exit is
   * left for the next start to take over (or for systemd to remove), not reported.
   */
  privilegesDropped(): void {
    this.#dropped = true;
  }

  /** Records a path (a socket, the stand-in device directory) to remove at exit. */
  track(path: string): void {
    this.#extraPaths.push(path);
  }

  /**
   * Removes everything this daemon put here, and the directory if it created it. Returns
   * what it could not remove, with the reason. Under systemd's RuntimeDirectory= nothing is
   * left to do: systemd removes the whole directory when the service stops, also what a
   * dropped user may no longer unlink. The directory is never given to the dropped user.
   */
  remove(): string[] {
    const left: string[] = [];
    const attempt = (path: string, action: () => void): void => {
      try {
        action();
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        const expected = this.managedBySystemd || (this.#dropped && (code === "EACCES" || code === "EPERM"));
        if (!expected) left.push(`${path}: ${code ?? err}`);
      }
    };
    for (const path of this.#extraPaths) attempt(path, () => rmSync(path, { recursive: true, force: true }));
    attempt(this.pidFile, () => rmSync(this.pidFile, { force: true }));
    closeSync(this.#pidFd);
    if (this.#createdDir) attempt(this.dir, () => rmdirSync(this.dir));
    return left;
  }
}
