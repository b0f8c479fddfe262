// getpwnam(3) and getgrnam(3): Node can switch to a user by name, but cannot look one up
// (os.userInfo only knows the current user), and the daemon must refuse an unknown user
// or group before it touches any GPU.
import koffi from "koffi";
import { lastErrno, libcFunction } from "./libc.js";

const passwdType = koffi.struct("passwd", {
  pw_name: "const char *",
  pw_passwd: "const char *",
  pw_uid: "uint32_t",
  pw_gid: "uint32_t",
  pw_gecos: "const char *",
  pw_dir: "const char *",
  pw_shell: "const char *",
});
const groupType = koffi.struct("group", {
  gr_name: "const char *",
  gr_passwd: "const char *",
  gr_gid: "uint32_t",
  gr_mem: "void *",
});

export interface UserEntry {
  name: string;
  uid: number;
  gid: number;
}

export interface GroupEntry {
  name: string;
  gid: number;
}

/** Why a look-up found nothing: errno if NSS reported one, else "no such entry". */
function notFoundReason(): string {
  const { errno, code } = lastErrno();
  return errno === 0 || code === "ENOENT" || code === "ESRCH" ? "no such entry in the user database" : code;
}

/** The user named `name`; throws Error with the reason when there is none. */
export function lookUpUser(name: string): UserEntry {
  koffi.errno(0);
  const ptr = libcFunction("void *getpwnam(const char *name)")(name);
  if (!ptr) throw new Error(notFoundReason());
  const pw = koffi.decode(ptr, passwdType) as { pw_name: string; pw_uid: number; pw_gid: number };
  return { name: pw.pw_name, uid: pw.pw_uid, gid: pw.pw_gid };
}

/** The group named `name`; throws Error with the reason when there is none. */
export function lookUpGroup(name: string): GroupEntry {
  koffi.errno(0);
  const ptr = libcFunction("void *getgrnam(const char *name)")(name);
  if (!ptr) throw new Error(notFoundReason());
  const gr = koffi.decode(ptr, groupType) as { gr_name: string; gr_gid: number };
  return { name: gr.gr_name, gid: gr.gr_gid };
}
