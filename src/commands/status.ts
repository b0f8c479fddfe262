import { requestStatus } from "../control/control-client.js";
import type { DaemonStatus } from "../status/daemon-status.js";

function table(status: DaemonStatus): string {
  const selected = status.devices.filter((d) => d.selected);
  const held = selected.filter((d) => d.held).length;
  const flags = [status.simulated ? "simulated GPUs" : "", status.dryRun ? "dry run" : ""].filter(Boolean);
  const rows = [
    `gpu-persistd ${status.version}, PID ${status.pid}: ${held}/${selected.length} GPUs held${flags.length ? ` (${flags.join(", ")})` : ""}`,
    "",
    ["IDX", "PCI BUS ID".padEnd(16), "MINOR", "PERSISTENCE", "HELD", "NAME / UUID / ERROR"].join("  "),
  ];
  for (const d of status.devices) {
    const held = d.held ? "yes" : d.selected ? "NO" : "-";
    rows.push(
      [
        String(d.index).padEnd(3),
        d.pciBusId.padEnd(16),
        String(d.minor).padEnd(5),
        d.persistence.padEnd(11),
        held.padEnd(4),
        d.error ? `ERROR ${d.error}` : `${d.name}  ${d.uuid}`,
      ].join("  "),
    );
  }
  return `${rows.join("\n")}\n`;
}

/** `gpu-persistd status [--json]`: what the running daemon holds. */
export async function statusCommand(runtimeDir: string, json: boolean): Promise<void> {
  const reply = await requestStatus(runtimeDir);
  process.stdout.write(json ? `${JSON.stringify(reply)}\n` : table(reply));
}
