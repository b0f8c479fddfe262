// The same .deb on Debian 13 (trixie): Debian's Node 20 there is linked to the system libuv
// 1.50, with which Node refuses process.setuid and kin (CVE-2024-22017); the daemon's libc
// privilege drop must still run it as nvidia-persistenced. Install, run, purge.
import { describe, expect, it } from "vitest";
import { nspawnUnavailable, trixieRootfs } from "../helpers/nspawn.js";
import { APT, packageHost, simulateInUnit, simulatorDeb } from "../helpers/package.js";

const host = packageHost(trixieRootfs, nspawnUnavailable(), "debian-13");

describe("gpu-persistd .deb on Debian 13", () => {
  it("has no lintian errors or warnings with Debian 13's lintian (units and rules in /usr/lib)", () => {
    const { container, deb } = host;
    const lintian = container.run(
      `apt-get update -q && ${APT} --no-install-recommends install lintian && ` +
        `lintian --fail-on error,warning /mnt/dist/${deb} /mnt/dist/${simulatorDeb("debian-13")}`,
      300_000,
    );
    expect(lintian.stdout).not.toMatch(/^[EW]: /m);
    expect(lintian.code, lintian.stdout + lintian.stderr).toBe(0);
    container.check(`${APT} purge lintian && ${APT} autoremove --purge`, 120_000);
  });

  it("installs with Debian's Node 20, runs as nvidia-persistenced, and purges", () => {
    const { container } = host;
    simulateInUnit(container, 2);
    const install = container.run(`${APT} --no-install-recommends install ${host.withSimulator}`, 300_000);
    expect(install.code, install.stdout + install.stderr).toBe(0);
    expect(container.check("node --version")).toMatch(/^v20\./);
    expect(container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    const pid = container.unitProperty("gpu-persistd", "MainPID");
    expect(container.check(`ps -o user= -p ${pid}`)).toBe("nvidia-persistenced\n");
    expect(container.check(`grep ^CapEff /proc/${pid}/status`)).toMatch(/^CapEff:\s+0+$/m);
    const status = JSON.parse(container.check("gpu-persistd status --json"));
    expect(status.devices.map((d: { held: boolean }) => d.held)).toEqual([true, true]);
    container.check(`${APT} purge gpu-persistd gpu-persistd-simulator && ${APT} autoremove --purge`, 120_000);
    expect(container.run("getent passwd nvidia-persistenced").code).toBe(2);
  });
});
