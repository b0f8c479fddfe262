// A hostile local client: over 100,000 mutated and random records (seeded, reproducible),
// framing attacks, then a flood of 1,000 concurrent connections. The daemon must survive,
// stay bounded, and answer every valid call.
import { connect } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { frameRecord } from "../../src/rpc/record-marking.js";
import { encodeCall } from "../../src/rpc/rpc-client.js";
import { XdrWriter } from "../../src/rpc/xdr.js";
import { DaemonProcess, Scratch, statusJson } from "../helpers/daemon.js";
import { rpcGet } from "../helpers/rpc.js";

const SEED = Number(process.env.FUZZ_SEED ?? 20261125);
const RECORDS = 100_000;
const PER_CONNECTION = 500;
const PARALLEL = 8;

let scratch: Scratch;
let daemon: DaemonProcess;
let socket: string;

beforeAll(async () => {
  scratch = new Scratch();
  scratch.writeSimConfig({});
  daemon = new DaemonProcess([`--runtime-dir=${scratch.runtimeDir}`, "--simulate=4"], {
    GPU_PERSISTD_SIM_CONFIG: scratch.simConfigPath,
  });
  await daemon.waitReady();
  socket = join(scratch.runtimeDir, "socket");
});

afterAll(async () => {
  await daemon?.stop();
  scratch?.cleanup();
});

/** mulberry32: a small seeded generator, so a failure can be replayed with FUZZ_SEED. */
function generator(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const get = (xid: number, bus = 6) => rpcGet(socket, xid, bus);

/** A record payload: a valid call mutated (bytes flipped, cut, extended, words replaced), or noise. */
function fuzzPayload(random: () => number): Buffer {
  const int = (n: number) => Math.floor(random() * n);
  const kind = int(5);
  if (kind === 0) return Buffer.from(Array.from({ length: int(200) }, () => int(256)));
  const proc = int(4);
  const vers = int(4);
  const args = new XdrWriter()
    .i32(int(3))
    .i32(int(300) - 20)
    .i32(int(40))
    .i32(int(8))
    .i32(int(4) - 1)
    .bytes();
  const base = Buffer.from(encodeCall(int(0xffffffff), random() < 0.8 ? 35006 : int(0xffffffff), vers, proc, args));
  if (kind === 1) for (let i = int(6); i >= 0; i--) base[int(base.length)] = int(256);
  if (kind === 2) return base.subarray(0, int(base.length));
  if (kind === 3) return Buffer.concat([base, Buffer.from(Array.from({ length: int(64) }, () => int(256)))]);
  if (kind === 4) base.writeUInt32BE(random() < 0.5 ? 0xffffffff : int(0xffffffff), 4 * int(base.length / 4));
  return base;
}

/** Writes records on one connection, half-closes, and waits for the server to finish. */
function sendAll(records: Buffer[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = connect(socket);
    s.on("connect", () => {
      s.write(Buffer.concat(records.map((r) => frameRecord(r))));
      s.end();
    });
    s.on("data", () => {});
    s.on("close", () => resolve());
    s.on("error", (err: NodeJS.ErrnoException) =>
      err.code === "EPIPE" || err.code === "ECONNRESET" ? resolve() : reject(err),
    );
  });
}

describe("RPC robustness", () => {
  it(`survives ${RECORDS} mutated and random records (seed ${SEED}) and still answers a valid Get`, async () => {
    const random = generator(SEED);
    const before = statusJson(scratch.runtimeDir).rpcRequests;
    const batches = RECORDS / PER_CONNECTION;
    let next = 0;
    await Promise.all(
      Array.from({ length: PARALLEL }, async () => {
        while (next < batches) {
          next++;
          await sendAll(Array.from({ length: PER_CONNECTION }, () => fuzzPayload(random)));
        }
      }),
    );
    const handled = statusJson(scratch.runtimeDir).rpcRequests - before;
    expect(handled).toBeGreaterThanOrEqual(RECORDS);
    expect(await get(42)).toBe(1);
    expect(statusJson(scratch.runtimeDir).devices.every((d) => d.held)).toBe(true);
  });

  it("closes connections that announce oversized or endless records, and keeps serving", async () => {
    const attacks = [
      Buffer.from([0xff, 0xff, 0xff, 0xff]),
      Buffer.concat(Array.from({ length: 100 }, () => Buffer.from([0, 0, 0, 0]))),
      Buffer.concat([Buffer.from([0x80, 0, 0x40, 0]), Buffer.alloc(1000)]),
    ];
    for (const attack of attacks) {
      await new Promise<void>((resolve) => {
        const s = connect(socket, () => s.write(attack));
        s.on("close", () => resolve());
        s.on("error", () => {});
      });
    }
    expect(await get(43)).toBe(1);
  });

  it("closes an idle connection that sends half a record, without blocking others", async () => {
    const slow = connect(socket);
    await new Promise((r) => slow.on("connect", r));
    slow.write(Buffer.from([0x80, 0, 0, 40, 0, 0]));
    expect(await get(44)).toBe(1);
    slow.destroy();
  });

  it("answers 1,000 concurrent connections, each with a valid Get, without one failure", async () => {
    const results = await Promise.allSettled(Array.from({ length: 1000 }, (_, i) => get(1000 + i, 6 + (i % 4))));
    const failed = results.filter((r) => r.status === "rejected");
    expect(failed.map((r) => (r as PromiseRejectedResult).reason?.message)).toEqual([]);
    expect(results.every((r) => r.status === "fulfilled" && r.value === 1)).toBe(true);
  });
});
