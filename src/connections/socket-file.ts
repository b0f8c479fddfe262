// The unix socket files the daemon serves: the path must fit in sockaddr_un, and whatever is
// in its place must be a socket left by an earlier run (never a directory, file or link).
import { chmodSync, lstatSync, unlinkSync } from "node:fs";
import type { Server } from "node:net";
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

/**
 * Serves `path` on `server`: on the listening socket systemd handed over (socket
 * activation: the socket and its inode outlive this process, and clients that connect
 * while it restarts wait in the backlog), or else bound anew, with `mode`, over whatever
 * stale socket a killed daemon left.
 */
export async function listenUnix(server: Server, path: string, mode: number, handedFd?: number): Promise<void> {
  if (handedFd === undefined) clearStaleSocket(path);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    const done = (): void => {
      server.off("error", reject);
      resolve();
    };
    if (handedFd !== undefined) server.listen({ fd: handedFd }, done);
    else server.listen({ path, backlog: 4096 }, done);
  });
  if (handedFd === undefined) chmodSync(path, mode);
}
