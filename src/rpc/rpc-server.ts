// The persistence RPC service on a unix stream socket: record marking, several and
// pipelined calls per connection answered in order, and limits that keep a hostile local
// client from exhausting memory or blocking others (record size, fragments, calls queued
// per connection, idle time, connections).
import { chmodSync, rmSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { type PeerCredentials, peerCredentials } from "../../native-bindings/peer-credentials.js";
import type { Log } from "../log.js";
import { handlePersistenceCall, type PersistenceBackend } from "./persistence-program.js";
import { frameRecord, RecordAssembler, RecordError } from "./record-marking.js";
import { RejectionLog } from "./rejection-log.js";
import { AcceptStat, acceptedReply, decodeCall } from "./rpc-message.js";

export interface RpcLimits {
  maxRecordBytes: number;
  maxFragments: number;
  /** Calls read but not yet answered on one connection; reading pauses beyond it. */
  maxQueuedCalls: number;
  idleTimeoutMs: number;
  maxConnections: number;
}

export const DEFAULT_RPC_LIMITS: RpcLimits = {
  // The largest valid call is under 200 bytes; AUTH_SYS credentials add at most 400.
  maxRecordBytes: 8192,
  maxFragments: 64,
  maxQueuedCalls: 16,
  idleTimeoutMs: 10_000,
  maxConnections: 4096,
};

function fdOf(socket: Socket): number {
  return (socket as unknown as { _handle?: { fd?: number } })._handle?.fd ?? -1;
}

export class RpcServer {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  /** Requests since start, by procedure and result (status and metrics). */
  readonly #counts = new Map<string, Map<string, number>>();

  private constructor(server: Server) {
    this.#server = server;
  }

  /** Requests since start, by procedure, then result. */
  get requestCounts(): ReadonlyMap<string, ReadonlyMap<string, number>> {
    return this.#counts;
  }

  /** Requests since start, all procedures and results together. */
  get requests(): number {
    let total = 0;
    for (const results of this.#counts.values()) for (const n of results.values()) total += n;
    return total;
  }

  #count(procedure: string, result: string): void {
    const results = this.#counts.get(procedure) ?? new Map<string, number>();
    this.#counts.set(procedure, results);
    results.set(result, (results.get(result) ?? 0) + 1);
  }

  static async listen(
    path: string,
    backend: PersistenceBackend,
    log: Log,
    limits: RpcLimits = DEFAULT_RPC_LIMITS,
  ): Promise<RpcServer> {
    const rejections = new RejectionLog(log);
    let rpc: RpcServer | null = null;
    const server = createServer((socket) => {
      if (!rpc) return socket.destroy();
      rpc.#serve(socket, backend, log, rejections, limits);
    });
    rpc = new RpcServer(server);
    // We hold the PID lock: a socket file here was left by a daemon that was killed.
    rmSync(path, { force: true });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen({ path, backlog: 4096 }, () => {
        server.off("error", reject);
        resolve();
      });
    });
    // Every NVML client on the host asks here (nvidia-smi as any user); setters are
    // refused by peer credentials, not by file mode.
    chmodSync(path, 0o666);
    return rpc;
  }

  #serve(socket: Socket, backend: PersistenceBackend, log: Log, rejections: RejectionLog, limits: RpcLimits): void {
    let peer: PeerCredentials;
    try {
      peer = peerCredentials(fdOf(socket));
    } catch (err) {
      log.warn(`RPC: cannot read a client's credentials (${(err as Error).message}); closing its connection`);
      socket.destroy();
      return;
    }
    if (this.#sockets.size >= limits.maxConnections) {
      rejections.report(peer, `more than ${limits.maxConnections} connections open; closing this one`);
      socket.destroy();
      return;
    }
    this.#sockets.add(socket);
    socket.on("close", () => this.#sockets.delete(socket));
    socket.on("error", () => socket.destroy());
    // A client that closes its end gets its pending replies, then the connection goes at once
    // (not at the idle timeout): NVML opens one connection per query.
    socket.on("end", () => {
      ended = true;
      if (!working) socket.destroy();
    });
    socket.setTimeout(limits.idleTimeoutMs, () => socket.destroy());
    let ended = false;
    const assembler = new RecordAssembler(limits);
    const queue: Buffer[] = [];
    let working = false;
    const drain = async (): Promise<void> => {
      if (working) return;
      working = true;
      while (queue.length && !socket.destroyed) {
        const record = queue.shift() as Buffer;
        const decoded = decodeCall(record);
        let reply: Buffer | null = null;
        if (decoded.kind === "ignore") {
          rejections.report(peer, `not an RPC call: ${decoded.reason}`);
          this.#count("unknown", "not_a_call");
        } else if (decoded.kind === "denied") {
          rejections.report(peer, decoded.reason);
          this.#count("unknown", "denied");
          reply = decoded.reply;
        } else {
          try {
            const handled = await handlePersistenceCall(decoded.call, peer, backend);
            if (handled.rejected) rejections.report(peer, handled.rejected);
            if (handled.changed) log.info(`RPC: ${handled.changed}`);
            if (handled.answered) log.debug({ peerPid: peer.pid, peerUid: peer.uid }, `RPC: ${handled.answered}`);
            this.#count(handled.procedure, handled.result);
            reply = handled.reply;
          } catch (err) {
            log.error(`RPC: procedure ${decoded.call.proc} failed: ${(err as Error).stack ?? err}`);
            this.#count("unknown", "system_err");
            reply = acceptedReply(decoded.call.xid, AcceptStat.SYSTEM_ERR);
          }
        }
        if (reply && !socket.destroyed) socket.write(frameRecord(reply));
        if (queue.length < limits.maxQueuedCalls && socket.isPaused()) socket.resume();
      }
      working = false;
      if (ended) socket.destroy();
    };
    socket.on("data", (chunk: Buffer) => {
      let records: Buffer[];
      try {
        records = assembler.push(chunk);
      } catch (err) {
        if (!(err instanceof RecordError)) throw err;
        rejections.report(peer, `${err.message}; closing the connection`);
        socket.destroy();
        return;
      }
      queue.push(...records);
      if (queue.length >= limits.maxQueuedCalls) socket.pause();
      void drain();
    });
  }

  close(): void {
    this.#server.close();
    for (const socket of this.#sockets) socket.destroy();
  }
}
