import { PoolCallTimeoutError } from "./libuv-pool.js";
import { nvmlReturnName } from "./nvml-return-codes.js";

/** An NVML call returned something other than NVML_SUCCESS. */
export class NvmlError extends Error {
  readonly code: number;
  readonly codeName: string;
  /** NVML's own text for the code, from nvmlErrorString. */
  readonly nvmlMessage: string;
  readonly call: string;

  constructor(call: string, code: number, nvmlMessage: string) {
    const codeName = nvmlReturnName(code);
    super(`${call} failed: ${codeName} (${nvmlMessage})`);
    this.name = "NvmlError";
    this.call = call;
    this.code = code;
    this.codeName = codeName;
    this.nvmlMessage = nvmlMessage;
  }
}

/** An NVML call did not return within its time limit; its thread may still be blocked. */
export class NvmlTimeoutError extends PoolCallTimeoutError {
  constructor(call: string, timeoutMs: number, returned: Promise<void>) {
    super(call, timeoutMs, returned);
    this.name = "NvmlTimeoutError";
  }
}

/** The NVML library could not be loaded, or lacks a function the daemon needs. */
export class NvmlLoadError extends Error {
  readonly path: string;
  constructor(message: string, path: string) {
    super(message);
    this.name = "NvmlLoadError";
    this.path = path;
  }
}
