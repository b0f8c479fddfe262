// Unix datagram sends through libc (Node's dgram has no AF_UNIX): the transport of
// sd_notify and of journald's native protocol.
import koffi from "koffi";
import { lastErrno, libcFunction } from "./libc.js";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SUN_PATH_MAX = 108;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
/** struct cmsghdr on 64-bit Linux: size_t cmsg_len, int cmsg_level, int cmsg_type, then the data. */
const CMSG_HEADER = 16;

let sendmsg: ReturnType<typeof libcFunction> | undefined;
function sendmsgFunction() {
  if (!sendmsg) {
    koffi.struct("gpd_iovec", { iov_base: "void *", iov_len: "size_t" });
    koffi.struct("gpd_msghdr", {
      msg_name: "void *",
      msg_namelen: "uint32_t",
      msg_iov: "gpd_iovec *",
      msg_iovlen: "size_t",
      msg_control: "void *",
      msg_controllen: "size_t",
      msg_flags: "int",
    });
    sendmsg = libcFunction("intptr_t sendmsg(int fd, const gpd_msghdr *msg, int flags)");
  }
  return sendmsg;
}

/** An SCM_RIGHTS control message carrying `fds`, padded as CMSG_SPACE wants. */
function rightsMessage(fds: readonly number[]): Buffer {
  const length = CMSG_HEADER + 4 * fds.length;
  const control = Buffer.alloc(Math.ceil(length / 8) * 8);
  control.writeBigUInt64LE(BigInt(length), 0);
  control.writeInt32LE(SOL_SOCKET, 8);
  control.writeInt32LE(SCM_RIGHTS, 12);
  for (const [i, fd] of fds.entries()) control.writeInt32LE(fd, CMSG_HEADER + 4 * i);
  return control;
}

/** Thrown when the socket cannot be made or addressed; the message names the address. */
export class DatagramError extends Error {
  readonly code: string;
  constructor(message: string, code: string) {
    super(message);
    this.name = "DatagramError";
    this.code = code;
  }
}

/**
 * Encodes a sockaddr_un: a path, or `@name` for the abstract namespace (no trailing NUL,
 * as systemd's NOTIFY_SOCKET convention says).
 */
export function unixAddress(address: string): Buffer {
  const abstract = address.startsWith("@");
  const name = Buffer.from(abstract ? address.slice(1) : address, "utf8");
  if (name.length === 0 || name.length >= SUN_PATH_MAX) {
    throw new DatagramError(
      `unix socket address '${address}' is empty or longer than ${SUN_PATH_MAX - 1} bytes`,
      "EINVAL",
    );
  }
  // family, then the path and its NUL, or a NUL and the abstract name: 3 + length either way.
  const sockaddr = Buffer.alloc(3 + name.length);
  sockaddr.writeUInt16LE(AF_UNIX, 0);
  name.copy(sockaddr, abstract ? 3 : 2);
  return sockaddr;
}

/** One unbound, non-blocking datagram socket that sends to fixed addresses. */
export class UnixDatagramSender {
  #fd: number;

  constructor() {
    const fd = libcFunction("int socket(int domain, int type, int protocol)")(
      AF_UNIX,
      SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK,
      0,
    ) as number;
    if (fd < 0) throw new DatagramError(`cannot create a unix datagram socket: ${lastErrno().code}`, lastErrno().code);
    this.#fd = fd;
  }

  /** Sends one datagram; throws DatagramError with errno's name (EAGAIN when the peer is full). */
  send(address: Buffer, payload: Buffer): void {
    if (this.#fd < 0) throw new DatagramError("socket closed", "EBADF");
    const sent = libcFunction(
      "intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)",
    )(this.#fd, payload, payload.length, 0, address, address.length) as number | bigint;
    if (Number(sent) < 0) {
      const { code } = lastErrno();
      throw new DatagramError(`sendto failed: ${code}`, code);
    }
  }

  /** Sends one datagram with `fds` attached (SCM_RIGHTS): the peer gets its own copies. */
  sendWithFds(address: Buffer, payload: Buffer, fds: readonly number[]): void {
    if (this.#fd < 0) throw new DatagramError("socket closed", "EBADF");
    const control = rightsMessage(fds);
    const sent = sendmsgFunction()(
      this.#fd,
      {
        msg_name: address,
        msg_namelen: address.length,
        msg_iov: [{ iov_base: payload, iov_len: payload.length }],
        msg_iovlen: 1,
        msg_control: control,
        msg_controllen: control.length,
        msg_flags: 0,
      },
      0,
    ) as number | bigint;
    if (Number(sent) < 0) {
      const { code } = lastErrno();
      throw new DatagramError(`sendmsg failed: ${code}`, code);
    }
  }

  close(): void {
    if (this.#fd >= 0) libcFunction("int close(int fd)")(this.#fd);
    this.#fd = -1;
  }
}
