// libc functions Node lacks, through koffi. Loaded lazily: a process that never needs them
// (the status client, say) never maps libc through koffi.
import koffi, { type LibraryHandle } from "koffi";

type KoffiFunction = ReturnType<LibraryHandle["func"]>;

interface Libc {
  lockf: KoffiFunction;
  exit: KoffiFunction;
}

let libc: Libc | undefined;

function load(): Libc {
  if (!libc) {
    const lib = koffi.load("libc.so.6");
    libc = {
      lockf: lib.func("int lockf(int fd, int cmd, int64_t len)"),
      exit: lib.func("void _exit(int status)"),
    };
  }
  return libc;
}

const F_TLOCK = 2;

/**
 * Takes a POSIX record lock (fcntl-based, as lockf(3)) on the whole file without waiting.
 * Returns true when taken, false when another process holds it; throws on any other error.
 * The lock dies with the process, so a stale file left by SIGKILL never blocks a restart.
 */
export function tryLockFile(fd: number): boolean {
  const { lockf } = load();
  if (lockf(fd, F_TLOCK, 0) === 0) return true;
  const errno = koffi.errno();
  if (errno === koffi.os.errno.EAGAIN || errno === koffi.os.errno.EACCES) return false;
  throw new Error(`lockf failed: errno ${errno}`);
}

/**
 * Ends the process at once. Unlike process.exit(), it does not wait for NVML calls still
 * blocked on the libuv pool (measured: process.exit waited 5 s for one).
 */
export function hardExit(code: number): never {
  load().exit(code);
  throw new Error("unreachable: _exit returned");
}
