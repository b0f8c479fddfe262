// The .deb as an admin meets it: lintian, then a stock Debian 12 (real systemd 252 in
// systemd-nspawn, Debian's own repositories, no compiler, no Node) where
// `apt-get install ./gpu-persistd_*.deb` pulls Debian's nodejs, creates the user, enables
// and starts the unit; then stop, purge and autoremove must leave the system as it was.
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { ROOT } from "../helpers/daemon.js";
import { bookwormRootfs, nspawnUnavailable } from "../helpers/nspawn.js";
import {
  APT,
  buildDeb,
  daemonDeb,
  doctorFailures,
  packageHost,
  SIMULATE_DROP_IN,
  SNAPSHOT,
  simulateInUnit,
  simulatorDeb,
} from "../helpers/package.js";

const unavailable =
  nspawnUnavailable() ??
  (spawnSync("sh", ["-c", "command -v lintian dpkg-deb strip"]).status === 0
    ? null
    : "missing lintian, dpkg-deb or strip: apt-get install -y --no-install-recommends lintian dpkg-dev binutils");

const host = packageHost(bookwormRootfs, unavailable);

const simulate = (gpus: number) => simulateInUnit(host.container, gpus);

describe("gpu-persistd .deb", () => {
  it("is reproducible: a second build gives the same bytes, for both packages", () => {
    const digest = () =>
      [host.deb, simulatorDeb(), daemonDeb("debian-13"), simulatorDeb("debian-13")].map((deb) =>
        createHash("sha256")
          .update(readFileSync(join(ROOT, "dist", deb)))
          .digest("hex"),
      );
    const first = digest();
    expect(buildDeb()).toBe(host.deb);
    expect(digest()).toEqual(first);
  });

  it("has no lintian errors or warnings, and the simulator is only in its own package", () => {
    for (const deb of [host.deb, simulatorDeb()]) {
      const result = spawnSync("lintian", ["--fail-on", "error,warning", join(ROOT, "dist", deb)], {
        encoding: "utf8",
      });
      expect(result.stdout, deb).not.toMatch(/^[EW]: /m);
      expect(result.status, result.stdout + result.stderr).toBe(0);
    }
    const contents = (deb: string) =>
      spawnSync("dpkg-deb", ["-c", join(ROOT, "dist", deb)], { encoding: "utf8" }).stdout;
    expect(contents(host.deb)).not.toContain("libnvidia-ml-sim.so");
    expect(contents(simulatorDeb())).toContain("./usr/lib/gpu-persistd/libnvidia-ml-sim.so");
    // Debian 12's tools want units and udev rules in /lib, Debian 13's in /usr/lib.
    expect(contents(host.deb)).toContain("./lib/systemd/system/gpu-persistd.service");
    expect(contents(daemonDeb("debian-13"))).toContain("./usr/lib/systemd/system/gpu-persistd.service");
    expect(contents(daemonDeb("debian-13"))).toContain("./usr/lib/udev/rules.d/71-gpu-persistd.rules");
  });

  it("installs on stock Debian 12 with Debian's nodejs, starts, and purges without a trace", () => {
    expect(host.container.run("command -v node cc gcc").stdout, "the rootfs must have no Node and no compiler").toBe(
      "",
    );
    const before = host.container.check(SNAPSHOT);
    simulate(2);

    const install = host.container.run(
      `apt-get update -q && ${APT} --no-install-recommends install ${host.withSimulator}`,
      300_000,
    );
    expect(install.code, install.stdout + install.stderr).toBe(0);
    expect(host.container.check("node --version")).toMatch(/^v18\./);
    expect(host.container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    expect(host.container.unitProperty("gpu-persistd", "UnitFileState")).toBe("enabled");
    expect(host.container.check("ps -o user= -p $(systemctl show -p MainPID --value gpu-persistd)")).toBe(
      "nvidia-persistenced\n",
    );
    const status = JSON.parse(host.container.check("gpu-persistd status --json"));
    expect(status.devices.map((d: { held: boolean }) => d.held)).toEqual([true, true]);
    expect(host.container.check("man -w gpu-persistd").trim()).toBe("/usr/share/man/man8/gpu-persistd.8.gz");
    // Nothing at warning or worse from the daemon (systemd's own lines about the private
    // loopback that nspawn cannot give are not the daemon's).
    expect(host.container.check("journalctl -q -t gpu-persistd -p warning --no-pager")).toBe("");

    // doctor on the installed system: the service side passes; this container has no driver.
    expect(doctorFailures(host.container)).toEqual(["kernel-module", "device-nodes", "driver-version"]);

    // A stop lets go of every GPU; the socket unit still listens (a client would start the
    // daemon again), until it is stopped too.
    expect(host.container.unitProperty("gpu-persistd.socket", "UnitFileState")).toBe("enabled");
    host.container.check("systemctl stop gpu-persistd");
    expect(host.container.unitProperty("gpu-persistd", "ActiveState")).toBe("inactive");
    expect(host.container.run("test -S /run/nvidia-persistenced/socket").code).toBe(0);
    host.container.check("systemctl stop gpu-persistd.socket");
    expect(host.container.run("test -e /run/nvidia-persistenced/socket").code).toBe(1);

    const purge = host.container.run(
      `${APT} purge gpu-persistd gpu-persistd-simulator && ${APT} autoremove --purge`,
      120_000,
    );
    expect(purge.code, purge.stdout + purge.stderr).toBe(0);
    expect(host.container.run("systemctl list-unit-files --no-legend gpu-persistd.service").stdout).toBe("");
    expect(host.container.check(SNAPSHOT)).toBe(before);
  });

  it("keeps a nvidia-persistenced user it did not create, on purge", () => {
    host.container.check(
      "useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin nvidia-persistenced",
    );
    simulate(1);
    const install = host.container.run(`${APT} --no-install-recommends install ${host.withSimulator}`, 300_000);
    expect(install.code, install.stdout + install.stderr).toBe(0);
    expect(host.container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    host.container.check(`${APT} purge gpu-persistd gpu-persistd-simulator`, 120_000);
    expect(host.container.run("getent passwd nvidia-persistenced").code).toBe(0);
    expect(host.container.run("test -e /var/lib/gpu-persistd").code).toBe(1);
  });

  it("installs without waiting on a host whose NVIDIA driver is not loaded yet, saying how to start it", () => {
    host.container.check(`rm -f ${SIMULATE_DROP_IN} && systemctl daemon-reload`);
    const install = host.container.run(`${APT} --no-install-recommends install /mnt/dist/${host.deb}`, 300_000);
    expect(install.code, install.stdout + install.stderr).toBe(0);
    expect(install.stderr).toContain(
      "gpu-persistd: the NVIDIA driver is not loaded, so the service is enabled but not started",
    );
    expect(host.container.unitProperty("gpu-persistd", "ActiveState")).toBe("inactive");
    expect(host.container.unitProperty("gpu-persistd", "UnitFileState")).toBe("enabled");
    host.container.check(`${APT} purge gpu-persistd`, 120_000);
  });

  it("on reinstall (an upgrade's scripts) keeps the admin's config edits and a disable; an upgrade lets no GPU go", async () => {
    simulate(1);
    host.container.check(`${APT} --no-install-recommends install ${host.withSimulator}`, 300_000);
    host.container.check(`sed -i 's/"logLevel": "info"/"logLevel": "debug"/' /etc/gpu-persistd/config.json`);
    host.container.check("systemctl disable --now gpu-persistd");
    const reinstall = host.container.run(`${APT} install --reinstall /mnt/dist/${host.deb}`, 120_000);
    expect(reinstall.code, reinstall.stdout + reinstall.stderr).toBe(0);
    expect(host.container.check('grep -c \'"logLevel": "debug"\' /etc/gpu-persistd/config.json').trim()).toBe("1");
    expect(host.container.unitProperty("gpu-persistd", "UnitFileState")).toBe("disabled");
    expect(host.container.unitProperty("gpu-persistd", "ActiveState")).toBe("inactive");
    // Enabled again, a reinstall restarts it (postinst configure with the old version),
    // through systemd's fd store: the GPU is held at every sample, the socket unchanged.
    host.container.check("systemctl enable --now gpu-persistd");
    const pid = host.container.unitProperty("gpu-persistd", "MainPID");
    const inode = () => host.container.check("stat -c %i /run/nvidia-persistenced/socket").trim();
    const socketBefore = inode();
    const stop = await host.container.watchHolders(["/run/nvidia-persistenced/sim-dev/nvidia0"]);
    host.container.check(`${APT} install --reinstall /mnt/dist/${host.deb}`, 120_000);
    const watched = await stop();
    expect(watched.samples).toBeGreaterThan(20);
    expect(watched.gaps, JSON.stringify(watched)).toEqual({ "/run/nvidia-persistenced/sim-dev/nvidia0": 0 });
    expect(inode()).toBe(socketBefore);
    expect(host.container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    expect(host.container.unitProperty("gpu-persistd", "MainPID")).not.toBe(pid);
    host.container.check(`${APT} purge gpu-persistd gpu-persistd-simulator`, 120_000);
  });

  it("without the simulator package, --simulate names the package to install", () => {
    host.container.check(`${APT} --no-install-recommends install /mnt/dist/${host.deb}`, 300_000);
    const result = host.container.run("gpu-persistd --simulate=1 --runtime-dir=/run/gpd-try");
    expect(result.code).toBe(69);
    expect(result.stdout + result.stderr).toContain("apt-get install gpu-persistd-simulator");
    host.container.check(`${APT} purge gpu-persistd`, 120_000);
  });
});
