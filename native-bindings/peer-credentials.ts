// SO_PEERCRED: the kernel's record of who is on the other end of a unix socket. The RPC
// server decides "root only" from this, never from the RPC credential a client can forge.
import koffi from "koffi";
import { lastErrno, libcFunction } from "./libc.js";

const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const ucredType = koffi.struct("ucred", { pid: "int32_t", uid: "uint32_t", gid: "uint32_t" });

export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
}

/** The peer of the connected unix socket `fd`; throws with errno's name on failure. */
export function peerCredentials(fd: number): PeerCredentials {
  const cred = {} as PeerCredentials;
  const length = [koffi.sizeof(ucredType)];
  const rc = libcFunction("int getsockopt(int fd, int level, int name, _Out_ ucred *value, _Inout_ uint32_t *length)")(
    fd,
    SOL_SOCKET,
    SO_PEERCRED,
    cred,
    length,
  ) as number;
  if (rc !== 0) throw new Error(`getsockopt(SO_PEERCRED) failed: ${lastErrno().code}`);
  return { pid: cred.pid, uid: cred.uid, gid: cred.gid };
}
