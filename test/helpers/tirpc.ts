// Builds and runs test/rpc/tirpc-client.c, a client on libtirpc: an independent ONC RPC
// implementation, as NVML's own client is.
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll } from "vitest";
import build from "../rpc/tirpc-client.build.json" with { type: "json" };
import { ROOT } from "./daemon.js";

let built: string | undefined;
let builtDir: string | undefined;
// Per test file (each imports this module afresh): vitest's workers end without running exit handlers.
afterAll(() => {
  if (builtDir) rmSync(builtDir, { recursive: true, force: true });
});

/** The client binary; throws with the apt-get line when libtirpc-dev is missing. */
export function tirpcClient(): string {
  if (built) return built;
  if (!existsSync("/usr/include/tirpc/rpc/rpc.h")) {
    throw new Error("libtirpc-dev is missing: apt-get install -y --no-install-recommends libtirpc-dev");
  }
  builtDir = mkdtempSync(join(tmpdir(), "gpu-persistd-tirpc-"));
  const out = join(builtDir, "tirpc-client");
  execFileSync("cc", [...build.cc, "-o", out, join(ROOT, "test/rpc/tirpc-client.c"), "-ltirpc"]);
  built = out;
  return out;
}

export interface TirpcResult {
  rpc?: string;
  status?: number;
  mode?: number;
  low?: number;
  high?: number;
  error?: string;
  detail?: string;
}

/** Runs one call; `asNobody` runs the client as uid/gid 65534 with no groups (setpriv). */
export function tirpc(socket: string, args: (string | number)[], asNobody = false): TirpcResult {
  const command = [tirpcClient(), socket, ...args.map(String)];
  const argv = asNobody ? ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ...command] : command;
  const result = spawnSync(argv[0] as string, argv.slice(1), { encoding: "utf8", timeout: 20_000 });
  if (result.status !== 0)
    throw new Error(`tirpc-client ${args.join(" ")} failed (${result.status}): ${result.stdout}${result.stderr}`);
  return JSON.parse(result.stdout.trim().split("\n").at(-1) as string) as TirpcResult;
}
