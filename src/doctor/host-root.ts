// The system doctor examines: / on a real host, or a directory laid out like one (--root),
// which is how the checks are tested without a GPU or systemd. Every path goes through here.
import { existsSync, lstatSync, readdirSync, readFileSync, readlinkSync } from "node:fs";
import { join } from "node:path";
import { lookUpGroup, lookUpUser } from "../../native-bindings/user-database.js";

export interface Account {
  name: string;
  uid: number;
  gid: number;
  /** Supplementary groups, from the group file's member lists. */
  groups: number[];
  /** Where it was found: "/etc/passwd" or "NSS". */
  source: string;
}

/** Unit directories in systemd's order of precedence (the first that has the unit wins). */
const UNIT_DIRS = ["/etc/systemd/system", "/run/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system"];

/** One assignment of a unit setting, and the file it is in. */
export interface Directive {
  value: string;
  source: string;
}

/**
 * Whether `account` has `want` (read 4, write 2, execute 1, or a sum) on a file with this
 * stat, by the owner, group and other bits as the kernel checks them (root may do anything).
 */
export function accountMay(account: Account, st: { mode: number; uid: number; gid: number }, want: number): boolean {
  if (account.uid === 0) return true;
  const bits =
    account.uid === st.uid
      ? (st.mode >> 6) & 7
      : account.gid === st.gid || account.groups.includes(st.gid)
        ? (st.mode >> 3) & 7
        : st.mode & 7;
  return (bits & want) === want;
}

export class HostRoot {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
  }

  get isLiveSystem(): boolean {
    return this.root === "/";
  }

  path(p: string): string {
    return this.isLiveSystem ? p : join(this.root, p);
  }

  read(p: string): string | null {
    try {
      return readFileSync(this.path(p), "utf8");
    } catch {
      return null;
    }
  }

  exists(p: string): boolean {
    return existsSync(this.path(p));
  }

  list(p: string): string[] {
    try {
      return readdirSync(this.path(p));
    } catch {
      return [];
    }
  }

  /** The target of a symlink, or null when `p` is not one. */
  link(p: string): string | null {
    try {
      return lstatSync(this.path(p)).isSymbolicLink() ? readlinkSync(this.path(p)) : null;
    } catch {
      return null;
    }
  }

  /**
   * The user `name` with its groups, from the host's passwd and group files; on the live
   * system also through NSS (LDAP, sssd), which the files may not list.
   */
  account(name: string): Account | null {
    const entry = this.#fileEntries("/etc/passwd").find((f) => f[0] === name);
    const groupFile = this.#fileEntries("/etc/group");
    const groups = groupFile.filter((f) => (f[3] ?? "").split(",").includes(name)).map((f) => Number(f[2]));
    if (entry) return { name, uid: Number(entry[2]), gid: Number(entry[3]), groups, source: "/etc/passwd" };
    if (!this.isLiveSystem) return null;
    try {
      const user = lookUpUser(name);
      return { name, uid: user.uid, gid: user.gid, groups, source: "NSS" };
    } catch {
      return null;
    }
  }

  /** The gid of group `name`, or null. */
  groupId(name: string): number | null {
    const entry = this.#fileEntries("/etc/group").find((f) => f[0] === name);
    if (entry) return Number(entry[2]);
    if (!this.isLiveSystem) return null;
    try {
      return lookUpGroup(name).gid;
    } catch {
      return null;
    }
  }

  #fileEntries(p: string): string[][] {
    return (this.read(p) ?? "")
      .split("\n")
      .filter((l) => l && !l.startsWith("#"))
      .map((l) => l.split(":"));
  }

  /** The unit file systemd would load for `unit` (the first in precedence), or null. */
  unitFile(unit: string): string | null {
    return UNIT_DIRS.map((d) => join(d, unit)).find((p) => this.exists(p) || this.link(p) !== null) ?? null;
  }

  /** The unit's file and drop-ins, in the order systemd applies them. */
  unitSources(unit: string): string[] {
    const file = this.unitFile(unit);
    if (!file) return [];
    // Drop-ins apply in file-name order across directories; a name in /etc hides it in /lib.
    const byName = new Map<string, string>();
    for (const d of [...UNIT_DIRS].reverse()) {
      for (const f of this.list(join(d, `${unit}.d`)).filter((n) => n.endsWith(".conf"))) {
        byName.set(f, join(d, `${unit}.d`, f));
      }
    }
    return [file, ...[...byName.keys()].sort().map((name) => byName.get(name) as string)];
  }

  /**
   * Every assignment of `key` in the unit's file and drop-ins, in the order systemd reads
   * them; an empty assignment clears those before it (systemd's rule for list settings).
   */
  unitDirective(unit: string, key: string): Directive[] {
    const found: Directive[] = [];
    const pattern = new RegExp(`^\\s*${key}\\s*=\\s*(.*?)\\s*$`);
    for (const source of this.unitSources(unit)) {
      for (const line of (this.read(source) ?? "").split("\n")) {
        const value = pattern.exec(line)?.[1];
        if (value === undefined) continue;
        if (value === "") found.length = 0;
        else found.push({ value, source });
      }
    }
    return found;
  }

  /** Targets whose .wants/ directory in /etc enables `unit`. */
  enabledBy(unit: string): string[] {
    return this.list("/etc/systemd/system")
      .filter((d) => d.endsWith(".wants") && this.list(join("/etc/systemd/system", d)).includes(unit))
      .map((d) => d.slice(0, -".wants".length));
  }

  /** PIDs of running processes whose program is `name` (argv[0]'s base name). */
  processes(name: string): number[] {
    return this.list("/proc")
      .filter((e) => /^\d+$/.test(e))
      .filter((pid) => {
        const argv0 = (this.read(`/proc/${pid}/cmdline`) ?? "").split("\0")[0] ?? "";
        return argv0.split("/").pop() === name;
      })
      .map(Number);
  }
}
