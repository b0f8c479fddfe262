// The simulated libnvidia-ml routes persistence calls as real NVML was measured to (driver
// 580.159.04, docs/architecture.md "How NVML reaches the daemon"): to the socket when one is
// there, waiting for the answer without a limit; the legacy flag when the socket is absent or
// closes unanswered; the daemon's answer combined with the flag. Here a plain test server plays
// the daemon, so what is checked is NVML's side alone.
import { closeSync, mkdirSync, openSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import koffi from "koffi";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { Nvml } from "../../native-bindings/nvml.js";
import { frameRecord, RecordAssembler } from "../../src/rpc/record-marking.js";
import { XdrWriter } from "../../src/rpc/xdr.js";
import { Scratch, SIM_LIBRARY, type SimConfig } from "../helpers/daemon.js";

const scratch = new Scratch();
const sim = koffi.load(SIM_LIBRARY);
const reset = sim.func("void gpuPersistdSimReset()");
const simGpuState = sim.func("int gpuPersistdSimGpuState(int gpu)");
const nvml = Nvml.load(SIM_LIBRARY, 10_000);
// The client side only (nvidia-smi -pm): the daemon's binding declares no setter.
const setter = sim.func("int nvmlDeviceSetPersistenceMode(void *dev, int mode)");
/** The setter off the event loop (a routed call waits for the test's own server); NVML's return code. */
const setMode = (dev: unknown, mode: number): Promise<number> =>
  new Promise((resolve, reject) =>
    setter.async(dev, mode, (err: Error | null, ret: number) => (err ? reject(err) : resolve(ret))),
  );
const socketPath = join(scratch.dir, "socket");
const deviceDir = join(scratch.dir, "dev");
let server: Server | null = null;

function simulate(config: SimConfig & Record<string, unknown>): void {
  reset();
  mkdirSync(deviceDir, { recursive: true });
  for (const minor of [0, 1]) writeFileSync(join(deviceDir, `nvidia${minor}`), "");
  writeFileSync(scratch.callLogPath, "");
  scratch.writeSimConfig({ persistenceSocket: socketPath, deviceDir, ...config } as SimConfig);
  process.env.GPU_PERSISTD_SIM_CONFIG = scratch.simConfigPath;
}

/** What one call asked: procedure, the device's bus, and (Set) the mode. */
interface Asked {
  proc: number;
  bus: number;
  mode: number | null;
  reply: (status: number, mode?: number) => void;
  socket: Socket;
}

/** A daemon stand-in: each call is handed to `onCall`, which answers (or not) when it likes. */
function serve(onCall: (asked: Asked) => void): Promise<void> {
  server = createServer((socket) => {
    const assembler = new RecordAssembler({ maxRecordBytes: 4096, maxFragments: 4 });
    socket.on("data", (chunk: Buffer) => {
      for (const record of assembler.push(chunk)) {
        const xid = record.readUInt32BE(0);
        const proc = record.readUInt32BE(20);
        onCall({
          proc,
          bus: record.readInt32BE(44),
          mode: proc === 1 ? record.readInt32BE(56) : null,
          socket,
          reply: (status, mode) => {
            const body = new XdrWriter().u32(xid).u32(1).u32(0).u32(0).u32(0).u32(0).i32(status);
            if (mode !== undefined) body.i32(mode);
            socket.end(frameRecord(body.bytes()));
          },
        });
      }
    });
  });
  return new Promise((resolve) => server?.listen(socketPath, resolve));
}

beforeEach(() => simulate({ gpus: [{ persistence: 0 }, { persistence: 1 }] }));
afterEach(async () => {
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  server = null;
});
afterAll(() => {
  reset();
  scratch.cleanup();
});

async function handles() {
  await nvml.init();
  return [await nvml.handleByIndex(0), await nvml.handleByIndex(1)] as const;
}

const routed = () => scratch.calls().filter((c) => c.call.startsWith("persistenceSocket:"));

describe("NVML's persistence calls, routed as real NVML routes them", () => {
  it("with no socket there, reads the kernel's legacy flag and routes nothing", async () => {
    const [a, b] = await handles();
    expect([await nvml.persistenceMode(a), await nvml.persistenceMode(b)]).toEqual([0, 1]);
    expect(routed()).toEqual([]);
  });

  it("with a socket there, waits for the daemon's answer however long it takes, and combines it with the flag", async () => {
    const waiting: Asked[] = [];
    let asked: () => void = () => {};
    const arrived = new Promise<void>((r) => {
      asked = r;
    });
    await serve((call) => {
      waiting.push(call);
      asked();
    });
    const [a] = await handles();
    let answered = false;
    const read = nvml.persistenceMode(a).then((mode) => {
      answered = true;
      return mode;
    });
    await arrived;
    // The call reached the daemon: it stays inside NVML until the daemon answers.
    await new Promise((r) => setImmediate(r));
    expect(answered).toBe(false);
    expect(waiting[0]).toMatchObject({ proc: 2, bus: 0x06, mode: null });
    waiting[0]?.reply(0, 1);
    expect(await read).toBe(1);
    expect(routed().map((c) => c.call)).toEqual(["persistenceSocket:answered"]);
  });

  it("the flag wins over a daemon that answers disabled (nvidia-smi then prints Enabled)", async () => {
    await serve((call) => call.reply(0, 0));
    const [a, b] = await handles();
    expect([await nvml.persistenceMode(a), await nvml.persistenceMode(b)]).toEqual([0, 1]);
  });

  it("a connection closed unanswered falls back to the flag at once", async () => {
    await serve((call) => call.socket.destroy());
    const [a, b] = await handles();
    expect([await nvml.persistenceMode(a), await nvml.persistenceMode(b)]).toEqual([0, 1]);
    expect(routed().map((c) => c.call)).toEqual(["persistenceSocket:closed", "persistenceSocket:closed"]);
  });

  it("a set goes to the daemon when its socket is there: the daemon decides, the flag is untouched", async () => {
    await serve((call) => call.reply(call.mode === 1 ? 0 : 7));
    const [a] = await handles();
    expect(await setMode(a, 1)).toBe(0);
    expect(await setMode(a, 0)).toBe(4); // NVML_ERROR_NO_PERMISSION
    server?.close();
    server = null;
    expect(simGpuState(0)).toBe(0);
  });

  it("without a socket a set turns the legacy flag on, which keeps the GPU initialised after its last close", async () => {
    const [a, b] = await handles();
    expect(simGpuState(0)).toBe(0);
    const node = openSync(join(deviceDir, "nvidia0"), "r+");
    expect(simGpuState(0)).toBe(2);
    expect(await setMode(a, 1)).toBe(0);
    closeSync(node);
    // Held by nobody, yet initialised: the flag, as the kernel keeps it.
    expect(simGpuState(0)).toBe(1);
    expect(await nvml.persistenceMode(a)).toBe(1);
    expect(await setMode(b, 0)).toBe(0);
    expect(simGpuState(1)).toBe(0);
    expect(simGpuState(7)).toBe(-1);
  });
});
