// The daemon's own control socket (separate from NVML's RPC socket): one JSON request line
// in, one JSON reply line out, then the connection closes. Bounded as the RPC socket is:
// request size, a deadline for the request line, connection slots per uid with a reserve
// for root and the daemon's own user, and rejected requests logged quoted and rate-limited.
import { createServer, type Server } from "node:net";
import type { PeerCredentials } from "../../native-bindings/peer-credentials.js";
import { ConnectionAdmission } from "../connections/admission.js";
import { clientText } from "../connections/client-text.js";
import type { SlotLimits } from "../connections/connection-slots.js";
import { listenUnix } from "../connections/socket-file.js";
import type { Log } from "../log.js";

export const MAX_REQUEST_BYTES = 4096;
/**
 * Time for the request line, from the connection's start, and for the client to close once
 * answered. Not the handler's: a release waits for the GPU, a lease lasts a whole command.
 */
export const REQUEST_DEADLINE_MS = 5000;
export const CONTROL_SLOTS: SlotLimits = { total: 64, perUid: 8, reserve: 8 };

export interface ControlRequest {
  command: string;
  [key: string]: unknown;
}

/**
 * An answer that keeps the connection: `reply` goes out at once, and once the client ends
 * its side or goes away (killed, say), `end()` runs and its result is the last line.
 */
export class Lease {
  constructor(
    readonly reply: unknown,
    readonly end: () => Promise<unknown>,
  ) {}
}

export type ControlHandler = (request: ControlRequest, peer: PeerCredentials) => unknown | Promise<unknown> | Lease;

/** A request the daemon refuses: `message` goes back to the client and (quoted) to the log. */
export class BadRequest extends Error {}

function parseRequest(line: string): ControlRequest {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    throw new BadRequest('a request is one line of JSON, such as {"command":"status"}');
  }
  if (typeof value !== "object" || value === null || typeof (value as ControlRequest).command !== "string") {
    throw new BadRequest('a request is a JSON object with a "command" string');
  }
  return value as ControlRequest;
}

export async function startControlServer(
  path: string,
  handler: ControlHandler,
  log: Log,
  {
    requestDeadlineMs = REQUEST_DEADLINE_MS,
    handedFd,
  }: {
    requestDeadlineMs?: number;
    /** The listening socket systemd handed over (socket activation), if any. */
    handedFd?: number | undefined;
  } = {},
): Promise<Server> {
  const admission = new ConnectionAdmission("control socket", CONTROL_SLOTS, log);
  const { rejections } = admission;
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    const admitted = admission.admit(socket);
    if (!admitted) return;
    const { peer } = admitted;
    let deadline = setTimeout(() => socket.destroy(), requestDeadlineMs);
    socket.on("close", () => {
      clearTimeout(deadline);
      admitted.release();
    });
    socket.on("error", () => socket.destroy());
    let buffered = "";
    let answered = false;
    socket.setEncoding("utf8");
    const reply = (body: unknown): void => {
      answered = true;
      socket.removeAllListeners("data");
      socket.end(`${JSON.stringify(body)}\n`);
      // Read (and drop) the rest, so the client's close is seen and the slot given back.
      socket.resume();
      clearTimeout(deadline);
      deadline = setTimeout(() => socket.destroy(), requestDeadlineMs);
    };
    const refuse = (message: string): void => {
      rejections.report(peer, message);
      reply({ error: message });
    };
    const hold = (lease: Lease): void => {
      answered = true;
      socket.removeAllListeners("data");
      socket.write(`${JSON.stringify(lease.reply)}\n`);
      let ended = false;
      const finish = async (): Promise<void> => {
        if (ended) return;
        ended = true;
        const last = await lease.end();
        if (!socket.destroyed && socket.writable) socket.end(`${JSON.stringify(last)}\n`);
      };
      // The client ends its side when done; a killed client's connection just closes. Either
      // may have happened already, while the release ran.
      if (socket.readableEnded || socket.destroyed) {
        void finish();
        return;
      }
      socket.on("end", () => void finish());
      socket.on("close", () => void finish());
      socket.resume();
    };
    socket.on("data", (chunk: string) => {
      buffered += chunk;
      const newline = buffered.indexOf("\n");
      if (newline < 0) {
        if (buffered.length > MAX_REQUEST_BYTES) refuse(`request longer than ${MAX_REQUEST_BYTES} bytes`);
        return;
      }
      socket.removeAllListeners("data");
      socket.pause();
      // The line is in: from here the handler's time is not the client's.
      clearTimeout(deadline);
      const answer = (value: unknown): void => (value instanceof Lease ? hold(value) : reply(value));
      const bad = (err: unknown): void => {
        if (err instanceof BadRequest) {
          refuse(err.message);
          return;
        }
        log.error(`control socket: ${(err as Error).stack ?? err}`);
        reply({ error: `the daemon failed to answer: ${(err as Error).message}` });
      };
      try {
        const value = handler(parseRequest(buffered.slice(0, newline)), peer);
        if (value instanceof Promise) value.then(answer, bad);
        else answer(value);
      } catch (err) {
        bad(err);
      }
    });
    socket.on("end", () => {
      if (!answered && !buffered.includes("\n")) refuse(`the request ended without a newline: ${clientText(buffered)}`);
    });
  });
  // Status is for every local user, as nvidia-smi's persistence query is.
  await listenUnix(server, path, 0o666, handedFd);
  return server;
}
