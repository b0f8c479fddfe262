// sd_notify and journald's native protocol, checked the way systemd checks them: the
// receiver reads each datagram's sender from SCM_CREDENTIALS.
import { chmodSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { DaemonFixture, type DaemonProcess, type SimConfig, statusJson } from "../helpers/daemon.js";
import { type Datagram, DatagramReceiver } from "../helpers/datagram-receiver.js";

const fixture = new DaemonFixture();
const receivers: DatagramReceiver[] = [];

afterEach(() => {
  for (const r of receivers.splice(0)) r.close();
});

async function receiver(address: string): Promise<DatagramReceiver> {
  const r = new DatagramReceiver(address);
  receivers.push(r);
  await r.ready();
  return r;
}

async function startNotified(
  args: string[],
  sim: SimConfig = {},
  env: NodeJS.ProcessEnv = {},
  abstract = false,
): Promise<{ d: DaemonProcess; notify: DatagramReceiver }> {
  const scratch = fixture.prepare(sim);
  // A user the daemon drops to must reach its runtime directory, as it does under /run.
  chmodSync(scratch.dir, 0o755);
  const address = abstract ? `@gpu-persistd-test-${process.pid}-${Date.now()}` : join(scratch.dir, "notify");
  const notify = await receiver(address);
  return { d: fixture.spawn(args, { NOTIFY_SOCKET: address, ...env }), notify };
}

const isReady = (m: Datagram) => m.fields.READY === "1";
/** The NVML call each health round makes on a held GPU. */
const HEALTH_CALL = "nvmlDeviceGetFieldValues";

describe("sd_notify", () => {
  it("sends READY=1 with MAINPID and STATUS from the main PID, on a path socket", async () => {
    const { d, notify } = await startNotified(["--simulate=8"]);
    const ready = await notify.waitFor(isReady);
    expect(ready.pid).toBe(d.pid);
    expect(ready.fields.MAINPID).toBe(String(d.pid));
    expect(ready.fields.STATUS).toBe("8/8 GPUs persistent");
    // READY comes only once every GPU is held: status already answers.
    expect(statusJson(fixture.scratch.runtimeDir).devices.every((g) => g.held)).toBe(true);
  });

  it("works on an abstract socket", async () => {
    const { d, notify } = await startNotified(["--simulate=2"], {}, {}, true);
    const ready = await notify.waitFor(isReady);
    expect(ready.pid).toBe(d.pid);
    expect(ready.fields.STATUS).toBe("2/2 GPUs persistent");
  });

  it("names the GPU that could not be identified and NVML's error in STATUS", async () => {
    const { notify } = await startNotified(["--simulate=4"], {
      faults: [{ call: "nvmlDeviceGetUUID", gpu: 2, return: 4 }],
    });
    const ready = await notify.waitFor(isReady);
    // NVML could not tell its PCI bus id: the index names it.
    expect(ready.fields.STATUS).toBe("3/4 GPUs persistent; GPU 2: NVML_ERROR_NO_PERMISSION");
  });

  it("sends READY from the main PID after dropping to another user", async () => {
    const { d, notify } = await startNotified(["--simulate=2", "--user=nobody"]);
    const ready = await notify.waitFor(isReady);
    expect(ready.pid).toBe(d.pid);
    expect(ready.uid).toBe(65534);
    expect(statusJson(fixture.scratch.runtimeDir).uid).toBe(65534);
    expect(d.output).toContain("now running as user nobody (65534)");
  });

  it("extends the start timeout while a slow bring-up runs", async () => {
    const { notify } = await startNotified(["--simulate=2"], { attachDelayMs: 6000 });
    const extend = await notify.waitFor((m) => m.fields.EXTEND_TIMEOUT_USEC !== undefined);
    expect(Number(extend.fields.EXTEND_TIMEOUT_USEC)).toBeGreaterThan(5_000_000);
    expect(extend.fields.STATUS).toBe("bringing GPUs up: 0/2 settled");
    await notify.waitFor(isReady);
  });

  it("sends RELOADING=1 with MONOTONIC_USEC, then READY=1, around SIGHUP", async () => {
    const { d, notify } = await startNotified(["--simulate=2"]);
    await notify.waitFor(isReady);
    const before = notify.received.length;
    d.child.kill("SIGHUP");
    const reloading = await notify.waitFor((m) => m.fields.RELOADING === "1");
    expect(Number(reloading.fields.MONOTONIC_USEC)).toBeGreaterThan(0);
    const after = notify.received.slice(before);
    await notify.waitFor((m) => isReady(m) && notify.received.indexOf(m) > notify.received.indexOf(reloading));
    expect(after[0]?.fields.RELOADING).toBe("1");
  });

  it("sends STOPPING=1 at the start of shutdown", async () => {
    const { d, notify } = await startNotified(["--simulate=1"]);
    await notify.waitFor(isReady);
    await d.stop();
    const stopping = await notify.waitFor((m) => m.fields.STOPPING === "1");
    expect(stopping.pid).toBe(d.pid);
  });

  it("SIGTERM empties the fd store (FDSTOREREMOVE for each name it stored); SIGUSR2 stops it leaving the store alone", async () => {
    // Each GPU's node, and the state record (which GPUs a client released).
    const names = ["gpu-00000000-06-00.0", "gpu-00000000-07-00.0", "state"];
    const named = (messages: Datagram[], key: "FDSTORE" | "FDSTOREREMOVE") =>
      messages.filter((m) => m.fields[key] === "1").map((m) => m.fields.FDNAME);
    for (const [signal, removed] of [
      ["SIGTERM", names],
      ["SIGUSR2", []],
    ] as const) {
      const { d, notify } = await startNotified(["--simulate=2"]);
      await notify.waitFor(isReady);
      expect(named(notify.received, "FDSTORE").sort()).toEqual(names);
      expect((await d.stop(signal)).code).toBe(0);
      const stopping = await notify.waitFor((m) => m.fields.STOPPING === "1");
      const afterwards = notify.received.slice(notify.received.indexOf(stopping));
      expect(named(afterwards, "FDSTOREREMOVE").sort(), signal).toEqual(removed);
    }
  });

  it("sends nothing, and reports no error, without NOTIFY_SOCKET", async () => {
    const daemon = fixture.start(["--simulate=1"], {}, { WATCHDOG_USEC: "200000" });
    await daemon.waitReady();
    expect(daemon.output).not.toContain("sd_notify");
    expect(daemon.output).not.toContain("watchdog");
  });

  it("reports a notify socket that is not there", async () => {
    const daemon = fixture.start(["--simulate=1"], {}, { NOTIFY_SOCKET: "/nonexistent/notify" });
    await daemon.waitReady();
    await daemon.waitFor("sd_notify: sendto failed: ENOENT");
  });
});

describe("watchdog", () => {
  it("pings every WATCHDOG_USEC/2 while NVML answers", async () => {
    const { d, notify } = await startNotified(["--simulate=2"], {}, { WATCHDOG_USEC: "400000" });
    await notify.waitFor(isReady);
    await new Promise((r) => setTimeout(r, 1200));
    const pings = notify.received.filter((m) => m.fields.WATCHDOG === "1");
    expect(pings.length).toBeGreaterThanOrEqual(3);
    expect(pings.every((m) => m.pid === d.pid)).toBe(true);
  });

  it("stops pinging when an NVML health check hangs, and says why once", async () => {
    const { d, notify } = await startNotified(
      ["--simulate=2"],
      { faults: [{ call: HEALTH_CALL, gpu: 1, hangMs: 30_000, afterMs: 1000 }] },
      { WATCHDOG_USEC: "600000", GPU_PERSISTD_NVML_TIMEOUT_MS: "150" },
    );
    await notify.waitFor(isReady);
    await d.waitFor("withholding watchdog pings");
    // Let pings sent before the decision arrive before counting.
    await new Promise((r) => setTimeout(r, 300));
    const stoppedAt = notify.received.length;
    await new Promise((r) => setTimeout(r, 1200));
    expect(notify.received.slice(stoppedAt).filter((m) => m.fields.WATCHDOG === "1")).toEqual([]);
    expect(d.output.split(`health check: ${HEALTH_CALL} did not return`), d.output).toHaveLength(2);
    expect(d.output).toContain("GPU 1 00000000:07:00.0: health check");
  });

  it("ignores WATCHDOG_USEC meant for another PID", async () => {
    const { notify } = await startNotified(["--simulate=1"], {}, { WATCHDOG_USEC: "200000", WATCHDOG_PID: "1" });
    await notify.waitFor(isReady);
    await new Promise((r) => setTimeout(r, 500));
    expect(notify.received.some((m) => m.fields.WATCHDOG === "1")).toBe(false);
  });

  it("keeps pinging when a GPU is lost, releasing only that GPU", async () => {
    const { d, notify } = await startNotified(
      ["--simulate=3"],
      { faults: [{ call: HEALTH_CALL, gpu: 1, return: 15, afterMs: 500 }] },
      { WATCHDOG_USEC: "400000", GPU_PERSISTD_HEALTH_INTERVAL_MS: "50" },
    );
    await notify.waitFor(isReady);
    const lost = await notify.waitFor((m) => (m.fields.STATUS ?? "").includes("lost"));
    expect(lost.fields.STATUS).toBe("2/3 GPUs persistent; 00000000:07:00.0: lost");
    const after = notify.received.length;
    await new Promise((r) => setTimeout(r, 800));
    expect(notify.received.slice(after).some((m) => m.fields.WATCHDOG === "1")).toBe(true);
    const devices = statusJson(fixture.scratch.runtimeDir).devices;
    expect(devices.map((g) => g.held)).toEqual([true, false, true]);
    expect(devices[1]).toMatchObject({ lost: true });
    expect(devices[1]?.error).toContain("NVML_ERROR_GPU_IS_LOST");
    expect(d.output).toContain("GPU 1 00000000:07:00.0: GPU is lost");
  });
});

describe("journald native protocol", () => {
  it("sends each entry with its priority and the GPU fields", async () => {
    // GPU 0 cannot be identified (an error); GPU 1's legacy flag cannot be read (a warning, still held).
    const scratch = fixture.prepare({
      faults: [
        { call: "nvmlDeviceGetUUID", gpu: 0, return: 4 },
        { call: "nvmlDeviceGetPersistenceMode", gpu: 1, return: 4 },
      ],
    });
    const journal = await receiver(join(scratch.dir, "journal"));
    const daemon = fixture.spawn(["--simulate=2", "--log-format=journal"], {
      GPU_PERSISTD_JOURNAL_SOCKET: journal.address,
    });
    const ready = await journal.waitFor((m) => (m.fields.MESSAGE ?? "").startsWith("ready:"));
    expect(ready.pid).toBe(daemon.pid);
    expect(ready.fields).toMatchObject({ PRIORITY: "6", SYSLOG_IDENTIFIER: "gpu-persistd", HELD: "1" });
    const failed = await journal.waitFor((m) => m.fields.GPU_INDEX === "0" && m.fields.PRIORITY === "3");
    expect(failed.fields.MESSAGE).toContain("cannot identify GPU 0: NVML_ERROR_NO_PERMISSION");
    const warned = await journal.waitFor((m) => m.fields.GPU_INDEX === "1" && m.fields.PRIORITY === "4");
    expect(warned.fields.GPU_PCI_BUS_ID).toBe("00000000:07:00.0");
    expect(warned.fields.GPU_UUID).toMatch(/^GPU-/);
    expect(warned.fields.MESSAGE).toContain("cannot read the legacy persistence flag: NVML_ERROR_NO_PERMISSION");
    // Nothing went to stdout: every entry reached the journal socket.
    expect(daemon.output).toBe("");
  });

  it("falls back to priority-prefixed stdout lines, saying so, when journald is absent", async () => {
    const daemon = fixture.start(
      ["--simulate=1", "--log-format=journal"],
      {},
      { GPU_PERSISTD_JOURNAL_SOCKET: "/nonexistent/journal" },
    );
    await daemon.waitFor("<6>ready: 1/1 GPUs held");
    expect(daemon.output).toMatch(/^<4>journald's native socket refused an entry \(sendto failed: ENOENT\)/);
  });
});
