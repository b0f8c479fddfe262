// Every release path against a spawned daemon with the shipped defaults (health interval,
// NVML time limit, control deadline: nothing shortened), the simulated NVML session
// attaching every GPU as real NVML does: the CLI's release and hold (RPC v2), nvidia-smi's
// v1 Set, `release -- COMMAND` with a command that outlasts the control socket's request
// deadline, a GPU lost while another is released, and clients killed at every step.
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { BUNDLE, DaemonFixture, type DaemonProcess, openFiles, runBundle, statusJson } from "../helpers/daemon.js";
import { tirpc } from "../helpers/tirpc.js";

const fixture = new DaemonFixture();

async function start(gpus: number, events: Record<string, unknown>[] = []): Promise<DaemonProcess> {
  fixture.prepare({});
  // The session's attach: an fd on each stand-in node while NVML is initialised.
  fixture.scratch.writeSimConfig({ attachDir: join(fixture.scratch.runtimeDir, "sim-dev"), events });
  const d = fixture.spawn([`--simulate=${gpus}`]);
  await d.waitReady();
  return d;
}

/** How many fds the daemon process (its own, and its NVML session's) has on GPU `minor`'s node. */
function pins(d: DaemonProcess, minor: number): number {
  const node = join(fixture.scratch.runtimeDir, "sim-dev", `nvidia${minor}`);
  return openFiles(d.child.pid as number).filter((f) => f === node).length;
}

const cli = (args: string[]) => runBundle([`--runtime-dir=${fixture.scratch.runtimeDir}`, ...args], fixture.env());
const states = () => statusJson(fixture.scratch.runtimeDir).devices.map((g) => g.state);

async function until(condition: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("releases with the shipped defaults", () => {
  it("release GPU and hold GPU (RPC v2): nothing of the daemon's pins a released GPU; the others stay held", async () => {
    const d = await start(3);
    expect(pins(d, 0)).toBe(2);
    const released = cli(["release", "0"]);
    expect(released.code, released.output).toBe(0);
    expect(released.stdout).toBe("GPU 0 00000000:06:00.0: released (was held)\n");
    expect(pins(d, 0)).toBe(0);
    expect(states()).toEqual(["released", "held", "held"]);
    expect(statusJson(fixture.scratch.runtimeDir).nvmlSession).toBe(false);
    expect(cli(["release", "0"]).stdout).toBe("GPU 0 00000000:06:00.0: already released\n");
    const held = cli(["hold", "0"]);
    expect(held.stdout).toBe("GPU 0 00000000:06:00.0: held (was released)\n");
    expect(states()).toEqual(["held", "held", "held"]);
    expect(pins(d, 0)).toBe(2);
  });

  it("nvidia-smi's v1 Set DISABLED and ENABLED, through libtirpc with NVML's 5 s timeout", async () => {
    const d = await start(2);
    const socket = join(fixture.scratch.runtimeDir, "socket");
    expect(tirpc(socket, ["35006", "1", "set", 0, 6, 0, 0])).toMatchObject({ rpc: "RPC_SUCCESS", status: 0 });
    expect(pins(d, 0)).toBe(0);
    expect(tirpc(socket, ["35006", "1", "get", 0, 6, 0])).toMatchObject({ status: 0, mode: 0 });
    expect(tirpc(socket, ["35006", "1", "set", 0, 6, 0, 1])).toMatchObject({ rpc: "RPC_SUCCESS", status: 0 });
    expect(states()).toEqual(["held", "held"]);
  });

  it("release -- COMMAND: COMMAND starts with nothing of the daemon's on the GPU and may outlast the control socket's deadline", async () => {
    const d = await start(2);
    const seen = join(fixture.scratch.dir, "seen");
    const node = join(fixture.scratch.runtimeDir, "sim-dev", "nvidia0");
    const result = cli([
      "release",
      "0",
      "--",
      "sh",
      "-c",
      `ls -l /proc/${d.child.pid}/fd | grep -c ' ${node}$' > ${seen}; sleep 6; exit 4`,
    ]);
    expect(result.code, result.output).toBe(4);
    expect(readFileSync(seen, "utf8").trim()).toBe("0");
    expect(result.stderr).toContain("holding GPU 0 00000000:06:00.0 again");
    expect(states()).toEqual(["held", "held"]);
    expect(pins(d, 0)).toBe(2);
  }, 30_000);

  it("a GPU lost while another is released is seen within one health interval; the released one stays released", async () => {
    // GPU 2 falls off the bus 2 s after the simulator's first nvmlInit: after the release below.
    const d = await start(3, [{ gpu: 2, type: 8, data: 79, afterMs: 2000 }]);
    expect(cli(["release", "0"]).code).toBe(0);
    const releasedAt = Date.now();
    await until(() => states()[2] === "lost", 15_000 + 2000);
    expect(Date.now() - releasedAt).toBeLessThan(15_000 + 2000 + 1000);
    expect(states()).toEqual(["released", "held", "lost"]);
    expect(pins(d, 0)).toBe(0);
    expect(pins(d, 2)).toBe(0);
    await d.waitFor("GPU 2 00000000:08:00.0: GPU is lost (the driver no longer answers on the GPU's node", 2000);
  }, 40_000);
});

describe("clients killed at every step of a lease", () => {
  /** A raw control client: sends a release of GPU 0, then `after(reply count)` decides what to do. */
  function rawRelease(onLine: (n: number, socket: ReturnType<typeof connect>) => void): Promise<void> {
    return new Promise((resolve) => {
      const socket = connect(join(fixture.scratch.runtimeDir, "gpu-persistd.sock"), () =>
        socket.write('{"command":"release","gpus":["0"]}\n'),
      );
      let lines = 0;
      socket.setEncoding("utf8");
      socket.on("data", (chunk: string) => {
        for (const _ of chunk.matchAll(/\n/g)) onLine(++lines, socket);
      });
      socket.on("close", () => resolve());
      socket.on("error", () => resolve());
      onLine(0, socket);
    });
  }

  it("gone before the reply: the GPU is held again", async () => {
    const d = await start(2);
    await rawRelease((n, socket) => {
      if (n === 0) setImmediate(() => socket.destroy());
    });
    await until(() => states()[0] === "held" && statusJson(fixture.scratch.runtimeDir).nvmlSession, 5000);
    expect(pins(d, 0)).toBe(2);
  });

  it("gone while the GPU is being held again: held, and a new release works", async () => {
    const d = await start(2);
    await rawRelease((n, socket) => {
      if (n === 1) {
        socket.end();
        socket.destroy();
      }
    });
    await until(() => states()[0] === "held", 5000);
    expect(cli(["release", "0"]).code).toBe(0);
    expect(pins(d, 0)).toBe(0);
  });

  it("the CLI killed during COMMAND: held again; a second release -- COMMAND meanwhile is refused", async () => {
    const d = await start(2);
    const first = spawn(
      process.execPath,
      [BUNDLE, "release", "0", `--runtime-dir=${fixture.scratch.runtimeDir}`, "--", "sleep", "30"],
      { env: { ...process.env, ...fixture.env() }, stdio: "ignore", detached: true },
    );
    await until(() => states()[0] === "released", 10_000);
    const second = cli(["release", "0", "--", "true"]);
    expect(second.code).toBe(1);
    expect(second.stderr).toContain("GPU 0 is already released by another 'gpu-persistd release'");
    process.kill(-(first.pid as number), "SIGKILL");
    await until(() => states()[0] === "held", 5000);
    expect(pins(d, 0)).toBe(2);
  });
});
