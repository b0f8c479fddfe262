// Serves the metrics over HTTP on a loopback address: GET /metrics, nothing else.
import { createServer, type Server } from "node:http";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import type { ListenAddress } from "./listen-address.js";
import { installDropIn } from "./metrics-fixes.js";
import { CONTENT_TYPE } from "./prometheus-text.js";

/** What the default unit forbids, and the drop-in that allows it. */
const UNIT_HINT =
  "the default gpu-persistd.service has no network (PrivateNetwork=yes, RestrictAddressFamilies=AF_UNIX); " +
  `allow it: ${installDropIn("metrics-listen.conf")}`;

/**
 * Listens on `address`. Resolves once listening; rejects with a FatalError (exit 78) that
 * names the cause and the fix when the address cannot be used.
 */
export async function startMetricsListener(address: ListenAddress, render: () => string): Promise<Server> {
  const server = createServer((req, res) => {
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
  });
  // Scrapers keep connections open; an idle one must not hold the daemon's stop up.
  server.keepAliveTimeout = 5000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 10_000;
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
