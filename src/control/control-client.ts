import { connect } from "node:net";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { controlSocketPath } from "../runtime-dir.js";
import { type DaemonStatus, parseDaemonStatus } from "../status/daemon-status.js";
import { VERSION } from "../version.js";
import type { ControlRequest } from "./control-server.js";

const REPLY_LIMIT_BYTES = 4 * 1024 * 1024;

/** Sends one request to the running daemon; throws FatalError saying why it cannot. */
export function requestControl(runtimeDir: string, request: ControlRequest, timeoutMs = 5000): Promise<unknown> {
  const path = controlSocketPath(runtimeDir);
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let reply = "";
    socket.setEncoding("utf8");
    socket.setTimeout(timeoutMs, () => {
      socket.destroy();
      reject(new FatalError(ExitCode.FAILURE, `the daemon did not answer on ${path} within ${timeoutMs} ms`));
    });
    socket.on("connect", () => socket.write(`${JSON.stringify(request)}\n`));
    socket.on("data", (chunk: string) => {
      reply += chunk;
      if (reply.length > REPLY_LIMIT_BYTES) socket.destroy(new Error("reply too large"));
    });
    socket.on("end", () => {
      try {
        resolve(JSON.parse(reply));
      } catch {
        reject(new FatalError(ExitCode.FAILURE, `the daemon sent an unreadable reply on ${path}`));
      }
    });
    socket.on("error", (err: NodeJS.ErrnoException) => {
      const why =
        err.code === "ENOENT" || err.code === "ECONNREFUSED"
          ? `the daemon is not running (no daemon listening on ${path}). Start it: systemctl start gpu-persistd. ` +
            "If it runs with another runtime directory, name it: --runtime-dir=DIR or GPU_PERSISTD_RUNTIME_DIR=DIR"
          : err.code === "EACCES"
            ? `no permission to connect to ${path}`
            : `cannot reach the daemon on ${path}: ${err.message}`;
      reject(new FatalError(ExitCode.UNAVAILABLE, why));
    });
  });
}

/** The running daemon's status, checked; FatalError when it cannot be had or read. */
export async function requestStatus(runtimeDir: string, timeoutMs?: number): Promise<DaemonStatus> {
  const reply = await requestControl(runtimeDir, { command: "status" }, timeoutMs);
  if (typeof reply === "object" && reply !== null && typeof (reply as { error?: unknown }).error === "string") {
    throw new FatalError(
      ExitCode.FAILURE,
      `the daemon refused the status request: ${(reply as { error: string }).error}`,
    );
  }
  try {
    return parseDaemonStatus(reply, VERSION);
  } catch (err) {
    throw new FatalError(ExitCode.FAILURE, (err as Error).message);
  }
}
