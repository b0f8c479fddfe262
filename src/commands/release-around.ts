// `gpu-persistd release GPU... -- COMMAND [ARGS]`: lets the GPUs go completely (node, UVM
// registration, NVML session), runs COMMAND (a reset, a MIG change, a vfio bind), then has
// them held again however it ends, and exits with its code. The release lasts as long as this
// process: if it is killed, the kernel closes the connection and the daemon holds the GPUs
// again by itself; if the daemon restarts meanwhile, the next run keeps them released until
// this process ends (it watches a pidfd kept in systemd's fd store).
import { spawn } from "node:child_process";
import { connect } from "node:net";
import { constants } from "node:os";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { legacyFlagNote } from "../fixes.js";
import { controlSocketPath } from "../runtime-dir.js";
import type { GpuStatus } from "../status/daemon-status.js";
import { cannotRun, shellCommandLine } from "./shell-words.js";

const FORWARDED = ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"] as const;

function describe(devices: GpuStatus[]): string {
  return devices.map((d) => `GPU ${d.index} ${d.pciBusId}`).join(", ");
}

export function releaseAroundCommand(runtimeDir: string, gpus: string[], command: string[]): Promise<void> {
  const path = controlSocketPath(runtimeDir);
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    let buffered = "";
    let replies = 0;
    let exitCode: number | null = null;
    socket.setEncoding("utf8");
    socket.on("connect", () => socket.write(`${JSON.stringify({ command: "release", gpus })}\n`));
    socket.on("error", (err: NodeJS.ErrnoException) => {
      const why =
        err.code === "ENOENT" || err.code === "ECONNREFUSED"
          ? `the daemon is not running (no daemon listening on ${path})`
          : `cannot reach the daemon on ${path}: ${err.message}`;
      reject(new FatalError(ExitCode.UNAVAILABLE, why));
    });
    // From the start, signals go to the command (or, before it runs, end the release): this
    // process stays to have the GPUs held again.
    let child: ReturnType<typeof spawn> | null = null;
    const handlers = FORWARDED.map(
      (signal) =>
        [
          signal,
          () => {
            if (child) child.kill(signal);
            else {
              exitCode = 128 + constants.signals[signal];
              socket.end();
            }
          },
        ] as const,
    );
    for (const [signal, handler] of handlers) process.on(signal, handler);
    socket.on("close", () => {
      for (const [name, handler] of handlers) process.off(name, handler);
    });
    let closed = false;
    const runCommand = (): void => {
      const name = command[0] as string;
      // Set when COMMAND cannot be started: the code a shell gives for it, not spawn's errno.
      let notRun: number | null = null;
      child = spawn(name, command.slice(1), { stdio: "inherit" });
      child.on("error", (err: NodeJS.ErrnoException) => {
        const { exitCode: code, reason } = cannotRun(name, err);
        notRun = code;
        process.stderr.write(`gpu-persistd: ${name}: ${reason}\n`);
      });
      child.on("close", (code, signal) => {
        exitCode = notRun ?? code ?? (signal ? 128 + constants.signals[signal] : 127);
        if (!closed) {
          socket.end();
          return;
        }
        // The daemon went away during COMMAND: its code still counts, and the user is told.
        process.exitCode = exitCode;
        resolve();
      });
    };
    socket.on("data", (chunk: string) => {
      buffered += chunk;
      for (let nl = buffered.indexOf("\n"); nl >= 0; nl = buffered.indexOf("\n")) {
        const line = JSON.parse(buffered.slice(0, nl)) as {
          error?: string;
          released?: GpuStatus[];
          held?: GpuStatus[];
        };
        buffered = buffered.slice(nl + 1);
        replies++;
        if (line.error) {
          socket.destroy();
          reject(
            new FatalError(
              /only root/.test(line.error) ? ExitCode.NO_PERMISSION : ExitCode.FAILURE,
              `the daemon refused: ${line.error}`,
            ),
          );
          return;
        }
        if (line.released && exitCode === null) {
          process.stderr.write(
            `gpu-persistd: released ${describe(line.released)}; running ${shellCommandLine(command)}\n`,
          );
          for (const d of line.released.filter((g) => g.legacyFlag === "enabled")) {
            process.stderr.write(`gpu-persistd: GPU ${d.index}: but ${legacyFlagNote(d.index)}\n`);
          }
          runCommand();
        } else if (line.held) {
          const notHeld = line.held.filter((d) => !d.held);
          process.stderr.write(
            notHeld.length
              ? `gpu-persistd: could not hold again: ${notHeld.map((d) => `GPU ${d.index} ${d.pciBusId} (${d.error ?? d.state})`).join("; ")}\n`
              : `gpu-persistd: holding ${describe(line.held)} again\n`,
          );
        }
      }
    });
    socket.on("close", () => {
      closed = true;
      if (exitCode === null) {
        if (replies === 0) reject(new FatalError(ExitCode.FAILURE, `the daemon closed ${path} without an answer`));
        else {
          process.stderr.write(
            "gpu-persistd: the daemon closed the connection while the command ran (it restarted or stopped); " +
              "under systemd a restarted daemon keeps the GPUs released until this command ends (gpu-persistd status shows what is held now)\n",
          );
        }
        return;
      }
      process.exitCode = exitCode;
      resolve();
    });
  });
}
