// The RPC codec byte by byte, against records assembled by hand from RFC 5531 and 4506.
import { describe, expect, it } from "vitest";
import { frameRecord, RecordAssembler, RecordError } from "../../src/rpc/record-marking.js";
import {
  acceptedReply,
  authErrorReply,
  decodeCall,
  progMismatchReply,
  rpcMismatchReply,
} from "../../src/rpc/rpc-message.js";
import { XdrError, XdrReader } from "../../src/rpc/xdr.js";

const words = (...values: number[]): Buffer => {
  const b = Buffer.alloc(values.length * 4);
  for (const [i, v] of values.entries()) b.writeUInt32BE(v >>> 0, i * 4);
  return b;
};

// What nvidia-smi sent on the H100 machine: xid, CALL, rpcvers 2, prog 35006, vers 1,
// proc 2, AUTH_NONE credential and verifier, args 0, 0, 6, 0.
const NVIDIA_SMI_GET = words(0x1234abcd, 0, 2, 35006, 1, 2, 0, 0, 0, 0, 0, 0, 6, 0);
const LIMITS = { maxRecordBytes: 8192, maxFragments: 64 };

describe("record marking", () => {
  it("frames one record as a single last fragment", () => {
    const framed = frameRecord(NVIDIA_SMI_GET);
    expect(framed.readUInt32BE(0)).toBe((0x80000000 | NVIDIA_SMI_GET.length) >>> 0);
    expect(framed.subarray(4)).toEqual(NVIDIA_SMI_GET);
  });

  it("reassembles a record split across many fragments, fed one byte at a time", () => {
    const framed = frameRecord(NVIDIA_SMI_GET, 3);
    expect(framed.length).toBe(NVIDIA_SMI_GET.length + 4 * Math.ceil(NVIDIA_SMI_GET.length / 3));
    const assembler = new RecordAssembler(LIMITS);
    const records: Buffer[] = [];
    for (const byte of framed) records.push(...assembler.push(Buffer.from([byte])));
    expect(records).toEqual([NVIDIA_SMI_GET]);
    expect(assembler.bufferedBytes).toBe(0);
  });

  it("returns pipelined records in order from one read, keeping a partial one for later", () => {
    const second = words(7, 0, 2, 35006, 2, 0, 0, 0, 0, 0);
    const stream = Buffer.concat([frameRecord(NVIDIA_SMI_GET), frameRecord(second, 8), frameRecord(NVIDIA_SMI_GET)]);
    const assembler = new RecordAssembler(LIMITS);
    const cut = stream.length - 5;
    expect(assembler.push(stream.subarray(0, cut))).toEqual([NVIDIA_SMI_GET, second]);
    expect(assembler.push(stream.subarray(cut))).toEqual([NVIDIA_SMI_GET]);
  });

  it("accepts empty fragments", () => {
    const stream = Buffer.concat([words(0, 0), frameRecord(NVIDIA_SMI_GET)]);
    expect(new RecordAssembler(LIMITS).push(stream)).toEqual([NVIDIA_SMI_GET]);
  });

  it("refuses a record announced larger than the limit, from its header alone", () => {
    const assembler = new RecordAssembler(LIMITS);
    expect(() => assembler.push(words(0xffffffff))).toThrow(RecordError);
    expect(() => new RecordAssembler(LIMITS).push(words(0x80000000 + 8193))).toThrow(/exceeds the limit of 8192/);
  });

  it("refuses a record whose fragments add up past the limit", () => {
    const assembler = new RecordAssembler({ maxRecordBytes: 16, maxFragments: 64 });
    assembler.push(Buffer.concat([words(12), Buffer.alloc(12)]));
    expect(() => assembler.push(words(8))).toThrow(/at least 20 bytes/);
  });

  it("refuses too many fragments", () => {
    const assembler = new RecordAssembler({ maxRecordBytes: 8192, maxFragments: 4 });
    expect(() => assembler.push(Buffer.concat([words(0), words(0), words(0), words(0), words(0)]))).toThrow(
      /more than 4 fragments/,
    );
  });
});

describe("XDR", () => {
  it("reads padded opaque data and refuses lengths over the maximum before copying", () => {
    const r = new XdrReader(Buffer.concat([words(5), Buffer.from("abcde\0\0\0"), words(9)]));
    expect(r.opaque(10).toString()).toBe("abcde");
    expect(r.u32()).toBe(9);
    expect(() => new XdrReader(words(0xffffffff)).opaque(400)).toThrow(/exceeds its maximum of 400/);
    expect(() => new XdrReader(words(8, 1)).opaque(400)).toThrow(XdrError);
  });
});

describe("calls", () => {
  it("decodes nvidia-smi's Get as observed on the H100", () => {
    const decoded = decodeCall(NVIDIA_SMI_GET);
    expect(decoded.kind).toBe("call");
    if (decoded.kind !== "call") return;
    expect(decoded.call).toMatchObject({ xid: 0x1234abcd, rpcvers: 2, prog: 35006, vers: 1, proc: 2, credFlavor: 0 });
    expect([
      decoded.call.args.i32(),
      decoded.call.args.i32(),
      decoded.call.args.i32(),
      decoded.call.args.i32(),
    ]).toEqual([0, 0, 6, 0]);
  });

  it("decodes an AUTH_SYS credential", () => {
    const name = Buffer.from("host");
    const cred = Buffer.concat([words(1), words(4), name, words(1000, 1000, 2, 27, 44)]);
    const call = Buffer.concat([words(9, 0, 2, 35006, 1, 0, 1, cred.length), cred, words(0, 0)]);
    const decoded = decodeCall(call);
    expect(decoded.kind === "call" && decoded.call.authSys).toEqual({ uid: 1000, gid: 1000 });
  });

  it("denies a malformed AUTH_SYS credential with AUTH_BADCRED", () => {
    const call = Buffer.concat([words(9, 0, 2, 35006, 1, 0, 1, 8), words(1, 500), words(0, 0)]);
    const decoded = decodeCall(call);
    expect(decoded.kind).toBe("denied");
    expect(decoded.kind === "denied" && decoded.reply).toEqual(words(9, 1, 1, 1, 1));
  });

  it("denies other credential flavors with AUTH_REJECTEDCRED", () => {
    const decoded = decodeCall(words(9, 0, 2, 35006, 1, 0, 6, 0, 0, 0));
    expect(decoded.kind === "denied" && decoded.reply).toEqual(words(9, 1, 1, 1, 2));
  });

  it("denies another RPC version with RPC_MISMATCH 2..2", () => {
    const decoded = decodeCall(words(9, 0, 3, 35006, 1, 0, 0, 0, 0, 0));
    expect(decoded.kind === "denied" && decoded.reply).toEqual(words(9, 1, 1, 0, 2, 2));
  });

  it("ignores replies and records too short for a header", () => {
    expect(decodeCall(words(9, 1, 0)).kind).toBe("ignore");
    expect(decodeCall(Buffer.from([1, 2])).kind).toBe("ignore");
  });
});

describe("replies", () => {
  it("encodes accepted replies with an AUTH_NONE verifier", () => {
    expect(acceptedReply(5, 0, words(0, 1))).toEqual(words(5, 1, 0, 0, 0, 0, 0, 1));
    expect(progMismatchReply(5, 1, 2)).toEqual(words(5, 1, 0, 0, 0, 2, 1, 2));
    expect(acceptedReply(5, 3)).toEqual(words(5, 1, 0, 0, 0, 3));
  });

  it("encodes denied replies", () => {
    expect(rpcMismatchReply(5)).toEqual(words(5, 1, 1, 0, 2, 2));
    expect(authErrorReply(5, 5)).toEqual(words(5, 1, 1, 1, 5));
  });
});
