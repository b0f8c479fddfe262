// The daemon's own control socket (separate from NVML's RPC socket): one JSON request line
// in, one JSON reply line out, then the connection closes. Bounded as the RPC socket is:
// request size, one deadline for the whole request, connection slots per uid with a reserve
// for root and the daemon's own user, and rejected requests logged quoted and rate-limited.
import { chmodSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { peerCredentials } from "../../native-bindings/peer-credentials.js";
import { clientText } from "../connections/client-text.js";
import { ConnectionSlots, type SlotLimits } from "../connections/connection-slots.js";
import { RejectionLog } from "../connections/rejection-log.js";
import { socketFd } from "../connections/socket-fd.js";
import { clearStaleSocket } from "../connections/socket-file.js";
import type { Log } from "../log.js";

export const MAX_REQUEST_BYTES = 4096;
/** Time for a whole request line, from the connection's start. */
const REQUEST_DEADLINE_MS = 5000;
export const CONTROL_SLOTS: SlotLimits = { total: 64, perUid: 8, reserve: 8 };

export interface ControlRequest {
  command: string;
}

export type ControlHandler = (request: ControlRequest) => unknown;

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

export async function startControlServer(path: string, handler: ControlHandler, log: Log): Promise<Server> {
  const rejections = new RejectionLog(log, "control socket");
  const slots = new ConnectionSlots(CONTROL_SLOTS);
  const server = createServer({ allowHalfOpen: true }, (socket) => {
    let peer: ReturnType<typeof peerCredentials>;
    try {
      peer = peerCredentials(socketFd(socket));
    } catch {
      socket.destroy();
      return;
    }
    const slot = slots.take(peer.uid);
    if (typeof slot === "string") {
      rejections.report(peer, `${slot}; closing this one`);
      socket.destroy();
      return;
    }
    const deadline = setTimeout(() => socket.destroy(), REQUEST_DEADLINE_MS);
    socket.on("close", () => {
      clearTimeout(deadline);
      slot();
    });
    socket.on("error", () => socket.destroy());
    let buffered = "";
    let answered = false;
    socket.setEncoding("utf8");
    const reply = (body: unknown): void => {
      answered = true;
      socket.removeAllListeners("data");
      socket.end(`${JSON.stringify(body)}\n`);
    };
    const refuse = (message: string): void => {
      rejections.report(peer, message);
      reply({ error: message });
    };
    socket.on("data", (chunk: string) => {
      buffered += chunk;
      const newline = buffered.indexOf("\n");
      if (newline < 0) {
        if (buffered.length > MAX_REQUEST_BYTES) refuse(`request longer than ${MAX_REQUEST_BYTES} bytes`);
        return;
      }
      try {
        reply(handler(parseRequest(buffered.slice(0, newline))));
      } catch (err) {
        if (!(err instanceof BadRequest)) throw err;
        refuse(err.message);
      }
    });
    socket.on("end", () => {
      if (!answered) refuse(`the request ended without a newline: ${clientText(buffered)}`);
    });
  });
  clearStaleSocket(path);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => {
      server.off("error", reject);
      resolve();
    });
  });
  // Status is for every local user, as nvidia-smi's persistence query is.
  chmodSync(path, 0o666);
  return server;
}
