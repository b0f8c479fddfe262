// A minimal client of the persistence protocol, for `gpu-persistd release|hold`: one call
// per connection, as NVML itself does.
import { connect } from "node:net";
import { frameRecord, RecordAssembler } from "./record-marking.js";
import { AuthFlavor, RPC_VERSION } from "./rpc-message.js";
import { XdrReader, XdrWriter } from "./xdr.js";

export class RpcCallError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "RpcCallError";
  }
}

/** Encodes a call with AUTH_NONE credentials. */
export function encodeCall(xid: number, prog: number, vers: number, proc: number, args: Buffer): Buffer {
  const head = new XdrWriter()
    .u32(xid)
    .u32(0)
    .u32(RPC_VERSION)
    .u32(prog)
    .u32(vers)
    .u32(proc)
    .u32(AuthFlavor.NONE)
    .u32(0)
    .u32(AuthFlavor.NONE)
    .u32(0)
    .bytes();
  return Buffer.concat([head, args]);
}

/** Makes one call on the unix socket at `path`; resolves the result body of an accepted, successful reply. */
export function callOnce(
  path: string,
  prog: number,
  vers: number,
  proc: number,
  args: Buffer,
  timeoutMs = 10_000,
): Promise<XdrReader> {
  const xid = (Math.random() * 0xffffffff) >>> 0;
  return new Promise((resolve, reject) => {
    const socket = connect(path);
    const assembler = new RecordAssembler({ maxRecordBytes: 65536, maxFragments: 64 });
    socket.setTimeout(timeoutMs, () => {
      socket.destroy();
      reject(new RpcCallError(`no reply on ${path} within ${timeoutMs} ms`));
    });
    socket.on("connect", () => socket.write(frameRecord(encodeCall(xid, prog, vers, proc, args))));
    socket.on("error", (err) => reject(err));
    socket.on("data", (chunk: Buffer) => {
      const [record] = assembler.push(chunk);
      if (!record) return;
      socket.end();
      try {
        const r = new XdrReader(record);
        if (r.u32() !== xid || r.u32() !== 1) throw new RpcCallError("reply does not match the call");
        if (r.u32() !== 0) throw new RpcCallError("call denied (RPC version or credentials)");
        r.u32();
        r.opaque(400);
        const stat = r.u32();
        if (stat !== 0) throw new RpcCallError(`call not accepted (accept_stat ${stat})`);
        resolve(r);
      } catch (err) {
        reject(err);
      }
    });
  });
}
