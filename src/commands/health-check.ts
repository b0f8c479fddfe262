// `gpu-persistd health-check [--slurm]`: one line saying whether every GPU the daemon wants
// held is held with no NVML recovery action pending, from the daemon's status over its control
// socket alone (never a config file). Exit 0 healthy, 1 not (the line names
// the GPU and the cause) or Slurm could not be read or updated, 69 no daemon answers. With --slurm (the shipped
// HealthCheckProgram), it also drains this node when unhealthy and resumes it once healthy,
// but only a node it drained itself (the reason's prefix says so).

import { spawnSync } from "node:child_process";
import { hostname } from "node:os";
import { requestStatus } from "../control/control-client.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import type { DaemonStatus } from "../status/daemon-status.js";
import { healthVerdict, type NodeState, nodeAction } from "../status/health-verdict.js";

/** Slurm's HealthCheckProgram must end within 60 s; a daemon that does not answer in 10 is unhealthy. */
const STATUS_TIMEOUT_MS = 10_000;
const SLURM_TIMEOUT_MS = 20_000;

export interface HealthCheckOptions {
  runtimeDir: string;
  drainReleased: boolean;
  slurm: boolean;
}

/** `sinfo -h -N -n NODE -o '%t %E'` (as NHC reads it) -> the node's state. */
export function parseSinfoNode(line: string): NodeState {
  const [state = "", ...rest] = line.trim().split(" ");
  const reason = rest.join(" ").trim();
  return { offline: /^(drain|drng|down|fail)/.test(state), reason: reason === "none" ? "" : reason };
}

function slurm(args: string[]): string {
  const result = spawnSync(args[0] as string, args.slice(1), { encoding: "utf8", timeout: SLURM_TIMEOUT_MS });
  if (result.error || result.status !== 0) {
    const why = result.error?.message ?? (result.stderr.trim() || `exit ${result.status}`);
    throw new FatalError(
      ExitCode.FAILURE,
      `cannot update Slurm: '${args.join(" ")}' failed (${why.split("\n")[0]}); check that slurmctld answers (scontrol ping) and that this runs as SlurmdUser (root)`,
    );
  }
  return result.stdout;
}

export async function healthCheckCommand(options: HealthCheckOptions): Promise<void> {
  let status: DaemonStatus | null = null;
  let unavailable: string | undefined;
  let noDaemon = false;
  try {
    status = await requestStatus(options.runtimeDir, STATUS_TIMEOUT_MS);
  } catch (err) {
    if (!(err instanceof FatalError)) throw err;
    // The client's message says cause and fix in sentences; a reason is its first one
    // ("daemon is not running (no daemon listening on ...)"), after the reason's own prefix.
    unavailable = err.message.split(". ")[0]?.replace(/^the daemon /, "daemon ");
    noDaemon = err.exitCode === ExitCode.UNAVAILABLE;
  }
  const verdict = healthVerdict({
    status,
    ...(unavailable !== undefined ? { unavailable } : {}),
    drainReleased: options.drainReleased,
  });
  let out = verdict.reason;
  if (options.slurm) {
    // slurmd names the node it runs as; by hand, the short host name is Slurm's default.
    const node = process.env.SLURMD_NODENAME || hostname().split(".")[0] || hostname();
    const line = slurm(["sinfo", "-h", "-N", "-n", node, "-o", "%t %E"]).split("\n")[0]?.trim();
    if (!line) {
      throw new FatalError(
        ExitCode.FAILURE,
        `Slurm knows no node '${node}' (sinfo -n ${node} is empty): run this as slurmd's HealthCheckProgram, or set SLURMD_NODENAME to the node's Slurm name`,
      );
    }
    const action = nodeAction(verdict, parseSinfoNode(line));
    if (action.action === "drain") {
      slurm(["scontrol", "update", `nodename=${node}`, "state=drain", `reason=${action.reason}`]);
      out += ` (drained ${node})`;
    } else if (action.action === "resume") {
      slurm(["scontrol", "update", `nodename=${node}`, "state=resume"]);
      out += ` (resumed ${node})`;
    } else {
      out += ` (${node}: ${action.why})`;
    }
  }
  // The line goes to stdout either way: it already starts with "gpu-persistd:", and Slurm
  // logs what its HealthCheckProgram prints.
  process.stdout.write(`${out}\n`);
  if (!verdict.healthy) process.exitCode = noDaemon ? ExitCode.UNAVAILABLE : ExitCode.FAILURE;
}
