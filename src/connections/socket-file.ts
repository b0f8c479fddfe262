// The unix socket files the daemon serves: the path must fit in sockaddr_un, and whatever is
// in its place must be a socket left by an earlier run (never a directory, file or link).
import { lstatSync, unlinkSync } from "node:fs";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";

/** sun_path holds 108 bytes, the terminating NUL included. */
export const MAX_SOCKET_PATH_BYTES = 107;

/** Throws FatalError (78) when `path` is too long to bind. */
export function checkSocketPathLength(path: string, setting: string): void {
  const bytes = Buffer.byteLength(path);
  if (bytes > MAX_SOCKET_PATH_BYTES) {
    throw new FatalError(
      ExitCode.CONFIG,
      `the socket path ${path} is ${bytes} bytes; a unix socket path holds at most ${MAX_SOCKET_PATH_BYTES}. ` +
        `Choose a shorter ${setting}.`,
    );
  }
}

/**
 * Makes room to bind `path`: removes a socket a killed daemon left (we hold the PID lock, so
 * none is live), and refuses anything else there with the fix.
 */
export function clearStaleSocket(path: string): void {
  let kind: string;
  try {
    const st = lstatSync(path);
    if (st.isSocket()) {
      unlinkSync(path);
      return;
    }
    kind = st.isDirectory() ? "a directory" : st.isSymbolicLink() ? "a symbolic link" : "a file";
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return;
    throw err;
  }
  throw new FatalError(
    ExitCode.CONFIG,
    `${path} is ${kind}, not a socket: the daemon's socket goes there. Remove it (rm -r ${path}) and start again.`,
  );
}
