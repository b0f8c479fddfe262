// The persistence RPC service on a unix stream socket: record marking, several and
// pipelined calls per connection answered in order, and limits that keep a hostile local
// client from exhausting memory or locking others out: bounded unsent replies and input per
// connection (reading stops until the client reads), a deadline for each whole record,
// connection slots per uid with a reserve for root, and every call before a half-close
// answered.
import { createServer, type Server, type Socket } from "node:net";
import { ConnectionAdmission } from "../connections/admission.js";
import type { SlotLimits } from "../connections/connection-slots.js";
import { listenUnix } from "../connections/socket-file.js";
import type { Log } from "../log.js";
import { handlePersistenceCall, type PersistenceBackend } from "./persistence-program.js";
import { frameRecord, RecordAssembler, RecordError } from "./record-marking.js";
import { AcceptStat, acceptedReply, decodeCall } from "./rpc-message.js";

export interface RpcLimits {
  maxRecordBytes: number;
  maxFragments: number;
  /** Received bytes not yet answered on one connection; reading pauses beyond it. */
  maxInputBytes: number;
  /** Replies written but not yet read by the client; answering pauses beyond it. */
  maxUnsentBytes: number;
  /** Time a client has for each whole record (and to read a reply): not reset by single bytes. */
  recordDeadlineMs: number;
  slots: SlotLimits;
}

export const DEFAULT_RPC_LIMITS: RpcLimits = {
  // The largest valid call is under 200 bytes; AUTH_SYS credentials add at most 400.
  maxRecordBytes: 8192,
  maxFragments: 64,
  maxInputBytes: 16 * 1024,
  maxUnsentBytes: 16 * 1024,
  recordDeadlineMs: 5000,
  // NVML opens one short connection per query; DCGM and containers run as root or many uids.
  slots: { total: 4096, perUid: 256, reserve: 64 },
};

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
    handedFd?: number,
  ): Promise<RpcServer> {
    const admission = new ConnectionAdmission("RPC", limits.slots, log);
    let rpc: RpcServer | null = null;
    // Half-open: a client may send its calls, shut its side, and still read every reply.
    const server = createServer({ allowHalfOpen: true }, (socket) => {
      if (!rpc) return socket.destroy();
      rpc.#serve(socket, { backend, log, admission, limits });
    });
    rpc = new RpcServer(server);
    // Every NVML client on the host asks here (nvidia-smi as any user); setters are
    // refused by peer credentials, not by file mode.
    await listenUnix(server, path, 0o666, handedFd);
    return rpc;
  }

  #serve(
    socket: Socket,
    o: { backend: PersistenceBackend; log: Log; admission: ConnectionAdmission; limits: RpcLimits },
  ): void {
    const { limits, log } = o;
    const admitted = o.admission.admit(socket);
    if (!admitted) return;
    const { peer } = admitted;
    if (peer.pid === process.pid) {
      // NVML in this very process (reading the legacy flag): unanswered, NVML asks the kernel
      // at once (measured). An answer would be the daemon asking itself.
      admitted.release();
      socket.destroy();
      return;
    }
    const { rejections } = o.admission;
    this.#sockets.add(socket);
    let deadline: NodeJS.Timeout | undefined;
    socket.on("close", () => {
      this.#sockets.delete(socket);
      clearTimeout(deadline);
      admitted.release();
    });
    socket.on("error", () => socket.destroy());
    // The client has recordDeadlineMs for what it must do next (send a whole record, or read
    // replies), counted from when its turn began: bytes of an unfinished record do not reset it.
    let clientsTurn = false;
    const clientTurn = (): void => {
      if (clientsTurn) return;
      clientsTurn = true;
      deadline = setTimeout(() => socket.destroy(), limits.recordDeadlineMs);
    };
    const daemonsTurn = (): void => {
      clientsTurn = false;
      clearTimeout(deadline);
    };
    clientTurn();
    const assembler = new RecordAssembler(limits);
    let ended = false;
    let working = false;

    const answer = async (record: Buffer): Promise<Buffer | null> => {
      const decoded = decodeCall(record);
      if (decoded.kind === "ignore") {
        rejections.report(peer, `not an RPC call: ${decoded.reason}`);
        this.#count("unknown", "not_a_call");
        return null;
      }
      if (decoded.kind === "denied") {
        rejections.report(peer, decoded.reason);
        this.#count("unknown", "denied");
        return decoded.reply;
      }
      try {
        const handled = await handlePersistenceCall(decoded.call, peer, o.backend);
        if (handled.rejected) rejections.report(peer, handled.rejected);
        if (handled.changed) log.info(`RPC: ${handled.changed}`);
        if (handled.answered && log.isLevelEnabled("debug")) {
          log.debug({ peerPid: peer.pid, peerUid: peer.uid }, `RPC: ${handled.answered}`);
        }
        this.#count(handled.procedure, handled.result);
        return handled.reply;
      } catch (err) {
        log.error(`RPC: procedure ${decoded.call.proc} failed: ${(err as Error).stack ?? err}`);
        this.#count("unknown", "system_err");
        return acceptedReply(decoded.call.xid, AcceptStat.SYSTEM_ERR);
      }
    };

    /** Until the client has read enough of what was written (or the deadline ends it). */
    const unsentDrained = (): Promise<void> =>
      new Promise((resolve) => {
        clientTurn();
        const done = (): void => {
          socket.off("drain", done);
          socket.off("close", done);
          daemonsTurn();
          resolve();
        };
        socket.on("drain", done);
        socket.on("close", done);
      });

    const drain = async (): Promise<void> => {
      if (working) return;
      working = true;
      try {
        for (;;) {
          let record: Buffer | null;
          try {
            record = assembler.next();
          } catch (err) {
            if (!(err instanceof RecordError)) throw err;
            rejections.report(peer, `${err.message}; closing the connection`);
            socket.destroy();
            return;
          }
          if (record === null || socket.destroyed) break;
          // The daemon's own time (a cold GPU's open) is not the client's.
          daemonsTurn();
          const reply = await answer(record);
          if (!reply || socket.destroyed) continue;
          socket.write(frameRecord(reply));
          if (socket.writableLength > limits.maxUnsentBytes) await unsentDrained();
          if (socket.isPaused() && assembler.bufferedBytes <= limits.maxInputBytes) socket.resume();
        }
      } finally {
        working = false;
      }
      if (socket.destroyed) return;
      clientTurn();
      if (socket.isPaused()) socket.resume();
      // A client that closed its end has every reply by now: end ours (after they flush).
      if (ended) socket.end();
    };

    socket.on("data", (chunk: Buffer) => {
      assembler.append(chunk);
      if (assembler.bufferedBytes > limits.maxInputBytes) socket.pause();
      void drain();
    });
    socket.on("end", () => {
      ended = true;
      void drain();
    });
  }

  close(): void {
    this.#server.close();
    for (const socket of this.#sockets) socket.destroy();
  }
}
