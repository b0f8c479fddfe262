// Every fix text that the daemon and doctor both give, in one place, so the two never
// disagree on how to repair the same cause.

export const fixes = {
  /** The nvidia kernel module is not loaded (NVML_ERROR_DRIVER_NOT_LOADED, no /dev/nvidiactl). */
  loadDriver:
    "load the NVIDIA kernel module (modprobe nvidia; dmesg | grep -i nvrm says why it failed) and check that /dev/nvidiactl exists",
  /** /dev/nvidiaN is missing though the driver may be loaded. */
  deviceNodesMissing:
    "load the driver (modprobe nvidia); the nodes come from the driver's udev rule or nvidia-modprobe (nvidia-modprobe -c 0)",
  /** The daemon's user may not open a device node. */
  deviceNodeAccess: "run as root (as the systemd unit does), or give the daemon's user the device's group",
  /** NVML answered NVML_ERROR_NO_PERMISSION. */
  runAsRoot: "run as root (as the systemd unit does)",
  /** NVML lists no GPU. */
  noGpus: "check that the NVIDIA driver sees the GPUs (nvidia-smi -L; dmesg | grep -i nvrm)",
  /** The driver's NVML library cannot be loaded. */
  installNvml:
    "install the NVIDIA driver's NVML (Debian: apt-get install libnvidia-ml1; the .run installer ships it), " +
    "or point --nvml-library (config nvmlLibrary, GPU_PERSISTD_NVML_LIBRARY) at the driver's libnvidia-ml.so.1",
  /** UVM_INITIALIZE or UVM_REGISTER_GPU failed, or /dev/nvidia-uvm is missing. */
  uvmRegistration:
    "modprobe nvidia-uvm and check that /dev/nvidia-uvm exists; dmesg | grep -i nvidia-uvm says why the driver refused",
  /** NVML's libraries and the loaded kernel module differ (an upgrade without a reboot). */
  versionMismatch:
    "reboot; or stop gpu-persistd for good (systemctl stop gpu-persistd.socket gpu-persistd) and every other GPU user, " +
    "then reload the nvidia modules (modprobe -r nvidia_uvm nvidia_drm nvidia_modeset nvidia && modprobe nvidia) and start it again",
  /**
   * The driver's legacy persistence flag is on (set before gpu-persistd started; it never sets
   * it). While the daemon's socket exists NVML routes `nvidia-smi -pm 0` to the daemon, so the
   * flag can only be cleared with the daemon and its socket stopped (every GPU let go meanwhile).
   */
  legacyFlag: (index: number): string =>
    `systemctl stop gpu-persistd.socket gpu-persistd && nvidia-smi -i ${index} -pm 0 && systemctl start gpu-persistd.socket gpu-persistd`,
  /** A GPU fell off the bus (Xid 79, NVML_ERROR_GPU_IS_LOST): no hold can bring it back. */
  lostGpu:
    "reset the GPU once nothing uses it (nvidia-smi -r -i INDEX) or reboot the node; dmesg | grep -i xid says why it was lost",
  /** --devices names no GPU that exists. */
  checkDevices: "check --devices (config devices) against 'nvidia-smi -L'",
} as const;

/** Why a GPU stays initialised whatever the daemon does; the daemon, status, release and doctor say it. */
export const legacyFlagNote = (index: number): string =>
  "the driver's legacy persistence flag is on (set before gpu-persistd started): it keeps the GPU initialised " +
  `even when the daemon lets go of it; to clear it: ${fixes.legacyFlag(index)}`;
