// The daemon's version, for --version, status, doctor and the control client's handshake.
declare const GPU_PERSISTD_VERSION: string | undefined;

/** Replaced by the bundler with package.json's version. */
export const VERSION = typeof GPU_PERSISTD_VERSION === "string" ? GPU_PERSISTD_VERSION : "0.0.0-dev";
