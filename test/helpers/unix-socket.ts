// A unix socket bound in this process through libc (Node binds no datagram socket, and a
// socket unit's listening socket must exist before the daemon it is handed to): the tests'
// stand-ins for systemd's notify socket and for gpu-persistd.socket's sockets.
import koffi from "koffi";
import { unixAddress } from "../../native-bindings/unix-datagram.js";

const libc = koffi.load("libc.so.6");
const socketFn = libc.func("int socket(int domain, int type, int protocol)");
const bindFn = libc.func("int bind(int fd, const uint8_t *addr, uint32_t len)");
const listenFn = libc.func("int listen(int fd, int backlog)");
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;

/**
 * A socket bound at `path`: "stream" listens (connections wait in its backlog until someone
 * accepts), "datagram" is bound and read by nobody yet. Returns the fd (the caller's).
 */
export function boundUnixSocket(path: string, type: "stream" | "datagram"): number {
  const fd = socketFn(1 /* AF_UNIX */, (type === "stream" ? SOCK_STREAM : SOCK_DGRAM) | SOCK_CLOEXEC, 0) as number;
  const address = unixAddress(path);
  const ok = fd >= 0 && bindFn(fd, address, address.length) === 0 && (type === "datagram" || listenFn(fd, 128) === 0);
  if (!ok) throw new Error(`cannot bind a unix ${type} socket at ${path}: errno ${koffi.errno()}`);
  return fd;
}
