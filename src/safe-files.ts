// Files in directories other users may reach: never follow a link, never take over a file
// or directory someone else owns, and create with O_EXCL where a file must be new.
import { closeSync, constants, fstatSync, lstatSync, mkdirSync, openSync, type Stats } from "node:fs";
import { dirname } from "node:path";

// libuv opens every file with O_CLOEXEC already.
const { O_CREAT, O_EXCL, O_NOFOLLOW, O_WRONLY, O_RDWR, O_NONBLOCK } = constants;

/** A path another user could have planted or could still change: the message says the fix. */
export class UnsafePathError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UnsafePathError";
  }
}

function euid(): number {
  return process.geteuid?.() ?? 0;
}

/** Why `st` (of `path`) is unsafe to keep our files in, or null when it is safe. */
function directoryProblem(path: string, st: Stats, isParent: boolean): string | null {
  if (st.isSymbolicLink()) return `${path} is a symbolic link`;
  if (!st.isDirectory()) return `${path} is not a directory`;
  const sticky = (st.mode & 0o1000) !== 0;
  const othersWrite = (st.mode & 0o022) !== 0;
  if (isParent) {
    // Others may not rename or replace our directory: the parent is root's or ours, or sticky.
    if (othersWrite && !sticky) return `${path} (its parent) is writable by other users and not sticky`;
    if (st.uid !== 0 && st.uid !== euid() && !sticky) return `${path} (its parent) belongs to uid ${st.uid}`;
    return null;
  }
  if (st.uid !== euid()) return `${path} belongs to uid ${st.uid}, not to this daemon (uid ${euid()})`;
  if (othersWrite && !sticky) return `${path} is writable by other users (mode ${(st.mode & 0o7777).toString(8)})`;
  return null;
}

/**
 * Creates `path` (mode `mode`) if missing, then checks that it and its parent are safe:
 * not links, ours, not writable by others. Returns whether it was created; throws an Error
 * saying what is wrong and how to fix it.
 */
export function claimDirectory(path: string, mode: number): boolean {
  let created = false;
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    created = mkdirSync(path, { recursive: true, mode }) !== undefined;
    st = lstatSync(path);
  }
  const problem = directoryProblem(path, st, false) ?? directoryProblem(dirname(path), lstatSync(dirname(path)), true);
  if (problem) {
    throw new UnsafePathError(
      `${problem}: another user could plant files there. Use a directory owned by uid ${euid()} with mode 0755 ` +
        `(remove it to let the daemon create it: rm -r ${path}), or another --runtime-dir.`,
    );
  }
  return created;
}

/** Throws unless `fd` is a regular file owned by us (`path` names it in the message). */
function checkOwnedFile(fd: number, path: string): void {
  const st = fstatSync(fd);
  if (!st.isFile() || st.uid !== euid()) {
    closeSync(fd);
    throw new UnsafePathError(`${path} is not a regular file of uid ${euid()}: remove it and start again`);
  }
}

/** Opens or creates a file we own, read-write, without following a link at `path`. */
export function openOwnedFile(path: string, mode: number): number {
  let fd: number;
  try {
    fd = openSync(path, O_RDWR | O_CREAT | O_NOFOLLOW, mode);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ELOOP") {
      throw new UnsafePathError(`${path} is a symbolic link: remove it and start again`);
    }
    throw err;
  }
  checkOwnedFile(fd, path);
  return fd;
}

/** Creates a new file for writing; fails (EEXIST) rather than open anything already there. */
export function createExclusive(path: string, mode: number): number {
  return openSync(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
}

/**
 * Opens a file to read only if it is a regular file (a FIFO neither blocks the open nor
 * is read; a device such as /dev/zero is refused), returning its fd and size.
 */
export function openRegularFile(path: string): { fd: number; size: number } {
  const fd = openSync(path, constants.O_RDONLY | O_NONBLOCK);
  const st = fstatSync(fd);
  if (!st.isFile()) {
    closeSync(fd);
    throw new Error(`${path} is not a regular file`);
  }
  return { fd, size: st.size };
}
