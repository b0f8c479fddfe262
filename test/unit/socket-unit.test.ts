// Started as the socket unit starts it (both sockets bound before the daemon runs, handed
// over), with a simulated NVML that routes persistence calls to the RPC socket as real NVML
// does: nothing of ours waits on our own socket, a client waiting meanwhile is answered, a
// failed start lets waiting clients go, and a release truly lets go (no legacy flag of ours).
import { spawn } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";
import { rpcBackend } from "../../src/daemon/rpc-adapter.js";
import { daemonStatus } from "../../src/daemon/status-snapshot.js";
import { NvPdStatus } from "../../src/rpc/persistence-program.js";
import { gated, gpuState, InProcessFixture, openGate, ROOT } from "../helpers/in-process.js";

const CLIENT = fileURLToPath(new URL("../helpers/rpc-get-client.mjs", import.meta.url));
const fixture = new InProcessFixture();
const pci = (bus: number) => ({ domain: 0, bus, device: 0, function: 0 });

/**
 * A Get from another process (ours is closed unanswered, as the daemon's own): resolves once it
 * is connected, with its outcome to come, "status S mode M" or "closed".
 */
async function getWaiting(runtimeDir: string): Promise<{ outcome: Promise<string> }> {
  const child = spawn(process.execPath, [CLIENT, join(runtimeDir, "socket")], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  const line = (n: number) =>
    new Promise<string>((resolve) => {
      const check = (): void => {
        const lines = out.split("\n");
        if (lines.length > n) resolve(lines[n - 1] ?? "");
        else
          child.stdout.once("data", (chunk: Buffer) => {
            out += chunk;
            check();
          });
      };
      check();
    });
  expect(await line(1)).toBe("connected");
  // Wrapped: an async function returning the promise itself would wait for it.
  return { outcome: line(2) };
}

/** The daemon (not started) with the socket unit's sockets bound in its runtime directory. */
function asSocketUnit(sim: Parameters<InProcessFixture["daemon"]>[0], config = {}) {
  return fixture.daemon(sim, config, { attach: true, socketUnit: true });
}

describe("started as the socket unit starts it", () => {
  it("serves before it asks: every GPU held, READY, its own persistence reads answered by the kernel, a waiting client answered", async () => {
    const d = asSocketUnit({ gpus: [{ persistence: 0 }, { persistence: 0 }] });
    // An NVML client asks before the daemon runs: it waits in the socket's backlog.
    const waiting = await getWaiting(d.scratch.runtimeDir);
    await d.daemon.run();
    expect(d.registry.list().map((g) => g.state)).toEqual(["held", "held"]);
    expect(d.notifier.with("READY")).toHaveLength(1);
    // Answered from the registry as it stood when the daemon took the socket over.
    expect(await waiting.outcome).toMatch(/^status 0 mode [01]$/);
    // Each read of ours reached our socket only once it was served, and came back unanswered.
    const ours = d.scratch.calls().filter((c) => c.pid === process.pid && c.call.startsWith("persistenceSocket:"));
    expect(ours.map((c) => c.call)).toEqual(["persistenceSocket:closed", "persistenceSocket:closed"]);
    expect(d.scratch.callCount("nvmlDeviceSetPersistenceMode")).toBe(0);
  });

  it("a release truly lets go: no fd, no NVML attach, no flag of ours; a stop lets every GPU go", async () => {
    const d = asSocketUnit({ gpus: [{ persistence: 0 }, { persistence: 0 }] });
    await d.daemon.run();
    expect([gpuState(0), gpuState(1)]).toEqual(["held", "held"]);
    expect(await rpcBackend(d.context).setMode(pci(0x06), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect([gpuState(0), gpuState(1)]).toEqual(["torn down", "held"]);
    const [released] = daemonStatus(d.context).devices;
    expect(released).toMatchObject({ state: "released", persistence: "disabled", legacyFlag: "disabled" });
    expect(await d.stop()).toBe(0);
    expect([gpuState(0), gpuState(1)]).toEqual(["torn down", "torn down"]);
  });

  it("an admin's legacy flag stays: the released GPU stays initialised, and status says why with the fix", async () => {
    const d = asSocketUnit({ gpus: [{ persistence: 0 }, { persistence: 1 }] });
    await d.daemon.run();
    expect(await rpcBackend(d.context).setMode(pci(0x07), false, false, ROOT)).toBe(NvPdStatus.SUCCESS);
    expect(gpuState(1)).toBe("initialised");
    // RPC Get answers 0, NVML combines it with the flag: status says what NVML says.
    expect(rpcBackend(d.context).mode(pci(0x07))).toBe(false);
    expect(daemonStatus(d.context).devices[1]).toMatchObject({
      state: "released",
      persistence: "enabled",
      legacyFlag: "enabled",
    });
    expect(d.messages().join("\n")).toContain("nvidia-smi -i 1 -pm 0");
    await d.stop();
    expect(gpuState(1)).toBe("initialised");
  });

  it("a client's release during bring-up waits for the holds to settle, then lets go: nothing races the bring-up", async () => {
    const d = asSocketUnit({ gpus: 2, faults: [{ call: "nvmlDeviceGetPersistenceMode", gate: true }] });
    const run = d.daemon.run();
    // Both legacy-flag reads are inside NVML: the sockets are served, the holds not settled.
    await gated(2);
    let answered = false;
    const release = rpcBackend(d.context)
      .setMode(pci(0x06), false, false, ROOT)
      .then((status) => {
        answered = true;
        return status;
      });
    await new Promise((r) => setImmediate(r));
    expect(answered).toBe(false);
    openGate();
    await run;
    expect(await release).toBe(NvPdStatus.SUCCESS);
    expect(d.registry.list().map((g) => g.state)).toEqual(["released", "held"]);
    expect(gpuState(0)).toBe("torn down");
  });

  it("a start that fails lets the clients waiting in the backlog go at once, unanswered", async () => {
    const d = asSocketUnit({ gpus: 2, faults: [{ call: "nvmlInit_v2", return: 999 }] }, { driverWaitMs: 0 });
    const waiting = await getWaiting(d.scratch.runtimeDir);
    await expect(d.daemon.run()).rejects.toMatchObject({ code: 69 });
    expect(await waiting.outcome).toBe("closed");
    expect(d.messages().join("\n")).toContain("closed 1 connections that waited for this start");
  });
});
