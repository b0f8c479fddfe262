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
      "RuntimeDirectoryPreserve=no",
      "Conflicts=nvidia-persistenced.service",
    ]) {
      expect(unit).toContain(`\n${line}\n`);
    }
  });
});
