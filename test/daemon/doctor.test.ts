// gpu-persistd doctor on a system laid out under --root (proc, dev, etc, the unit) with the
// simulated NVML: first a healthy host where every check passes, then each fault an admin
// meets, each with its failing check and the exact fix.
import { chmodSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { beforeEach, describe, expect, it } from "vitest";
import { DaemonFixture, type DaemonProcess, ROOT, runBundle, type SimConfig } from "../helpers/daemon.js";

interface Check {
  id: string;
  title: string;
  ok: boolean;
  detail: string;
  fix?: string;
}

const fixture = new DaemonFixture();
let root: string;

function put(path: string, contents: string, mode = 0o644): void {
  const full = join(root, path);
  mkdirSync(dirname(full), { recursive: true });
  writeFileSync(full, contents);
  chmodSync(full, mode);
}

function link(path: string, target: string): void {
  const full = join(root, path);
  mkdirSync(dirname(full), { recursive: true });
  rmSync(full, { force: true });
  symlinkSync(target, full);
}

/** A GPU host with two GPUs, the package installed and enabled, the unit simulating. */
function healthyHost(sim: SimConfig = {}): void {
  const scratch = fixture.prepare();
  scratch.writeSimConfig({ statePath: join(scratch.dir, "sim-state"), ...sim });
  root = join(scratch.dir, "root");
  put("/proc/modules", "nvidia_uvm 1 0 - Live 0x0\nnvidia 2 1 nvidia_uvm, Live 0x0\n");
  put(
    "/proc/driver/nvidia/version",
    "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04-sim  Release Build  (dvs-builder@U22)\n",
  );
  for (const node of ["nvidiactl", "nvidia0", "nvidia1"]) put(`/dev/${node}`, "", 0o666);
  put("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\nnvidia-persistenced:x:998:998::/:/usr/sbin/nologin\n");
  put("/etc/group", "root:x:0:\nnvidia-persistenced:x:998:\nvideo:x:44:\n");
  put("/lib/systemd/system/gpu-persistd.service", readFileSync(join(ROOT, "systemd/gpu-persistd.service"), "utf8"));
  put(
    "/etc/systemd/system/gpu-persistd.service.d/simulate.conf",
    "[Service]\nExecStart=\nExecStart=/usr/bin/gpu-persistd --user nvidia-persistenced --simulate=2\n",
  );
  link("/etc/systemd/system/multi-user.target.wants/gpu-persistd.service", "/lib/systemd/system/gpu-persistd.service");
}

/** The simulator's config; no GPU_PERSISTD_CONFIG, so doctor reads the config file under the root. */
function env(): NodeJS.ProcessEnv {
  return fixture.env({ GPU_PERSISTD_CONFIG: undefined });
}

/** The daemon as the unit runs it, but as root (the fake root's user is not on this host). */
async function startDaemon(): Promise<DaemonProcess> {
  // The last --runtime-dir wins: the root's, where doctor looks.
  const daemon = fixture.spawn([`--runtime-dir=${join(root, "run/nvidia-persistenced")}`, "--simulate=2"], env());
  await daemon.waitReady();
  return daemon;
}

function doctor(
  extra: string[] = [],
  extraEnv: NodeJS.ProcessEnv = {},
): { code: number; checks: Check[]; text: string } {
  const json = runBundle(["doctor", "--json", `--root=${root}`, ...extra], { ...env(), ...extraEnv });
  const text = runBundle(["doctor", `--root=${root}`, ...extra], { ...env(), ...extraEnv });
  const report = JSON.parse(json.output) as { ok: boolean; checks: Check[] };
  expect(report.ok).toBe(json.code === 0);
  expect(text.code).toBe(json.code);
  return { code: json.code ?? -1, checks: report.checks, text: text.output };
}

function check(checks: Check[], id: string): Check {
  const found = checks.find((c) => c.id === id);
  if (!found) throw new Error(`no check ${id} in ${JSON.stringify(checks, null, 2)}`);
  return found;
}

beforeEach(() => healthyHost());

describe("gpu-persistd doctor", () => {
  it("passes every check on a healthy host, and exits 0", async () => {
    await startDaemon();
    const { code, checks, text } = doctor();
    expect(checks.filter((c) => !c.ok)).toEqual([]);
    expect(code).toBe(0);
    expect(checks.map((c) => c.id)).toEqual([
      "config",
      "kernel-module",
      "device-nodes",
      "device-access",
      "nvidia-persistenced",
      "unit",
      "account",
      "metrics",
      "runtime-dir",
      "daemon",
      "numa",
      "nvml-library",
      "driver-version",
      "gpu:0",
      "gpu:1",
      "recovery",
      "persistence-cost",
    ]);
    expect(check(checks, "config").detail).toContain(
      "with the options of /etc/systemd/system/gpu-persistd.service.d/simulate.conf",
    );
    expect(check(checks, "account").detail).toBe("user nvidia-persistenced (uid 998, from /etc/passwd), gid 998");
    expect(check(checks, "driver-version").detail).toBe("both 580.159.04-sim");
    expect(check(checks, "gpu:1").detail).toMatch(/^persistence enabled, held by gpu-persistd \(PID \d+\)$/);
    expect(text).toContain("gpu-persistd doctor: all 17 checks passed");
    // With the shipped 15 s health interval no round has read the GPUs yet.
    expect(check(checks, "persistence-cost").detail).toMatch(/^2 GPU\(s\) held; no power reading for them/);
    expect(text).toMatch(/^PASS {2}NVIDIA kernel module +nvidia loaded, driver 580\.159\.04-sim$/m);
  });

  it("fails a GPU whose driver asks for a reset, with the exact command, and notes the held GPUs' draw", async () => {
    healthyHost({ gpus: [{ powerMw: 78400 }, { powerMw: 74400, recoveryAction: 1 }] });
    const daemon = fixture.spawn([`--runtime-dir=${join(root, "run/nvidia-persistenced")}`, "--simulate=2"], {
      ...env(),
      GPU_PERSISTD_HEALTH_INTERVAL_MS: "100",
    });
    await daemon.waitReady();
    await daemon.waitFor("NVML reports recovery action gpu-reset");
    const { code, checks, text } = doctor();
    expect(code).toBe(1);
    expect(check(checks, "recovery")).toMatchObject({
      ok: false,
      detail: "GPU 1 00000000:07:00.0: gpu-reset",
      fix: "GPU 1: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1",
    });
    expect(check(checks, "persistence-cost")).toMatchObject({ ok: true });
    expect(check(checks, "persistence-cost").detail).toMatch(
      /^2 held GPU\(s\) draw 152\.8 W now \(their idle draw while no job runs: about 1339 kWh a year\)/,
    );
    expect(text).toContain("fix: GPU 1: stop its jobs, then run: gpu-persistd release 1 -- nvidia-smi -r -i 1");
  });

  it("fails when nvidia-persistenced runs beside it, and says how to stop and mask it", async () => {
    await startDaemon();
    put("/proc/4242/cmdline", "/usr/bin/nvidia-persistenced\0--user\0nvidia-persistenced\0");
    const { code, checks, text } = doctor();
    expect(code).toBe(1);
    const c = check(checks, "nvidia-persistenced");
    expect(c.detail).toContain("running (PID 4242)");
    expect(c.fix).toBe(
      "systemctl disable --now nvidia-persistenced.service && systemctl mask nvidia-persistenced.service",
    );
    expect(text).toContain("fix: systemctl disable --now nvidia-persistenced.service");
    expect(text).toContain("gpu-persistd doctor: 1 of 17 checks failed");
  });

  it("passes a masked nvidia-persistenced, naming the mask and how to undo it", () => {
    link("/etc/systemd/system/nvidia-persistenced.service", "/dev/null");
    const c = check(doctor().checks, "nvidia-persistenced");
    expect(c.ok).toBe(true);
    expect(c.detail).toContain("masked (/etc/systemd/system/nvidia-persistenced.service -> /dev/null)");
    expect(c.detail).toContain("systemctl unmask nvidia-persistenced.service");
  });

  it("fails an nvidia-persistenced that is enabled though stopped: it races at the next boot", () => {
    put("/lib/systemd/system/nvidia-persistenced.service", "[Service]\nExecStart=/usr/bin/nvidia-persistenced\n");
    link(
      "/etc/systemd/system/multi-user.target.wants/nvidia-persistenced.service",
      "/lib/systemd/system/nvidia-persistenced.service",
    );
    const c = check(doctor().checks, "nvidia-persistenced");
    expect(c.ok).toBe(false);
    expect(c.detail).toContain("enabled (multi-user.target)");
  });

  it("fails a masked gpu-persistd.service with the unmask and enable commands", () => {
    link("/etc/systemd/system/gpu-persistd.service", "/dev/null");
    const c = check(doctor().checks, "unit");
    expect(c.ok).toBe(false);
    expect(c.detail).toContain("masked (/etc/systemd/system/gpu-persistd.service -> /dev/null");
    expect(c.fix).toBe("systemctl unmask gpu-persistd.service && systemctl enable --now gpu-persistd.service");
  });

  it("fails a unit that is installed but not enabled", () => {
    rmSync(join(root, "etc/systemd/system/multi-user.target.wants"), { recursive: true });
    const c = check(doctor().checks, "unit");
    expect(c.ok).toBe(false);
    expect(c.fix).toBe("systemctl enable --now gpu-persistd.service");
  });

  it("fails without the kernel module, and without device nodes, saying how to load them", () => {
    put("/proc/modules", "snd 1 0 - Live 0x0\n");
    rmSync(join(root, "dev/nvidiactl"));
    const { checks } = doctor();
    expect(check(checks, "kernel-module").fix).toContain("modprobe nvidia");
    expect(check(checks, "device-nodes").detail).toBe("/dev/nvidiactl missing");
  });

  it("fails when the daemon's user cannot open a device node, naming the node and the fix", () => {
    chmodSync(join(root, "dev/nvidia1"), 0o660);
    const c = check(doctor().checks, "device-access");
    expect(c.ok).toBe(false);
    expect(c.detail).toContain(
      "nvidia-persistenced (uid 998) cannot open /dev/nvidia1 for reading and writing (mode 0660",
    );
    expect(c.fix).toContain("NVreg_DeviceFileMode=0666");
  });

  it("fails when the configured user does not exist, with the sysusers command", () => {
    put("/etc/passwd", "root:x:0:0:root:/root:/bin/bash\n");
    const c = check(doctor().checks, "account");
    expect(c.ok).toBe(false);
    expect(c.detail).toBe("user 'nvidia-persistenced' does not exist");
    expect(c.fix).toBe("systemd-sysusers gpu-persistd.conf (the package's sysusers file creates it)");
  });

  it("fails on a driver upgrade without a reboot: library and kernel module differ", () => {
    put("/proc/driver/nvidia/version", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  575.57.08  Release Build\n");
    const c = check(doctor().checks, "driver-version");
    expect(c.ok).toBe(false);
    expect(c.detail).toBe("libnvidia-ml is 580.159.04-sim, the kernel module 575.57.08");
    expect(c.fix).toContain("reboot");
  });

  it("reports NVML's own version-mismatch error from nvmlInit with the same fix", () => {
    healthyHost({ faults: [{ call: "nvmlInit_v2", return: 18 }] });
    const c = check(doctor().checks, "driver-version");
    expect(c.ok).toBe(false);
    expect(c.detail).toContain("NVML_ERROR_LIB_RM_VERSION_MISMATCH");
    expect(c.fix).toContain("reboot");
  });

  it("reports a hung driver call, and still exits", () => {
    healthyHost({ faults: [{ call: "nvmlDeviceGetPersistenceMode", gpu: 1, hangMs: 600_000 }] });
    const { code, checks } = doctor([], { GPU_PERSISTD_NVML_TIMEOUT_MS: "300" });
    expect(code).toBe(1);
    // GPU 0 answers; it is not held only because no daemon runs here.
    expect(check(checks, "gpu:0").detail).toContain("not held: gpu-persistd is not running");
    expect(check(checks, "gpu:1").detail).toContain("nvmlDeviceGetPersistenceMode did not return within");
    expect(check(checks, "nvml-hung").fix).toContain("dmesg");
  });

  it("fails when NVML cannot be loaded, naming the library", () => {
    rmSync(join(root, "etc/systemd/system/gpu-persistd.service.d"), { recursive: true });
    const c = check(doctor(["--nvml-library=/nonexistent/libnvidia-ml.so.1"]).checks, "nvml-library");
    expect(c.ok).toBe(false);
    expect(c.detail).toContain("/nonexistent/libnvidia-ml.so.1");
    // A wrong custom path gets that fix, and the detail does not repeat it.
    expect(c.fix).toBe(
      "nvmlLibrary is /nonexistent/libnvidia-ml.so.1: point it at the driver's libnvidia-ml.so.1, or remove the setting",
    );
    expect(c.detail).not.toContain("--nvml-library");
    const missing = check(doctor(["--nvml-library=libnvidia-ml.so.1"]).checks, "nvml-library");
    expect(missing.fix).toContain("libnvidia-ml1");
  });

  it("fails when the daemon is not running: no runtime directory, GPUs not held", () => {
    const { checks } = doctor();
    expect(check(checks, "runtime-dir").detail).toBe(
      "/run/nvidia-persistenced does not exist: gpu-persistd is not running",
    );
    expect(check(checks, "runtime-dir").fix).toContain("systemctl start gpu-persistd.service");
    expect(check(checks, "gpu:0").detail).toContain("not held: gpu-persistd is not running");
  });

  it("fails a GPU an RPC client released, with the command that holds it again", async () => {
    await startDaemon();
    const runtime = join(root, "run/nvidia-persistenced");
    expect(runBundle(["release", "1", `--runtime-dir=${runtime}`], env()).code).toBe(0);
    const c = check(doctor().checks, "gpu:1");
    expect(c.ok).toBe(false);
    expect(c.detail).toContain("not held");
    expect(c.fix).toBe("gpu-persistd hold 00000000:07:00.0");
    expect(runBundle(["hold", "00000000:07:00.0", `--runtime-dir=${runtime}`], env()).code).toBe(0);
    expect(check(doctor().checks, "gpu:1").ok).toBe(true);
  });

  it("judges from the daemon's record: persistence mode off passes, a --devices selector matching nothing fails", async () => {
    const runtime = `--runtime-dir=${join(root, "run/nvidia-persistenced")}`;
    const off = fixture.spawn([runtime, "--simulate=2", "--no-persistence-mode"], env());
    await off.waitReady();
    const { checks } = doctor();
    expect(check(checks, "gpu:1")).toMatchObject({
      ok: true,
      detail: "persistence disabled; persistence mode off (persistenceMode false), so not held",
    });
    await off.stop();
    const typo = fixture.spawn([runtime, "--simulate=2", "--devices=0,9"], env());
    await typo.waitReady();
    expect(check(doctor().checks, "daemon")).toMatchObject({
      ok: false,
      fix: "check --devices (config devices) against 'nvidia-smi -L'",
    });
    expect(check(doctor().checks, "daemon").detail).toContain("--devices names '9', which no GPU here has");
  });

  it("fails a metrics listener the unit forbids, with the drop-in that allows it", () => {
    put("/etc/gpu-persistd/config.json", JSON.stringify({ metricsListen: "127.0.0.1:9400" }));
    const c = check(doctor().checks, "metrics-listen");
    expect(c.ok).toBe(false);
    expect(c.detail).toBe(
      "metricsListen is 127.0.0.1:9400, but gpu-persistd.service has PrivateNetwork=yes (its own empty network)",
    );
    expect(c.fix).toContain("/usr/share/doc/gpu-persistd/examples/metrics-listen.conf");
    put(
      "/etc/systemd/system/gpu-persistd.service.d/metrics-listen.conf",
      readFileSync(join(ROOT, "systemd/metrics-listen.conf"), "utf8"),
    );
    expect(check(doctor().checks, "metrics-listen")).toMatchObject({ ok: true });
  });

  it("fails a metrics textfile directory that is missing, read-only to the unit, or not writable by its user", () => {
    const dir = "/var/lib/prometheus/node-exporter";
    put("/etc/gpu-persistd/config.json", JSON.stringify({ metricsTextfile: `${dir}/gpu-persistd.prom` }));
    expect(check(doctor().checks, "metrics-textfile").fix).toContain("apt-get install prometheus-node-exporter");
    mkdirSync(join(root, dir), { recursive: true });
    chmodSync(join(root, dir), 0o755);
    const readOnly = check(doctor().checks, "metrics-textfile");
    expect(readOnly.detail).toContain("makes /var/lib/prometheus/node-exporter read-only (ProtectSystem=strict");
    expect(readOnly.fix).toContain("examples/metrics-textfile.conf");
    put(
      "/etc/systemd/system/gpu-persistd.service.d/metrics-textfile.conf",
      readFileSync(join(ROOT, "systemd/metrics-textfile.conf"), "utf8"),
    );
    const notWritable = check(doctor().checks, "metrics-textfile");
    expect(notWritable.detail).toContain(
      "nvidia-persistenced cannot create files in /var/lib/prometheus/node-exporter",
    );
    expect(notWritable.fix).toBe(
      "chgrp nvidia-persistenced /var/lib/prometheus/node-exporter && chmod g+w /var/lib/prometheus/node-exporter",
    );
    chmodSync(join(root, dir), 0o777);
    expect(check(doctor().checks, "metrics-textfile")).toMatchObject({ ok: true });
  });

  it("fails an ExecStart whose options gpu-persistd does not take, naming the drop-in", () => {
    put(
      "/etc/systemd/system/gpu-persistd.service.d/simulate.conf",
      "[Service]\nExecStart=\nExecStart=/usr/bin/gpu-persistd --bogus\n",
    );
    const c = check(doctor().checks, "config");
    expect(c.ok).toBe(false);
    expect(c.detail).toContain(
      "ExecStart in /etc/systemd/system/gpu-persistd.service.d/simulate.conf: unrecognized option '--bogus'",
    );
    expect(c.fix).toBe("systemctl edit --full gpu-persistd.service, and fix ExecStart");
  });

  it("fails a configured group that does not exist", () => {
    const c = check(doctor(["--group=gpu-admins"]).checks, "account");
    expect(c).toMatchObject({
      ok: false,
      detail: "group 'gpu-admins' does not exist",
      fix: "groupadd --system gpu-admins",
    });
  });

  it("fails when /proc/driver/nvidia/version is missing though NVML answers", () => {
    rmSync(join(root, "proc/driver"), { recursive: true });
    const c = check(doctor().checks, "driver-version");
    expect(c.ok).toBe(false);
    expect(c.detail).toBe("NVML is driver 580.159.04-sim; /proc/driver/nvidia/version is missing or unreadable");
  });

  it("with --simulate on a host without the NVIDIA driver or the unit (the README's demo), fails only the host checks the README names", async () => {
    rmSync(root, { recursive: true });
    mkdirSync(join(root, "run"), { recursive: true });
    await startDaemon();
    const { code, checks } = doctor(["--simulate=2"]);
    expect(code).toBe(1);
    const failed = checks.filter((c) => !c.ok).map((c) => c.title);
    expect(failed).toEqual([
      "NVIDIA kernel module",
      "GPU device nodes",
      "gpu-persistd.service",
      "NVML and kernel driver",
    ]);
    const readme = readFileSync(join(ROOT, "README.md"), "utf8").replaceAll("\n", " ");
    const named = /only these fail: ([^(]*)\(/.exec(readme)?.[1];
    expect(named, "the README names the checks that fail on a host without the driver").toBeDefined();
    expect([...(named ?? "").matchAll(/`([^`]+)`/g)].map((m) => m[1])).toEqual(failed);
  });

  it("fails when NVML sees no GPU", () => {
    healthyHost({ gpus: 0 });
    put(
      "/etc/systemd/system/gpu-persistd.service.d/simulate.conf",
      "[Service]\nExecStart=\nExecStart=/usr/bin/gpu-persistd --simulate\n",
    );
    const c = check(doctor().checks, "gpus");
    expect(c).toMatchObject({ ok: false, detail: "NVML sees no GPU" });
  });

  it("fails an RPC socket that NVML clients who are not root cannot reach", async () => {
    await startDaemon();
    chmodSync(join(root, "run/nvidia-persistenced/socket"), 0o600);
    const c = check(doctor().checks, "runtime-dir");
    expect(c.ok).toBe(false);
    expect(c.detail).toContain("socket is 0600, not 0666");
    expect(c.fix).toContain("systemctl restart gpu-persistd.service");
  });

  it("reports a broken config file as a failed check, not a crash", () => {
    put("/etc/gpu-persistd/config.json", '{"devices": 7}');
    const { code, checks } = doctor();
    expect(code).toBe(1);
    const c = check(checks, "config");
    expect(c.detail).toContain("devices");
    expect(c.fix).toContain(`correct ${join(root, "etc/gpu-persistd/config.json")}`);
  });
});

describe("gpu-persistd doctor on coherent memory and UVM", () => {
  it("fails a GPU with coherent memory when auto_online_blocks is not online_movable, and says how to set it", () => {
    put("/proc/driver/nvidia/gpus/0009:01:00.0/numa_status", "online\n");
    put("/sys/devices/system/memory/auto_online_blocks", "offline\n");
    put("/proc/driver/nvidia/params", 'CoherentGPUMemoryMode: "numa"\n');
    const c = check(doctor().checks, "numa");
    expect(c.ok).toBe(false);
    expect(c.detail).toBe(
      "1 GPU(s) with coherent memory (0009:01:00.0); auto_online_blocks offline; CoherentGPUMemoryMode numa",
    );
    expect(c.fix).toContain("echo online_movable > /sys/devices/system/memory/auto_online_blocks");
    put("/sys/devices/system/memory/auto_online_blocks", "online_movable\n");
    expect(check(doctor().checks, "numa").ok).toBe(true);
  });

  it("reports CDMM and passes a host without coherent memory", () => {
    put("/proc/driver/nvidia/params", "CoherentGPUMemoryMode: driver\n");
    const c = check(doctor().checks, "numa");
    expect(c).toMatchObject({
      ok: true,
      detail: "no GPU with coherent memory; CoherentGPUMemoryMode driver (CDMM: no NUMA node)",
    });
  });

  it("shows each GPU's UVM registration, and fails one the driver refused", async () => {
    const scratch = fixture.scratch;
    scratch.writeSimConfig({
      statePath: join(scratch.dir, "sim-state"),
      faults: [{ call: "UVM_REGISTER_GPU", gpu: 1, nvStatus: 0x56 }],
    });
    const daemon = fixture.spawn(
      [`--runtime-dir=${join(root, "run/nvidia-persistenced")}`, "--simulate=2", "--uvm-persistence-mode"],
      env(),
    );
    await daemon.waitReady();
    const { checks } = doctor();
    expect(check(checks, "gpu:0").detail).toMatch(/held by gpu-persistd \(PID \d+\); UVM registration held$/);
    const failed = check(checks, "gpu:1");
    expect(failed.ok).toBe(false);
    expect(failed.detail).toContain("UVM registration failed: UVM_REGISTER_GPU failed: NV_ERR_NOT_SUPPORTED");
    expect(failed.fix).toContain("modprobe nvidia-uvm");
  });
});
