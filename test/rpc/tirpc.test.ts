// The persistence RPC service against libtirpc, and the release/hold commands.
import { spawnSync } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BUNDLE, DaemonProcess, openFiles, runBundle, Scratch, statusJson } from "../helpers/daemon.js";
import { tirpc } from "../helpers/tirpc.js";

let scratch: Scratch;
let daemon: DaemonProcess;
let socket: string;

/** A config file the unprivileged client can read. */
function emptyConfig(): string {
  const path = join(scratch.dir, "config.json");
  writeFileSync(path, "{}");
  chmodSync(path, 0o644);
  return path;
}

const heldNodes = () =>
  openFiles(daemon.pid)
    .filter((p) => p.includes("/sim-dev/nvidia"))
    .sort();
const node = (minor: number) => join(scratch.runtimeDir, "sim-dev", `nvidia${minor}`);

beforeAll(async () => {
  scratch = new Scratch();
  // Every NVML call the daemon makes, its persistence calls routed to its own socket included, shows in the call log.
  scratch.writeSimConfig({ gpus: 4 });
  chmodSync(scratch.dir, 0o755);
  daemon = new DaemonProcess([`--runtime-dir=${scratch.runtimeDir}`, "--simulate", "--verbose"], {
    GPU_PERSISTD_SIM_CONFIG: scratch.simConfigPath,
  });
  await daemon.waitReady();
  socket = join(scratch.runtimeDir, "socket");
});

afterAll(async () => {
  await daemon?.stop();
  scratch?.cleanup();
});

describe("program 35006 through libtirpc", () => {
  it("answers NULL on versions 1 and 2", () => {
    expect(tirpc(socket, [35006, 1, "null"]).rpc).toBe("RPC_SUCCESS");
    expect(tirpc(socket, [35006, 2, "null"]).rpc).toBe("RPC_SUCCESS");
  });

  it("answers Get for every GPU: enabled while held", () => {
    for (const bus of [6, 7, 8, 9]) {
      expect(tirpc(socket, [35006, 1, "get", 0, bus, 0])).toEqual({ rpc: "RPC_SUCCESS", status: 0, mode: 1 });
    }
  });

  it("answers DEVICE_NOT_FOUND, with no mode, for an unknown device", () => {
    expect(tirpc(socket, [35006, 1, "get", 0, 0x42, 0])).toEqual({ rpc: "RPC_SUCCESS", status: 2, mode: -1 });
    expect(tirpc(socket, [35006, 2, "set", 0, 0x42, 0, 1])).toEqual({ rpc: "RPC_SUCCESS", status: 2 });
  });

  it("rejects unknown procedures, versions and programs as RFC 5531 says", () => {
    expect(tirpc(socket, [35006, 1, "proc", 7]).rpc).toBe("RPC_PROCUNAVAIL");
    expect(tirpc(socket, [35006, 2, "proc", 3]).rpc).toBe("RPC_PROCUNAVAIL");
    expect(tirpc(socket, [35006, 3, "null"])).toMatchObject({ rpc: "RPC_PROGVERSMISMATCH", low: 1, high: 2 });
    expect(tirpc(socket, [35006, 0, "null"])).toMatchObject({ rpc: "RPC_PROGVERSMISMATCH", low: 1, high: 2 });
    expect(tirpc(socket, [100003, 1, "null"]).rpc).toBe("RPC_PROGUNAVAIL");
  });

  it("accepts AUTH_SYS credentials", () => {
    expect(tirpc(socket, ["--auth-sys", 35006, 1, "get", 0, 6, 0])).toEqual({ rpc: "RPC_SUCCESS", status: 0, mode: 1 });
  });

  it("releases a GPU completely on Set DISABLED and holds it again on Set ENABLED", () => {
    expect(heldNodes()).toEqual([0, 1, 2, 3].map(node));
    expect(tirpc(socket, [35006, 2, "set", 0, 7, 0, 0])).toEqual({ rpc: "RPC_SUCCESS", status: 0 });
    expect(heldNodes()).toEqual([0, 2, 3].map(node));
    expect(tirpc(socket, [35006, 1, "get", 0, 7, 0])).toEqual({ rpc: "RPC_SUCCESS", status: 0, mode: 0 });
    expect(statusJson(scratch.runtimeDir)).toMatchObject({ nvmlSession: false });
    // The NVML session, which pins every GPU, ended with the release.
    expect(scratch.calls().at(-1)?.call).toBe("nvmlShutdown");
    // Setting the current mode again is a successful no-op.
    expect(tirpc(socket, [35006, 2, "set", 0, 7, 0, 0])).toEqual({ rpc: "RPC_SUCCESS", status: 0 });
    expect(tirpc(socket, [35006, 1, "set", 0, 7, 0, 1])).toEqual({ rpc: "RPC_SUCCESS", status: 0 });
    expect(heldNodes()).toEqual([0, 1, 2, 3].map(node));
    expect(tirpc(socket, [35006, 1, "get", 0, 7, 0])).toEqual({ rpc: "RPC_SUCCESS", status: 0, mode: 1 });
    expect(statusJson(scratch.runtimeDir)).toMatchObject({ nvmlSession: true });
  });

  it("answers INVALID_ARGUMENT for a mode that is neither 0 nor 1", () => {
    expect(tirpc(socket, [35006, 2, "set", 0, 7, 0, 5])).toEqual({ rpc: "RPC_SUCCESS", status: 5 });
  });

  it("reports NUMA success for GPUs without coherent memory", () => {
    expect(tirpc(socket, [35006, 2, "numa", 0, 6, 0, 1])).toEqual({ rpc: "RPC_SUCCESS", status: 0 });
  });

  it("refuses setters to a non-root peer, whatever its RPC credential says, and changes nothing", async () => {
    expect(tirpc(socket, [35006, 2, "set", 0, 8, 0, 0], true)).toEqual({ rpc: "RPC_SUCCESS", status: 7 });
    expect(tirpc(socket, ["--auth-sys", 35006, 1, "set", 0, 8, 0, 0], true)).toEqual({ rpc: "RPC_SUCCESS", status: 7 });
    expect(tirpc(socket, [35006, 2, "numa", 0, 8, 0, 0], true)).toEqual({ rpc: "RPC_SUCCESS", status: 7 });
    expect(heldNodes()).toEqual([0, 1, 2, 3].map(node));
    // Anyone may ask.
    expect(tirpc(socket, [35006, 1, "get", 0, 8, 0], true)).toEqual({ rpc: "RPC_SUCCESS", status: 0, mode: 1 });
    await daemon.waitFor(/RPC: rejected a request from pid \d+ \(uid 65534\): set persistence off/);
  });

  it("never calls NVML's setter; its own persistence reads reached its served socket and came back unanswered", () => {
    expect(scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
    const servedAt = /^(\S+) INFO {2}serving the persistence RPC protocol/m.exec(daemon.output)?.[1];
    expect(servedAt).toBeDefined();
    const routed = scratch.calls().filter((c) => c.call.startsWith("persistenceSocket:"));
    // One legacy-flag read per GPU at bring-up, after the socket was served, each closed
    // unanswered by the daemon's own server; none since, though GPUs were released and held
    // again over RPC meanwhile.
    expect(routed.map((c) => `${c.call} ${c.gpu}`).sort()).toEqual(
      [0, 1, 2, 3].map((gpu) => `persistenceSocket:closed ${gpu}`),
    );
    expect(routed.every((c) => c.pid === daemon.pid && c.time >= Date.parse(servedAt as string) / 1000)).toBe(true);
  });
});

describe("gpu-persistd release / hold", () => {
  const cli = (...args: string[]) => runBundle([...args, `--runtime-dir=${scratch.runtimeDir}`]);

  it("releases GPU 3 leaving the other nodes held, and holds it again", () => {
    const released = cli("release", "3");
    expect(released.code).toBe(0);
    expect(released.stdout).toBe("GPU 3 00000000:09:00.0: released (was held)\n");
    expect(heldNodes()).toEqual([0, 1, 2].map(node));
    const status = cli("status");
    expect(status.stdout).toContain("3/4 GPUs held");
    expect(cli("release", "3").stdout).toBe("GPU 3 00000000:09:00.0: already released\n");
    const held = cli("hold", "GPU-78dde6e4-bbcd-4cdc-9bbc-230c0f710003");
    expect(held.stdout).toBe("GPU 3 00000000:09:00.0: held (was released)\n");
    expect(heldNodes()).toEqual([0, 1, 2, 3].map(node));
    expect(cli("hold", "0000:09:00.0").stdout).toBe("GPU 3 00000000:09:00.0: already held\n");
  });

  it("says what is wrong with a GPU that does not exist", () => {
    const result = cli("release", "7");
    expect(result.code).toBe(1);
    expect(result.stderr).toContain("no GPU matches '7' (the daemon knows 4 GPUs");
    expect(cli("release", "banana").code).toBe(64);
  });

  it("exits 77 with the fix when not run as root, changing nothing", () => {
    const result = spawnSync(
      "setpriv",
      [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        process.execPath,
        BUNDLE,
        "release",
        "2",
        `--runtime-dir=${scratch.runtimeDir}`,
      ],
      { encoding: "utf8", env: { PATH: process.env.PATH, GPU_PERSISTD_CONFIG: emptyConfig() } },
    );
    expect(result.stderr).toContain(
      "GPU 2 00000000:08:00.0: refused: only root may hold or release GPUs (run with sudo)",
    );
    expect(result.status).toBe(77);
    expect(heldNodes()).toEqual([0, 1, 2, 3].map(node));
  });
});
