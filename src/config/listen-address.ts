// The metrics listener's address: loopback only. The metrics name every GPU of the host;
// a scraper on the host (or node_exporter's textfile) publishes them, and the unit's
// firewall (IPAddressAllow=localhost in the drop-in) admits nothing else.
import { isIPv4 } from "node:net";

export interface ListenAddress {
  host: string;
  port: number;
}

/** The address of `value` ("127.0.0.1:9400", "[::1]:9400", "localhost:9400"), or why it is not one. */
export function parseLoopbackAddress(value: string): ListenAddress | string {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value);
  if (!match) return `"${value}" is not HOST:PORT (such as 127.0.0.1:9400 or [::1]:9400)`;
  const host = (match[1] ?? match[2]) as string;
  const port = Number(match[3]);
  if (port < 1 || port > 65535) return `port ${port} is not between 1 and 65535`;
  const loopback = host === "localhost" || host === "::1" || (isIPv4(host) && host.startsWith("127."));
  if (!loopback) {
    return `${host} is not a loopback address: metrics are served on 127.0.0.0/8, ::1 or localhost only; to publish them off the host, use metricsTextfile with node_exporter`;
  }
  return { host, port };
}

/** HOST:PORT again, with an IPv6 host in brackets. */
export function formatListenAddress(a: ListenAddress): string {
  return a.host.includes(":") ? `[${a.host}]:${a.port}` : `${a.host}:${a.port}`;
}
