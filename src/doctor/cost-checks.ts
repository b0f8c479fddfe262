// What persistence costs and saves on this node, and what the driver asks of a GPU, from the
// daemon's status: the power the held GPUs draw now (their idle draw while no job runs), what
// their first start cost the daemon, and any recovery action pending.
import { recoveryStep } from "../health/recovery-action.js";
import { type DaemonStatus, heldDrawWatts } from "../status/daemon-status.js";
import { type Check, fail, pass } from "./check.js";

const HOURS_A_YEAR = 8766;

/** A note, never a failure: the price of holding the GPUs, and the start-up it saves. */
export function persistenceCostCheck(daemon: DaemonStatus | null): Check {
  const title = "what persistence costs here";
  if (!daemon) return pass("persistence-cost", title, "no daemon answers: nothing held, nothing drawn for it");
  const held = daemon.devices.filter((d) => d.held);
  const draw = heldDrawWatts(daemon.devices);
  const paid = held.filter((d) => d.initialisation === "paid");
  const warm = held.filter((d) => d.initialisation === "already-initialised").length;
  const saved = paid.length
    ? `; the first open cost ${paid.map((d) => `GPU ${d.index} ${d.initSeconds?.toFixed(2)} s`).join(", ")}: what each client start would pay without it`
    : "";
  const already = warm ? `; ${warm} GPU(s) were already initialised at the daemon's first open` : "";
  const power =
    draw === null
      ? `${held.length} GPU(s) held; no power reading for them (none yet: the first health round reads it; or NVML does not report it)`
      : `${held.length} held GPU(s) draw ${draw.toFixed(1)} W now (their idle draw while no job runs: about ${Math.round((draw * HOURS_A_YEAR) / 1000)} kWh a year)`;
  return pass("persistence-cost", title, `${power}${saved}${already}`);
}

/** Fails while the driver reports a recovery action other than none for a GPU. */
export function recoveryCheck(daemon: DaemonStatus | null): Check {
  const title = "NVML recovery actions";
  const pending = (daemon?.devices ?? []).flatMap((d) =>
    d.recoveryAction !== null && d.recoveryAction !== "none" ? [{ ...d, recoveryAction: d.recoveryAction }] : [],
  );
  if (pending.length === 0) {
    const reported = (daemon?.devices ?? []).some((d) => d.recoveryAction !== null);
    return pass("recovery", title, reported ? "none pending" : "not reported by this driver (or no daemon answers)");
  }
  return fail(
    "recovery",
    title,
    pending.map((d) => `GPU ${d.index} ${d.pciBusId}: ${d.recoveryAction}`).join("; "),
    pending.map((d) => `GPU ${d.index}: ${recoveryStep(d.recoveryAction, d.index)}`).join("; "),
  );
}
