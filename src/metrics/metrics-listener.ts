// Serves the metrics over HTTP on a loopback address: GET /metrics, nothing else.
import { createServer, type Server } from "node:http";
import type { Socket } from "node:net";
import type { ListenAddress } from "../config/listen-address.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { installDropIn } from "./metrics-fixes.js";
import { CONTENT_TYPE } from "./prometheus-text.js";

/** What the default unit forbids, and the drop-in that allows it. */
const UNIT_HINT =
  "the default gpu-persistd.service has no network (PrivateNetwork=yes, RestrictAddressFamilies=AF_UNIX); " +
  `allow it: ${installDropIn("metrics-listen.conf")}`;

/** How long a connection may take to send a complete request (a scraper sends it at once). */
export const REQUEST_DEADLINE_MS = 10_000;

/**
 * Node's own header and request time-outs are enforced by one interval timer per server that
 * wakes the daemon every 30 s, connections or not. Here the timer waits as long as a timer can
 * (2^31-1 ms, about 24 days) and each connection carries its own deadline instead, armed only
 * while it waits for a request: an idle daemon with no scraper connected never wakes up.
 */
const NO_CONNECTIONS_CHECK_MS = 2 ** 31 - 1;

/**
 * Listens on `address`. Resolves once listening; rejects with a FatalError (exit 78) that
 * names the cause and the fix when the address cannot be used.
 */
export async function startMetricsListener(
  address: ListenAddress,
  render: () => string,
  requestDeadlineMs = REQUEST_DEADLINE_MS,
): Promise<Server> {
  const deadlines = new WeakMap<Socket, NodeJS.Timeout>();
  // From the connection, and again after each reply on a kept-alive one, until the next request.
  const awaitRequest = (socket: Socket): void => {
    if (socket.destroyed) return;
    deadlines.set(
      socket,
      setTimeout(() => socket.destroy(), requestDeadlineMs),
    );
  };
  const server = createServer(
    { connectionsCheckingInterval: NO_CONNECTIONS_CHECK_MS, requestTimeout: 0, headersTimeout: 0 },
    (req, res) => {
      clearTimeout(deadlines.get(req.socket));
      res.once("finish", () => awaitRequest(req.socket));
      const path = (req.url ?? "").split("?")[0];
      if (path !== "/metrics") {
        res.writeHead(404, { "content-type": "text/plain" }).end("gpu-persistd serves /metrics only\n");
        return;
      }
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain" }).end("GET or HEAD only\n");
        return;
      }
      const body = render();
      res.writeHead(200, { "content-type": CONTENT_TYPE, "content-length": Buffer.byteLength(body) });
      res.end(req.method === "HEAD" ? undefined : body);
    },
  );
  server.on("connection", (socket: Socket) => {
    awaitRequest(socket);
    socket.once("close", () => clearTimeout(deadlines.get(socket)));
  });
  // Scrapers keep connections open; an idle one must not hold the daemon's stop up.
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => {
      const where = `${address.host.includes(":") ? `[${address.host}]` : address.host}:${address.port}`;
      const why =
        err.code === "EADDRINUSE"
          ? `${where} is in use by another program: choose another port in metricsListen`
          : err.code === "EAFNOSUPPORT" || err.code === "EPERM" || err.code === "EACCES"
            ? `${err.code}: ${UNIT_HINT}`
            : err.code === "EADDRNOTAVAIL"
              ? `${where} is not an address of this host's loopback (${err.code})`
              : err.message;
      reject(new FatalError(ExitCode.CONFIG, `cannot serve metrics on ${where}: ${why}`));
    });
    server.listen({ host: address.host, port: address.port }, resolve);
  });
  return server;
}
