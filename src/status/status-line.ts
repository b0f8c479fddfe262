// The systemd STATUS= text, from the GPUs' states alone:
// `7/8 GPUs persistent; 00000000:1B:00.0: NVML_ERROR_NO_PERMISSION`.
import type { GpuStatus } from "./daemon-status.js";

/** Failures named in the line; the rest are counted. */
const FAILURES_SHOWN = 3;

export function statusLine(devices: readonly GpuStatus[], persistenceWanted: boolean): string {
  const selected = devices.filter((g) => g.selected);
  const held = selected.filter((g) => g.held).length;
  const failures = selected.filter(
    (g) =>
      g.state === "released" ||
      g.state === "lost" ||
      ((g.state === "failed" || g.state === "unidentified") && persistenceWanted),
  );
  const why = (g: GpuStatus): string =>
    g.state === "released" || g.state === "lost"
      ? g.state
      : (g.errorCode ?? (g.error ?? g.state).split(":")[0] ?? g.state);
  const shown = failures.slice(0, FAILURES_SHOWN).map((g) => `${g.pciBusId || `GPU ${g.index}`}: ${why(g)}`);
  if (failures.length > FAILURES_SHOWN) shown.push(`${failures.length - FAILURES_SHOWN} more`);
  const head = `${held}/${selected.length} GPUs persistent${persistenceWanted ? "" : " (started with --no-persistence-mode)"}`;
  return [head, ...shown].join("; ");
}
