// The daemon's own control socket (separate from NVML's RPC socket): one JSON request line
// in, one JSON reply line out, then the connection closes. Bounded in request size, time
// and connections, so a misbehaving local client cannot hold the daemon up.
import { chmodSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:net";
import type { Log } from "../log.js";

export const MAX_REQUEST_BYTES = 4096;
const IDLE_TIMEOUT_MS = 5000;
const MAX_CONNECTIONS = 64;

export interface ControlRequest {
  command: string;
}

export type ControlHandler = (request: ControlRequest) => unknown;

function parseRequest(line: string): ControlRequest {
  const value = JSON.parse(line) as unknown;
  if (typeof value !== "object" || value === null || typeof (value as ControlRequest).command !== "string") {
    throw new Error('a request is a JSON object with a "command" string');
  }
  return value as ControlRequest;
}

export async function startControlServer(path: string, handler: ControlHandler, log: Log): Promise<Server> {
  // We hold the PID lock, so a socket file here is a leftover of a killed daemon.
  rmSync(path, { force: true });
  const server = createServer((socket) => {
    let buffered = "";
    socket.setEncoding("utf8");
    socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy());
    const reply = (body: unknown): void => {
      socket.end(`${JSON.stringify(body)}\n`);
    };
    socket.on("data", (chunk: string) => {
      buffered += chunk;
      const newline = buffered.indexOf("\n");
      if (newline < 0) {
        if (buffered.length > MAX_REQUEST_BYTES) {
          reply({ error: `request longer than ${MAX_REQUEST_BYTES} bytes` });
          socket.removeAllListeners("data");
        }
        return;
      }
      socket.removeAllListeners("data");
      try {
        reply(handler(parseRequest(buffered.slice(0, newline))));
      } catch (err) {
        log.warn(`control socket: bad request: ${(err as Error).message}`);
        reply({ error: (err as Error).message });
      }
    });
    socket.on("error", () => socket.destroy());
  });
  server.maxConnections = MAX_CONNECTIONS;
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
