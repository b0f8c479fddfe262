// The unit's static checks, on the host: exposure score within the limit, every directive
// that is not obvious explained.
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../helpers/daemon.js";

const UNIT = join(ROOT, "systemd/gpu-persistd.service");

describe("gpu-persistd.service, statically", () => {
  it("scores an exposure of 1.5 or lower in systemd-analyze security", () => {
    const result = spawnSync("systemd-analyze", ["security", "--offline=true", "--threshold=15", "--no-pager", UNIT], {
      encoding: "utf8",
    });
    expect(result.error, "systemd-analyze is missing: apt-get install systemd").toBeUndefined();
    const score = /Overall exposure level for gpu-persistd.service: ([\d.]+)/.exec(result.stdout)?.[1];
    expect(Number(score), result.stdout).toBeLessThanOrEqual(1.5);
    expect(result.status).toBe(0);
  });

  it("keeps what the daemon needs: notify from the main PID, pkey syscalls, NVIDIA devices only", () => {
    const unit = readFileSync(UNIT, "utf8");
    for (const line of [
      "Type=notify",
      "NotifyAccess=main",
      "SystemCallFilter=@system-service @pkey",
      "DevicePolicy=closed",
      "DeviceAllow=char-nvidia-frontend rw",
      "RestrictAddressFamilies=AF_UNIX",
      "RuntimeDirectory=nvidia-persistenced",
      // The socket unit's sockets live in it: it stays while they listen.
      "RuntimeDirectoryPreserve=yes",
      // Every fd that holds a GPU goes to the fd store: restarts let no GPU go.
      "FileDescriptorStoreMax=1024",
      "Wants=gpu-persistd.socket",
      "Conflicts=nvidia-persistenced.service",
      // The store outlives every stop (a soft reboot carries the GPUs over); the daemon empties it at a stop for good.
      "FileDescriptorStorePreserve=yes",
    ]) {
      expect(unit).toContain(`\n${line}\n`);
    }
  });

  it("stops with SIGUSR2 (keep the GPUs in the store) only when its own job is a restart or a soft reboot is starting", () => {
    const stop = readFileSync(UNIT, "utf8")
      .split("\n")
      .filter((l) => l.startsWith("ExecStop="));
    expect(stop).toHaveLength(1);
    // "+": as root outside the sandbox, to ask PID 1 for its jobs and to signal the dropped user.
    expect(stop[0]).toMatch(/^ExecStop=\+\/bin\/sh -c '.*'$/);
    expect(stop[0]).toContain("systemctl list-jobs --no-legend --plain %n soft-reboot.target");
    expect(stop[0]).toContain('"^[0-9]+ +(%n +restart|soft-reboot.target +start) "');
    expect(stop[0]).toContain("kill -s USR2 $$MAINPID");
  });
});

describe("71-gpu-persistd.rules, statically", () => {
  const rules = readFileSync(join(ROOT, "systemd/71-gpu-persistd.rules"), "utf8");

  it('is made of udev\'s KEY op "value" pairs with known keys and operators', () => {
    const known = new Set(["ACTION", "SUBSYSTEM", "KERNEL", "DRIVER", "RUN", "TAG", "ENV"]);
    const lines = rules.split("\n").filter((l) => l.trim() && !l.startsWith("#"));
    expect(lines).toHaveLength(1);
    for (const line of lines) {
      const pairs = line.split(/,\s*(?=[A-Z])/);
      for (const pair of pairs) {
        const m = /^([A-Z]+)(\{[\w]+\})?(==|!=|\+=|=|:=)"([^"]*)"$/.exec(pair.trim());
        expect(m, pair).not.toBeNull();
        expect(known.has(m?.[1] as string), pair).toBe(true);
      }
    }
    expect(rules).toContain('ACTION=="add", SUBSYSTEM=="module", KERNEL=="nvidia"');
  });

  it("passes udevadm verify where this udev has it (systemd 254 and later)", () => {
    const help = spawnSync("udevadm", ["verify", "--help"], { encoding: "utf8" });
    // No udev here, or Debian 12's (252), which predates `udevadm verify`: the check above is all there is.
    if (help.error || help.status !== 0) return;
    const result = spawnSync("udevadm", ["verify", join(ROOT, "systemd/71-gpu-persistd.rules")], { encoding: "utf8" });
    expect(result.status, result.stdout + result.stderr).toBe(0);
  });
});
