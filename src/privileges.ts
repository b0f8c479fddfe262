// --user/--group: resolved before any GPU is touched (an unknown name exits 67), applied
// after bring-up in the only safe order (supplementary groups, gid, uid), then verified
// from /proc/self/status. Any failed step ends the daemon: it never runs half-dropped.
import { readFileSync } from "node:fs";
import { initgroups, setgroups, setresgid, setresuid } from "../native-bindings/libc.js";
import { lookUpGroup, lookUpUser, type UserEntry } from "../native-bindings/user-database.js";
import { ExitCode } from "./exit-codes.js";
import { FatalError } from "./fatal-error.js";

export interface TargetIdentity {
  user: UserEntry | null;
  uid: number;
  gid: number;
  description: string;
}

/** Returns null when neither a user nor a group is configured. */
export function resolveIdentity(user: string, group: string): TargetIdentity | null {
  if (!user && !group) return null;
  let entry: UserEntry | null = null;
  if (user) {
    try {
      entry = lookUpUser(user);
    } catch (err) {
      throw new FatalError(
        ExitCode.NO_USER,
        `unknown user '${user}' (--user): ${(err as Error).message}. Create it (the package's sysusers file does: ` +
          `systemd-sysusers gpu-persistd.conf), or name an existing user.`,
      );
    }
  }
  let gid = entry?.gid ?? process.getgid?.() ?? 0;
  if (group) {
    try {
      gid = lookUpGroup(group).gid;
    } catch (err) {
      throw new FatalError(ExitCode.NO_USER, `unknown group '${group}' (--group): ${(err as Error).message}.`);
    }
  }
  const uid = entry?.uid ?? process.getuid?.() ?? 0;
  const description = `${entry ? `user ${entry.name} (${uid})` : `uid ${uid}`}, group ${group || "of the user"} (${gid})`;
  return { user: entry, uid, gid, description };
}

/** The four ids of a /proc/self/status line such as "Uid:\t0\t0\t0\t0". */
function idsOf(status: string, key: string): number[] {
  const line = status.split("\n").find((l) => l.startsWith(`${key}:`)) ?? "";
  return line
    .slice(key.length + 1)
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .map(Number);
}

/** Switches identity for good. Throws FatalError (exit 77) naming the step that failed. */
export function dropPrivileges(target: TargetIdentity): void {
  const step = (what: string, action: () => void): void => {
    try {
      action();
    } catch (err) {
      throw new FatalError(
        ExitCode.NO_PERMISSION,
        `cannot switch to ${target.description}: ${what} failed: ${(err as Error).message}. Start the daemon as root.`,
      );
    }
  };
  const user = target.user;
  step("setting supplementary groups", () => (user ? initgroups(user.name, target.gid) : setgroups([target.gid])));
  step("setgid", () => setresgid(target.gid));
  step("setuid", () => setresuid(target.uid));
  const status = readFileSync("/proc/self/status", "utf8");
  const uids = idsOf(status, "Uid");
  const gids = idsOf(status, "Gid");
  if (uids.length !== 4 || uids.some((id) => id !== target.uid) || gids.some((id) => id !== target.gid)) {
    throw new FatalError(
      ExitCode.NO_PERMISSION,
      `privilege drop did not take: /proc/self/status says Uid ${uids.join(" ")}, Gid ${gids.join(" ")}; wanted ${target.uid}/${target.gid}`,
    );
  }
}
