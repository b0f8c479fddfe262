/** The daemon's systemd unit, as the package installs it and doctor and error messages name it. */
export const UNIT_NAME = "gpu-persistd.service";
