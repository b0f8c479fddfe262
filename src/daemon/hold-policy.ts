// What the configuration asks of the GPUs, as pure functions: which GPUs are wanted held,
// how often health rounds run, and what --devices names that no GPU has. Start-up and
// reload both apply them; they read nothing but their arguments.
import type { Gpu } from "../gpu/gpu-model.js";
import { configWants } from "../gpu/intents.js";
import { type GpuIdentity, type GpuSelector, selectorKindName, selectorMatches } from "../selection/gpu-selector.js";

/** The shortest health interval, in ms: a misconfigured watchdog must not spin the loop. */
const MIN_HEALTH_INTERVAL_MS = 10;

/** Whether the configuration wants `gpu` held: persistence on, and the GPU selected. */
export function wanted(config: { persistenceMode: boolean }, gpu: Pick<Gpu, "selected">): boolean {
  return configWants({ persistenceMode: config.persistenceMode, selected: gpu.selected });
}

/**
 * The health interval in force, in ms: the configured one, at most half systemd's watchdog
 * interval (a ping follows each round), never below 10 ms.
 */
export function healthIntervalMs(configuredMs: number, watchdogUsec: number | null): number {
  const ms = watchdogUsec ? Math.min(configuredMs, watchdogUsec / 1000 / 2) : configuredMs;
  return Math.max(MIN_HEALTH_INTERVAL_MS, Math.round(ms));
}

/** The message for each selector that matched no GPU. */
export function unmatchedMessages(unmatched: readonly GpuSelector[], gpuCount: number): string[] {
  return unmatched.map(
    (s) => `--devices names '${s.text}', but no GPU has that ${selectorKindName(s)} (${gpuCount} GPUs found)`,
  );
}

/** The selectors that match none of `gpus` (a reload naming one is refused whole). */
export function unmatchedSelectors(selectors: readonly GpuSelector[], gpus: readonly GpuIdentity[]): GpuSelector[] {
  return selectors.filter((s) => !gpus.some((g) => selectorMatches(s, g)));
}
