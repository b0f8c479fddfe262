import { requestStatus } from "../control/control-client.js";
import { legacyFlagNote } from "../fixes.js";
import { recoveryStep } from "../health/recovery-action.js";
import { type DaemonStatus, type GpuStatus, heldDrawWatts } from "../status/daemon-status.js";
import { missingGpus } from "../status/health-verdict.js";

/** What the HELD column says: the state in a word an admin reads at a glance. */
function heldText(d: GpuStatus): string {
  if (d.held) return "yes";
  if (!d.selected) return "-";
  if (!d.wanted && d.state !== "released") return "off";
  return d.state === "released" ? "released" : d.state === "lost" ? "LOST" : "NO";
}

/** Who released a GPU and since when, as a line; "" when it is not released. */
function releasedText(d: GpuStatus): string {
  const by = d.releasedBy;
  if (!by) return "";
  const who =
    by.kind === "lease"
      ? `'gpu-persistd release -- COMMAND' (PID ${by.pid})`
      : by.uid === null
        ? "a client"
        : `uid ${by.uid}`;
  return `released by ${who} since ${by.since}`;
}

/** Joules as a person reads them: J, kJ, then kWh (what the power bill counts). */
function energyText(joules: number): string {
  if (joules < 1e3) return `${joules.toFixed(0)} J`;
  if (joules < 3.6e6) return `${(joules / 1e3).toFixed(1)} kJ`;
  return `${(joules / 3.6e6).toFixed(2)} kWh`;
}

/** What holding the GPU costs now and what it saved, where NVML tells: one line, or "". */
function costText(d: GpuStatus): string {
  const parts = [
    d.powerWatts === null ? "" : `${d.powerWatts.toFixed(1)} W`,
    d.pstate === null ? "" : `P${d.pstate}`,
    d.energyJoules === null ? "" : `${energyText(d.energyJoules)} since held`,
    d.initialisation === "paid" ? `initialisation paid at first open: ${d.initSeconds?.toFixed(2)} s` : "",
    d.initialisation === "already-initialised" ? "already initialised at first open" : "",
  ].filter(Boolean);
  return parts.join(", ");
}

function table(status: DaemonStatus): string {
  const selected = status.devices.filter((d) => d.selected);
  const held = selected.filter((d) => d.held).length;
  const draw = heldDrawWatts(status.devices);
  const flags = [status.simulated ? "simulated GPUs" : "", status.dryRun ? "dry run" : ""].filter(Boolean);
  const rows = [
    `gpu-persistd ${status.version}, PID ${status.pid}: ${held}/${selected.length} GPUs held${flags.length ? ` (${flags.join(", ")})` : ""}`,
    ...(status.nvmlDegraded ? [`degraded: ${status.nvmlDegraded.message}`] : []),
    ...(status.persistenceMode ? [] : ["persistence mode off (as configured): no GPU is held"]),
    ...missingGpus(status),
    ...(status.lastReload?.refused
      ? [`last reload refused (${status.lastReload.at}), running configuration kept: ${status.lastReload.refused}`]
      : []),
    ...(draw === null ? [] : [`held GPUs draw ${draw.toFixed(1)} W now`]),
    "",
    ["IDX", "PCI BUS ID".padEnd(16), "MINOR", "PERSISTENCE", "HELD    ", "NAME / UUID"].join("  "),
  ];
  for (const d of status.devices) {
    rows.push(
      [
        String(d.index).padEnd(3),
        (d.pciBusId || "?").padEnd(16),
        String(d.minor).padEnd(5),
        d.persistence.padEnd(11),
        heldText(d).padEnd(8),
        `${d.name || "?"}  ${d.uuid || "?"}`,
      ].join("  "),
    );
    // Why, on a line of its own: a lost GPU says lost first, then what NVML said.
    const why =
      d.state === "lost"
        ? `lost${d.since ? ` at ${d.since}` : ""}: ${d.error}`
        : d.error
          ? `${d.state}: ${d.error}`
          : releasedText(d);
    if (why) rows.push(`     ${why}`);
    if (d.fix && (d.error || d.state === "lost")) rows.push(`     to fix: ${d.fix}`);
    if (d.uvm === "failed") rows.push(`     UVM registration failed: ${d.uvmError}`);
    if (d.legacyFlag === "enabled") rows.push(`     ${legacyFlagNote(d.index)}`);
    if (d.recoveryAction !== null && d.recoveryAction !== "none") {
      rows.push(`     RECOVERY ACTION ${d.recoveryAction}: ${recoveryStep(d.recoveryAction, d.index)}`);
    }
    const cost = costText(d);
    if (cost) rows.push(`     ${cost}`);
  }
  return `${rows.join("\n")}\n`;
}

/** `gpu-persistd status [--json]`: what the running daemon holds. */
export async function statusCommand(runtimeDir: string, json: boolean): Promise<void> {
  const reply = await requestStatus(runtimeDir);
  process.stdout.write(json ? `${JSON.stringify(reply)}\n` : table(reply));
}
