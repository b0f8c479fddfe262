// A valid persistence Get (v1 proc 2), one connection per call as NVML makes them, for the
// tests that load the RPC service.
import { connect } from "node:net";
import { frameRecord, RecordAssembler } from "../../src/rpc/record-marking.js";
import { encodeCall } from "../../src/rpc/rpc-client.js";
import { XdrWriter } from "../../src/rpc/xdr.js";

/** The Get's call record for GPU 0000:BUS:00. */
export const getCall = (xid: number, bus = 6): Buffer =>
  encodeCall(xid, 35006, 1, 2, new XdrWriter().i32(0).i32(bus).i32(0).i32(0).bytes());

/** Resolves the persistence mode answered; rejects on anything but an accepted, successful reply. */
export function rpcGet(socket: string, xid: number, bus = 6, timeoutMs = 20_000): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = connect(socket);
    const assembler = new RecordAssembler({ maxRecordBytes: 4096, maxFragments: 4 });
    s.setTimeout(timeoutMs, () => s.destroy(new Error("RPC timeout")));
    s.on("connect", () => s.write(frameRecord(getCall(xid, bus))));
    s.on("error", reject);
    s.on("data", (chunk: Buffer) => {
      const [reply] = assembler.push(chunk);
      if (!reply) return;
      s.end();
      // xid, REPLY, MSG_ACCEPTED, verifier (0, 0), SUCCESS, status, mode
      if (reply.readUInt32BE(0) !== xid || reply.readUInt32BE(20) !== 0 || reply.readInt32BE(24) !== 0) {
        reject(new Error(`unexpected reply ${reply.toString("hex")}`));
      } else resolve(reply.readInt32BE(28));
    });
  });
}
