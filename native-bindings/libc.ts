// libc through koffi, for what Node lacks. One lazily loaded handle serves every binding
// here: a process that never needs libc (the status client, say) never maps it.
import koffi, { type LibraryHandle } from "koffi";

export type KoffiFunction = ReturnType<LibraryHandle["func"]>;

let handle: LibraryHandle | undefined;
const declared = new Map<string, KoffiFunction>();

/** Declares (once) and returns a libc function from its C prototype. */
export function libcFunction(prototype: string): KoffiFunction {
  let fn = declared.get(prototype);
  if (!fn) {
    handle ??= koffi.load("libc.so.6");
    fn = handle.func(prototype);
    declared.set(prototype, fn);
  }
  return fn;
}

/** errno after the last libc call, with its symbolic name where known. */
export function lastErrno(): { errno: number; code: string } {
  const errno = koffi.errno();
  const code = Object.entries(koffi.os.errno).find(([, v]) => v === errno)?.[0] ?? `errno ${errno}`;
  return { errno, code };
}

/** Runs a libc call that returns 0, or -1 with errno; throws Error naming the errno. */
function zeroOrErrno(name: string, result: number): void {
  if (result !== 0) throw new Error(`${name}: ${lastErrno().code}`);
}

/**
 * The identity calls, straight from libc. Node's own (process.setuid, setgid, initgroups)
 * refuse to run when Node is linked to a system libuv it cannot prove io_uring-free
 * (CVE-2024-22017; seen with Debian 13's Node 20 and its libuv 1.50).
 * The daemon starts with UV_USE_IO_URING=0 (src/libuv-environment.ts), so no io_uring ring can
 * keep root's credentials past the switch. glibc applies each call to every thread.
 */
export function initgroups(user: string, gid: number): void {
  zeroOrErrno("initgroups", libcFunction("int initgroups(const char *user, uint32_t group)")(user, gid));
}

export function setgroups(gids: number[]): void {
  zeroOrErrno(
    "setgroups",
    libcFunction("int setgroups(size_t size, const uint32_t *list)")(gids.length, Uint32Array.from(gids)),
  );
}

export function setresgid(gid: number): void {
  zeroOrErrno("setresgid", libcFunction("int setresgid(uint32_t r, uint32_t e, uint32_t s)")(gid, gid, gid));
}

export function setresuid(uid: number): void {
  zeroOrErrno("setresuid", libcFunction("int setresuid(uint32_t r, uint32_t e, uint32_t s)")(uid, uid, uid));
}

const F_TLOCK = 2;

/**
 * Takes a POSIX record lock (fcntl-based, as lockf(3)) on the whole file without waiting.
 * Returns true when taken, false when another process holds it; throws on any other error.
 * The lock dies with the process, so a stale file left by SIGKILL never blocks a restart.
 */
export function tryLockFile(fd: number): boolean {
  if (libcFunction("int lockf(int fd, int cmd, int64_t len)")(fd, F_TLOCK, 0) === 0) return true;
  const { code } = lastErrno();
  if (code === "EAGAIN" || code === "EACCES") return false;
  throw new Error(`lockf failed: ${code}`);
}

const F_GETLK = 5;
const F_WRLCK = 1;
const F_UNLCK = 2;
let flockDeclared = false;

/**
 * Who holds a lock that keeps a write lock on the whole file from being taken: null when
 * none does, else the holder's PID and whether it holds a write lock (a daemon) or only a
 * read lock (any user who can open the file can take one).
 */
export function lockHolder(fd: number): { pid: number; write: boolean } | null {
  if (!flockDeclared) {
    // struct flock of x86-64 and arm64 glibc; named, so the prototype below can use it.
    koffi.struct("flock", {
      l_type: "short",
      l_whence: "short",
      l_start: "int64_t",
      l_len: "int64_t",
      l_pid: "int32_t",
    });
    flockDeclared = true;
  }
  const lock = { l_type: F_WRLCK, l_whence: 0, l_start: 0, l_len: 0, l_pid: 0 };
  if (libcFunction("int fcntl(int fd, int cmd, _Inout_ flock *lock)")(fd, F_GETLK, lock) !== 0) {
    throw new Error(`fcntl(F_GETLK) failed: ${lastErrno().code}`);
  }
  return lock.l_type === F_UNLCK ? null : { pid: lock.l_pid, write: lock.l_type === F_WRLCK };
}

/**
 * Ends the process at once. Unlike process.exit(), it does not wait for NVML calls still
 * blocked on the libuv pool (measured: process.exit waited 5 s for one).
 */
export function hardExit(code: number): never {
  libcFunction("void _exit(int status)")(code);
  throw new Error("unreachable: _exit returned");
}

/**
 * Replaces this process with `path` run with `argv` and `env` (same PID, so systemd still
 * sees its main process). Returns only on failure, with errno's name.
 */
export function execve(path: string, argv: string[], env: NodeJS.ProcessEnv): string {
  // Node marks stdin, stdout and stderr close-on-exec at start-up; the new image must keep them.
  const fcntl = libcFunction("int fcntl(int fd, int cmd, int arg)");
  const F_SETFD = 2;
  for (const fd of [0, 1, 2]) fcntl(fd, F_SETFD, 0);
  const envp = Object.entries(env)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  libcFunction("int execve(const char *path, const char **argv, const char **envp)")(
    path,
    [...argv, null],
    [...envp, null],
  );
  return lastErrno().code;
}

/** The path a listening unix socket is bound to (getsockname), or null for any other socket. */
export function unixSocketPath(fd: number): string | null {
  const address = Buffer.alloc(110);
  const length = [address.length];
  if (
    (libcFunction("int getsockname(int fd, _Out_ uint8_t *addr, _Inout_ uint32_t *len)")(
      fd,
      address,
      length,
    ) as number) !== 0
  ) {
    return null;
  }
  if (address.readUInt16LE(0) !== 1 /* AF_UNIX */) return null;
  const path = address.subarray(2, Math.min(length[0] ?? 2, address.length));
  const end = path.indexOf(0);
  return (end < 0 ? path : path.subarray(0, end)).toString("utf8") || null;
}

/** An anonymous in-memory file (memfd_create), close-on-exec: state that only PID 1 keeps. */
export function memoryFile(name: string): number {
  const MFD_CLOEXEC = 1;
  const fd = libcFunction("int memfd_create(const char *name, unsigned int flags)")(name, MFD_CLOEXEC) as number;
  if (fd < 0) throw new Error(`memfd_create: ${lastErrno().code}`);
  return fd;
}

let pollfdDeclared = false;

/** Whether `fd` is readable now (poll with no wait): a connection waiting, a pidfd's process ended. */
export function readableNow(fd: number): boolean {
  if (!pollfdDeclared) {
    koffi.struct("pollfd", { fd: "int", events: "short", revents: "short" });
    pollfdDeclared = true;
  }
  const poll = libcFunction("int poll(_Inout_ pollfd *fds, unsigned long nfds, int timeout)");
  const POLLIN = 1;
  const pollfd = { fd, events: POLLIN, revents: 0 };
  return (poll(pollfd, 1, 0) as number) > 0 && (pollfd.revents & POLLIN) !== 0;
}

/**
 * A pidfd on process `pid` (pidfd_open, Linux 5.3; close-on-exec): it stays the same process
 * even once the PID is reused, works where /proc hides the process (ProtectProc=invisible),
 * and can be kept in systemd's fd store. Throws Error naming the errno (ESRCH: no such process).
 */
export function pidfdOpen(pid: number): number {
  // The syscall's number is the same on every architecture that has it (x86-64, arm64).
  const SYS_PIDFD_OPEN = 434;
  const fd = libcFunction("long syscall(long number, ...)")(SYS_PIDFD_OPEN, "int", pid, "unsigned int", 0) as number;
  if (fd < 0) throw new Error(`pidfd_open(${pid}): ${lastErrno().code}`);
  return Number(fd);
}

/**
 * Accepts and closes at once every connection waiting in a listening socket's backlog, without
 * blocking (accept4 only after a poll that does not wait); returns how many. Never throws.
 */
export function closeWaitingConnections(listeningFd: number): number {
  const accept4 = libcFunction("int accept4(int fd, void *addr, void *len, int flags)");
  const close = libcFunction("int close(int fd)");
  const SOCK_NONBLOCK_CLOEXEC = 0o4000 | 0o2000000;
  let closed = 0;
  while (readableNow(listeningFd)) {
    const fd = accept4(listeningFd, null, null, SOCK_NONBLOCK_CLOEXEC) as number;
    if (fd < 0) return closed;
    close(fd);
    closed++;
  }
  return closed;
}
