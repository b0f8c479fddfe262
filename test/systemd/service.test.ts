// gpu-persistd.service under real systemd 252 in systemd-nspawn, on simulated GPUs added
// by a drop-in, exactly as an admin would run it: start, status, reload, watchdog, journal,
// stop, privilege drop.
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ROOT } from "../helpers/daemon.js";
import { bootWithDaemon, type Container, nspawnUnavailable, stageInstall } from "../helpers/nspawn.js";

const SIM_CONFIG = "/etc/gpu-persistd/sim.json";

function simDropIn(extra = ""): string {
  return [
    "[Service]",
    "ExecStart=",
    "ExecStart=/usr/bin/gpu-persistd --user nvidia-persistenced --simulate=4",
    `Environment=GPU_PERSISTD_SIM_CONFIG=${SIM_CONFIG}`,
    extra,
  ].join("\n");
}

const unavailable = nspawnUnavailable();
let stage = "";
let container: Container;

beforeAll(async () => {
  if (unavailable) throw new Error(`cannot run the real-systemd suite: ${unavailable}`);
  stage = stageInstall();
  container = await bootWithDaemon(stage);
}, 120_000);

afterAll(async () => {
  await container?.poweroff();
  if (stage) rmSync(stage, { recursive: true, force: true });
});

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function install(dropIn: string, simConfig: object, config?: object): void {
  container.writeFile("/etc/systemd/system/gpu-persistd.service.d/simulate.conf", dropIn);
  container.writeFile(SIM_CONFIG, JSON.stringify(simConfig));
  if (config) container.writeFile("/etc/gpu-persistd/config.json", JSON.stringify(config));
  else container.run("rm -f /etc/gpu-persistd/config.json");
  container.check(
    "systemctl daemon-reload && systemctl reset-failed gpu-persistd 2>/dev/null; journalctl --rotate --vacuum-time=1s -q; true",
  );
}

/** Runs `body` with a drop-in from the package's examples installed, as the README says to. */
function withExampleDropIn(name: string, body: () => void): void {
  const target = `/etc/systemd/system/gpu-persistd.service.d/${name}`;
  container.writeFile(target, readFileSync(join(stage, "usr/share/doc/gpu-persistd/examples", name), "utf8"));
  container.check("systemctl daemon-reload");
  try {
    body();
  } finally {
    container.check(`rm -f ${target} && systemctl daemon-reload`);
  }
}

describe("gpu-persistd.service", () => {
  it("passes systemd-analyze verify", () => {
    const result = container.run("systemd-analyze verify /usr/lib/systemd/system/gpu-persistd.service");
    // systemd 252 predates FileDescriptorStorePreserve= (254, for soft reboots): it says so and ignores it.
    expect(result.stderr).toMatch(
      /^\/usr\/lib\/systemd\/system\/gpu-persistd\.service:\d+: Unknown key 'FileDescriptorStorePreserve' in section \[Service\], ignoring\.\n$/,
    );
    expect(result.code).toBe(0);
  });

  it("becomes active only once READY, showing the STATUS text, and runs as nvidia-persistenced", () => {
    // A soft error on one GPU: its legacy flag cannot be read; its node holds it all the same.
    install(simDropIn(), { faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 2, return: 4 }] });
    container.check("systemctl start gpu-persistd");
    // `systemctl start` returned: READY=1 was received, so every GPU is settled already.
    expect(container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    expect(container.unitProperty("gpu-persistd", "StatusText")).toBe("4/4 GPUs persistent");
    const status = JSON.parse(container.check("gpu-persistd status --json"));
    expect(status.devices.map((d: { held: boolean }) => d.held)).toEqual([true, true, true, true]);
    expect(status.devices[2].legacyFlag).toBe("unknown");
    const pid = container.unitProperty("gpu-persistd", "MainPID");
    expect(status.pid).toBe(Number(pid));
    const uid = container.check("id -u nvidia-persistenced").trim();
    const gid = container.check("id -g nvidia-persistenced").trim();
    const procStatus = container.check(`cat /proc/${pid}/status`);
    expect(procStatus).toMatch(new RegExp(`^Uid:\\s+${uid}\\s+${uid}\\s+${uid}\\s+${uid}$`, "m"));
    expect(procStatus).toMatch(new RegExp(`^Gid:\\s+${gid}\\s+${gid}\\s+${gid}\\s+${gid}$`, "m"));
    expect(procStatus).toMatch(/^CapEff:\s+0+$/m);
  });

  it("shows warnings and worse with journalctl -p warning, and one GPU's history by its field", () => {
    const warnings = container.check("journalctl -u gpu-persistd -p warning -o cat --no-pager");
    expect(warnings).toContain(
      "GPU 2 00000000:08:00.0: cannot read the legacy persistence flag: NVML_ERROR_NO_PERMISSION",
    );
    expect(warnings).not.toContain("holding the GPU");
    expect(warnings).not.toContain("ready:");
    const gpu2 = container.check("journalctl GPU_PCI_BUS_ID=00000000:08:00.0 -o cat --no-pager");
    expect(gpu2).toContain("cannot read the legacy persistence flag");
    expect(gpu2).not.toContain("00000000:06:00.0");
    const gpu0 = container.check("journalctl -u gpu-persistd GPU_INDEX=0 -o cat --no-pager");
    expect(gpu0).toContain("GPU 0 00000000:06:00.0: holding the GPU");
    expect(gpu0).not.toContain("GPU 1 ");
    const info = container.check("journalctl -u gpu-persistd -p info -o cat --no-pager");
    expect(info).toContain("ready: 4/4 GPUs held");
  });

  it("reloads on systemctl reload: RELOADING, then READY with the new selection applied", async () => {
    container.writeFile("/etc/gpu-persistd/config.json", JSON.stringify({ devices: ["0", "1"] }));
    const pid = container.unitProperty("gpu-persistd", "MainPID");
    container.check("systemctl reload gpu-persistd");
    // systemd 252 ends the reload job when ExecReload's kill returns; RELOADING=1 ... READY=1
    // then mark the daemon's own reload (Type=notify-reload, systemd >= 253, waits for it).
    await waitFor(() => container.unitProperty("gpu-persistd", "StatusText") === "2/2 GPUs persistent");
    expect(container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    expect(container.unitProperty("gpu-persistd", "MainPID")).toBe(pid);
    const journal = container.check("journalctl -u gpu-persistd -o cat --no-pager");
    expect(journal).toContain("reloading the configuration (SIGHUP)");
    expect(journal).toContain("GPU 3 00000000:09:00.0: released the GPU (no longer selected)");
    expect(journal).toContain("Reloaded gpu-persistd.service");
    const status = JSON.parse(container.check("gpu-persistd status --json"));
    expect(status.devices.map((d: { held: boolean }) => d.held)).toEqual([true, true, false, false]);
  });

  it("keeps running on a reload with a bad configuration, saying why", async () => {
    container.writeFile("/etc/gpu-persistd/config.json", '{"devices": "all of them"');
    container.check("systemctl reload gpu-persistd");
    const errorsNow = () => container.check("journalctl -u gpu-persistd -p err -o cat --no-pager");
    await waitFor(() => errorsNow().includes("reload failed"));
    expect(container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    expect(container.unitProperty("gpu-persistd", "StatusText")).toBe("2/2 GPUs persistent");
    const errors = errorsNow();
    expect(errors).toContain("reload failed, keeping the running configuration");
    expect(errors).toContain("not valid JSON");
  });

  it("stops fast; only the socket unit's sockets, the unlocked PID file and the simulator's stand-ins stay", () => {
    const start = performance.now();
    container.check("systemctl stop gpu-persistd");
    expect(performance.now() - start).toBeLessThan(3000);
    // The directory is the socket unit's too (RuntimeDirectoryPreserve=yes): its sockets
    // keep listening; the next start takes the PID file over (its lock died with the daemon).
    const left = container.run("ls /run/nvidia-persistenced 2>/dev/null").stdout.split("\n").filter(Boolean);
    expect(
      left.filter((f) => !["socket", "gpu-persistd.sock", "nvidia-persistenced.pid", "sim-dev"].includes(f)),
    ).toEqual([]);
    expect(container.check("journalctl -u gpu-persistd -o cat --no-pager")).toMatch(/Shutdown \(\d+\)/);
  });

  it("refuses metricsListen under the default unit, naming the drop-in, and is not restarted", () => {
    install(simDropIn(), {}, { metricsListen: "127.0.0.1:9400" });
    expect(container.run("systemctl start gpu-persistd").code).not.toBe(0);
    expect(container.unitProperty("gpu-persistd", "ActiveState")).toBe("failed");
    expect(container.unitProperty("gpu-persistd", "NRestarts")).toBe("0");
    const errors = container.check("journalctl -u gpu-persistd -p err -o cat --no-pager");
    expect(errors).toContain("cannot serve metrics on 127.0.0.1:9400: EAFNOSUPPORT");
    expect(errors).toContain("/usr/share/doc/gpu-persistd/examples/metrics-listen.conf");
  });

  it("serves metrics on the host's loopback with the metrics-listen drop-in", () => {
    install(simDropIn(), {}, { metricsListen: "127.0.0.1:9400" });
    withExampleDropIn("metrics-listen.conf", () => {
      container.check("systemctl start gpu-persistd");
      const metrics = container.check(
        `node -e 'fetch("http://127.0.0.1:9400/metrics").then(r => r.text()).then(t => process.stdout.write(t))'`,
      );
      expect(metrics.match(/^gpu_persistd_gpu_held\{.*\} 1$/gm)).toHaveLength(4);
      container.check("systemctl stop gpu-persistd");
    });
  });

  it("writes the metrics textfile with the metrics-textfile drop-in, readable by node_exporter", () => {
    const dir = "/var/lib/prometheus/node-exporter";
    container.check(`mkdir -p ${dir} && chgrp nvidia-persistenced ${dir} && chmod 0775 ${dir}`);
    install(simDropIn(), {}, { metricsTextfile: `${dir}/gpu-persistd.prom` });
    expect(container.run("systemctl start gpu-persistd").code).not.toBe(0);
    expect(container.check("journalctl -u gpu-persistd -p err -o cat --no-pager")).toContain(
      "EROFS: the default gpu-persistd.service may write only its runtime directory",
    );
    install(simDropIn(), {}, { metricsTextfile: `${dir}/gpu-persistd.prom` });
    withExampleDropIn("metrics-textfile.conf", () => {
      container.check("systemctl start gpu-persistd");
      expect(container.check(`stat -c %a ${dir}/gpu-persistd.prom`).trim()).toBe("644");
      expect(container.check(`cat ${dir}/gpu-persistd.prom`).match(/^gpu_persistd_gpu_held\{.*\} 1$/gm)).toHaveLength(
        4,
      );
      container.check("systemctl stop gpu-persistd");
      // After the stop the file says so: nothing held.
      expect(container.check(`cat ${dir}/gpu-persistd.prom`).match(/^gpu_persistd_gpu_held\{.*\} 0$/gm)).toHaveLength(
        4,
      );
    });
  });

  it("is killed and restarted by the watchdog when NVML hangs, and comes back READY", async () => {
    install(simDropIn("WatchdogSec=2s\nRestartSec=300ms\nEnvironment=GPU_PERSISTD_NVML_TIMEOUT_MS=400"), {
      // What every health round asks each held GPU: NVML's recovery action.
      faults: [{ call: "nvmlDeviceGetFieldValues", hangMs: 600_000, afterMs: 1500 }],
    });
    container.check("systemctl start gpu-persistd");
    const firstPid = container.unitProperty("gpu-persistd", "MainPID");
    const deadline = Date.now() + 30_000;
    while (container.unitProperty("gpu-persistd", "NRestarts") === "0") {
      if (Date.now() > deadline) throw new Error(container.check("journalctl -u gpu-persistd --no-pager"));
      await new Promise((r) => setTimeout(r, 200));
    }
    // The next instance must come back READY; keep its NVML healthy from now on.
    container.writeFile(SIM_CONFIG, "{}");
    while (container.unitProperty("gpu-persistd", "ActiveState") !== "active") {
      if (Date.now() > deadline) throw new Error(container.check("journalctl -u gpu-persistd --no-pager"));
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(container.unitProperty("gpu-persistd", "MainPID")).not.toBe(firstPid);
    const journal = container.check("journalctl -u gpu-persistd -o cat --no-pager");
    expect(journal).toContain("withholding watchdog pings");
    expect(journal).toMatch(/Watchdog timeout|Failed with result 'watchdog'/);
    container.check("systemctl stop gpu-persistd");
  });
});

describe("starting when the driver appears", () => {
  const rule = readFileSync(join(ROOT, "systemd/71-gpu-persistd.rules"), "utf8");
  const command = /RUN\+="\/bin\/sh -c '(.*)'"/.exec(rule)?.[1] ?? "";

  it("the udev rule's command starts an enabled unit, and leaves one the admin disabled alone", () => {
    expect(command).toContain("systemctl start --no-block gpu-persistd.service");
    expect(container.run("cat /usr/lib/udev/rules.d/71-gpu-persistd.rules").stdout).toBe(rule);
    install(simDropIn(), {});
    container.check("systemctl stop gpu-persistd; systemctl disable -q gpu-persistd");
    container.run(command);
    expect(container.unitProperty("gpu-persistd", "ActiveState")).toBe("inactive");
    container.check("systemctl enable -q gpu-persistd");
    container.check(command);
    container.check("systemctl start gpu-persistd");
    expect(container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    container.check("systemctl stop gpu-persistd");
  });

  it("waits for a driver that answers late, then comes up", () => {
    install(simDropIn(), { faults: [{ call: "nvmlInit_v2", return: 9, times: 3 }] });
    container.check("systemctl start gpu-persistd");
    expect(container.unitProperty("gpu-persistd", "ActiveState")).toBe("active");
    expect(container.check("journalctl -u gpu-persistd -o cat --no-pager")).toContain("waiting for the NVIDIA driver");
    container.check("systemctl stop gpu-persistd");
  });
});
