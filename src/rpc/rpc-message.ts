// ONC RPC version 2 messages (RFC 5531): decoding a call, encoding every kind of reply.
import { XdrError, XdrReader, XdrWriter } from "./xdr.js";

export const RPC_VERSION = 2;
const CALL = 0;
const REPLY = 1;
const MSG_ACCEPTED = 0;
const MSG_DENIED = 1;

export const AcceptStat = {
  SUCCESS: 0,
  PROG_UNAVAIL: 1,
  PROG_MISMATCH: 2,
  PROC_UNAVAIL: 3,
  GARBAGE_ARGS: 4,
  SYSTEM_ERR: 5,
} as const;

export const AuthFlavor = { NONE: 0, SYS: 1 } as const;
export const AuthStat = { BADCRED: 1, REJECTEDCRED: 2, TOOWEAK: 5 } as const;

const MAX_AUTH_BYTES = 400;
const MAX_MACHINE_NAME = 255;
const MAX_AUTH_SYS_GIDS = 16;

export interface RpcCall {
  xid: number;
  rpcvers: number;
  prog: number;
  vers: number;
  proc: number;
  credFlavor: number;
  /** The decoded AUTH_SYS credential (informational: a client can forge it). */
  authSys: { uid: number; gid: number } | null;
  /** The procedure's arguments, positioned after the verifier. */
  args: XdrReader;
}

export type DecodedCall =
  | { kind: "call"; call: RpcCall }
  /** Not a call (a reply sent to us, say): no answer is possible or due. */
  | { kind: "ignore"; reason: string }
  /** A call whose header is unreadable or whose credential is refused: answer MSG_DENIED. */
  | { kind: "denied"; xid: number; reply: Buffer; reason: string };

function decodeAuthSys(body: Buffer): { uid: number; gid: number } {
  const r = new XdrReader(body);
  r.u32("stamp");
  r.opaque(MAX_MACHINE_NAME, "machine name");
  const uid = r.u32("uid");
  const gid = r.u32("gid");
  const gids = r.u32("gids count");
  if (gids > MAX_AUTH_SYS_GIDS) throw new XdrError(`AUTH_SYS with ${gids} groups (at most ${MAX_AUTH_SYS_GIDS})`);
  for (let i = 0; i < gids; i++) r.u32("gid");
  return { uid, gid };
}

export function decodeCall(record: Buffer): DecodedCall {
  const r = new XdrReader(record);
  let xid: number;
  try {
    xid = r.u32("xid");
    const type = r.u32("msg_type");
    if (type !== CALL) return { kind: "ignore", reason: `message type ${type} is not a call` };
  } catch (err) {
    return { kind: "ignore", reason: (err as Error).message };
  }
  try {
    const rpcvers = r.u32("rpcvers");
    if (rpcvers !== RPC_VERSION) {
      return { kind: "denied", xid, reply: rpcMismatchReply(xid), reason: `RPC version ${rpcvers}` };
    }
    const prog = r.u32("prog");
    const vers = r.u32("vers");
    const proc = r.u32("proc");
    const credFlavor = r.u32("credential flavor");
    const credBody = r.opaque(MAX_AUTH_BYTES, "credential");
    r.u32("verifier flavor");
    r.opaque(MAX_AUTH_BYTES, "verifier");
    let authSys: RpcCall["authSys"] = null;
    if (credFlavor === AuthFlavor.SYS) {
      try {
        authSys = decodeAuthSys(credBody);
      } catch (err) {
        return {
          kind: "denied",
          xid,
          reply: authErrorReply(xid, AuthStat.BADCRED),
          reason: `bad AUTH_SYS credential: ${(err as Error).message}`,
        };
      }
    } else if (credFlavor !== AuthFlavor.NONE) {
      return {
        kind: "denied",
        xid,
        reply: authErrorReply(xid, AuthStat.REJECTEDCRED),
        reason: `credential flavor ${credFlavor} (only AUTH_NONE and AUTH_SYS)`,
      };
    }
    return { kind: "call", call: { xid, rpcvers, prog, vers, proc, credFlavor, authSys, args: r } };
  } catch (err) {
    // The header is cut short: the caller cannot be told which procedure failed.
    return { kind: "denied", xid, reply: authErrorReply(xid, AuthStat.BADCRED), reason: (err as Error).message };
  }
}

function replyHeader(xid: number): XdrWriter {
  return new XdrWriter().u32(xid).u32(REPLY);
}

/** MSG_ACCEPTED with an AUTH_NONE verifier, the accept status and its body. */
export function acceptedReply(xid: number, stat: number, body: Buffer = Buffer.alloc(0)): Buffer {
  const head = replyHeader(xid).u32(MSG_ACCEPTED).u32(AuthFlavor.NONE).u32(0).u32(stat).bytes();
  return Buffer.concat([head, body]);
}

export function progMismatchReply(xid: number, low: number, high: number): Buffer {
  return acceptedReply(xid, AcceptStat.PROG_MISMATCH, new XdrWriter().u32(low).u32(high).bytes());
}

export function rpcMismatchReply(xid: number): Buffer {
  return replyHeader(xid).u32(MSG_DENIED).u32(0).u32(RPC_VERSION).u32(RPC_VERSION).bytes();
}

export function authErrorReply(xid: number, stat: number): Buffer {
  return replyHeader(xid).u32(MSG_DENIED).u32(1).u32(stat).bytes();
}
