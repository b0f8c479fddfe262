import { NvmlError, NvmlTimeoutError } from "../../native-bindings/nvml-errors.js";

/** One line for status and logs; NVML failures lead with NVML's error name. */
export function describeError(err: unknown): string {
  if (err instanceof NvmlError) return `${err.codeName}: ${err.nvmlMessage} (${err.call})`;
  if (err instanceof NvmlTimeoutError) return `NVML_CALL_TIMEOUT: ${err.message}`;
  return err instanceof Error ? err.message : String(err);
}
