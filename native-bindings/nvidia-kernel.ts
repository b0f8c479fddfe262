// The NVIDIA kernel driver's ioctls the daemon uses, with their structs packed by hand
// (numbers and layouts from open-gpu-kernel-modules 580/595: nv-ioctl-numa.h,
// nv-ioctl-numbers.h, nvidia-uvm/uvm_ioctl.h). One `ioctl` function backs them: libc's for
// the real driver, or the simulated libnvidia-ml's stand-in, which answers with the same
// layouts for the simulator's GPUs.
// Every call runs on the libuv pool (the driver may take its locks for long, and a lost GPU
// may not answer at all) with a time limit; koffi carries the pool thread's errno back.
import { close, constants, open, readdirSync, readFileSync } from "node:fs";
import { promisify } from "node:util";
import koffi from "koffi";
import { type KoffiFunction, libcFunction } from "./libc.js";
import { PoolCallTimeoutError, timedPoolCall } from "./libuv-pool.js";

const openAsync = promisify(open);
const closeAsync = promisify(close);

const UVM_INITIALIZE = 0x30000001;
const UVM_REGISTER_GPU = 37;
const NV_ESC_NUMA_INFO = 0xc23046d7;

/** NV_STATUS values the daemon names; the rest are shown in hex. */
export const NV_OK = 0;
export const NV_ERR_NVLINK_FABRIC_NOT_READY = 0x81;
const NV_STATUS_NAMES: Readonly<Record<number, string>> = {
  0: "NV_OK",
  31: "NV_ERR_INVALID_ARGUMENT",
  34: "NV_ERR_INVALID_DEVICE",
  86: "NV_ERR_NOT_SUPPORTED",
  129: "NV_ERR_NVLINK_FABRIC_NOT_READY",
  130: "NV_ERR_NVLINK_FABRIC_FAILURE",
  131: "NV_ERR_GPU_MEMORY_ONLINING_FAILURE",
};

export function nvStatusName(status: number): string {
  return NV_STATUS_NAMES[status] ?? `NV_STATUS 0x${status.toString(16)}`;
}

/** The ioctl itself failed (errno), or the driver answered an NV_STATUS other than NV_OK. */
export class KernelCallError extends Error {
  readonly call: string;
  /** errno's name when the ioctl failed, else null. */
  readonly errno: string | null;
  /** The driver's NV_STATUS when the ioctl succeeded but the call did not. */
  readonly nvStatus: number | null;
  constructor(call: string, errno: string | null, nvStatus: number | null) {
    super(`${call} failed: ${errno ?? nvStatusName(nvStatus ?? -1)}`);
    this.name = "KernelCallError";
    this.call = call;
    this.errno = errno;
    this.nvStatus = nvStatus;
  }
}

/** NUMA state of a GPU with coherent memory (GH200, GB200), from NV_ESC_NUMA_INFO. */
export interface NumaInfo {
  /** The NUMA node of the GPU's memory, or -1 when it has none. */
  nid: number;
  /** 0 disabled, 1 offline, 2 online in progress, 3 online, 4 online failed, 5 offline in progress, 6 offline failed. */
  status: number;
  useAutoOnline: boolean;
  memSizeBytes: bigint;
}

/** NV_ESC_NUMA_INFO's status: the memory is online, and onlining it failed (auto_online_blocks not online_movable). */
export const NUMA_ONLINE = 3;
export const NUMA_ONLINE_FAILED = 4;

/** A NUMA status's name, as status and the log say it. */
export function numaStatusName(status: number): string {
  return NUMA_STATUS_NAMES[status] ?? `status ${status}`;
}

/** Indexed by NV_ESC_NUMA_INFO's status. */
export const NUMA_STATUS_NAMES = [
  "disabled",
  "offline",
  "online in progress",
  "online",
  "online failed",
  "offline in progress",
  "offline failed",
] as const;

/** An ioctl that did not return within its time limit; its pool thread stays blocked until it does. */
export class KernelTimeoutError extends PoolCallTimeoutError {
  constructor(call: string, timeoutMs: number, returned: Promise<void>) {
    super(call, timeoutMs, returned);
    this.name = "KernelTimeoutError";
  }
}

function errnoName(n: number): string {
  return Object.entries(koffi.os.errno).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
}

type IoctlFn = KoffiFunction;

/** A GPU as the kernel module lists it, without NVML. */
export interface DriverGpu {
  /** NVML's form of the PCI bus id, 00000000:06:00.0. */
  busId: string;
  minor: number;
  uuid: string;
  name: string;
}

/** What the loaded kernel module tells without NVML. */
export interface DriverInfo {
  /** The module's version (/sys/module/nvidia/version), or null when it cannot be read. */
  moduleVersion: string | null;
  /** From /proc/driver/nvidia/gpus (hidden under the unit's ProcSubset=pid: then empty). */
  gpus: DriverGpu[];
}

function readOrNull(path: string): string | null {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return null;
  }
}

/** The real module's answer: sysfs for the version, procfs for the GPUs. */
function realDriverInfo(): DriverInfo {
  const moduleVersion = readOrNull("/sys/module/nvidia/version")?.trim() || null;
  const dir = "/proc/driver/nvidia/gpus";
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    // Not loaded, or hidden from this process.
  }
  const gpus = names.flatMap((bdf): DriverGpu[] => {
    const text = readOrNull(`${dir}/${bdf}/information`);
    const field = (key: string) => text?.match(new RegExp(`^${key}:\\s*(.+)$`, "m"))?.[1]?.trim();
    const minor = Number(field("Device Minor"));
    const [domain, rest] =
      bdf.includes(":") && bdf.split(":").length === 3
        ? [bdf.slice(0, bdf.indexOf(":")), bdf.slice(bdf.indexOf(":") + 1)]
        : ["0", bdf];
    if (!text || !Number.isInteger(minor)) return [];
    return [
      {
        busId: `${domain.padStart(8, "0")}:${rest}`.toUpperCase(),
        minor,
        uuid: field("GPU UUID") ?? "",
        name: field("Model") ?? "",
      },
    ];
  });
  return { moduleVersion, gpus };
}

export class NvidiaKernel {
  readonly #ioctl: IoctlFn;
  readonly #driverInfo: () => DriverInfo;
  /** Each ioctl's time limit (the NVML call limit: a reload may change it). */
  timeoutMs: number;

  private constructor(ioctl: IoctlFn, driverInfo: () => DriverInfo, timeoutMs: number) {
    this.#ioctl = ioctl;
    this.#driverInfo = driverInfo;
    this.timeoutMs = timeoutMs;
  }

  /** The real driver, through libc's ioctl. */
  static real(timeoutMs: number): NvidiaKernel {
    return new NvidiaKernel(
      libcFunction("int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)"),
      realDriverInfo,
      timeoutMs,
    );
  }

  /** The simulator's stand-in (exported by the simulated libnvidia-ml at `library`); it sets errno as libc does. */
  static simulated(library: string, timeoutMs: number): NvidiaKernel {
    const lib = koffi.load(library);
    const info = lib.func("int gpuPersistdSimDriverInfo(_Out_ uint8_t *buf, unsigned int len)");
    return new NvidiaKernel(
      lib.func("int gpuPersistdSimIoctl(int fd, unsigned long request, _Inout_ uint8_t *arg)"),
      () => {
        const buf = Buffer.alloc(64 * 1024);
        const n = info(buf, buf.length) as number;
        const lines = buf.subarray(0, Math.max(0, n)).toString("utf8").split("\n");
        return {
          moduleVersion: lines[0]?.replace(/^module /, "") || null,
          gpus: lines.slice(1).flatMap((line) => {
            const m = /^gpu (\S+) (\d+) (\S+) (.*)$/.exec(line);
            return m
              ? [{ busId: m[1] as string, minor: Number(m[2]), uuid: m[3] as string, name: m[4] as string }]
              : [];
          }),
        };
      },
      timeoutMs,
    );
  }

  /** What the loaded module tells without NVML: its version and its GPUs (synchronous: sysfs and procfs reads). */
  driverInfo(): DriverInfo {
    return this.#driverInfo();
  }

  /** One ioctl on the pool: resolves when it returned 0; KernelCallError (errno) or KernelTimeoutError otherwise. */
  #call(name: string, fd: number, request: number, arg: Buffer): Promise<void> {
    // The pool thread's errno, read as koffi hands the result back.
    return timedPoolCall<{ rc: number; errno: number }, void>(
      this.timeoutMs,
      (done) =>
        this.#ioctl.async(fd, request, arg, (err: Error | null, rc: number) => done(err, { rc, errno: koffi.errno() })),
      ({ rc, errno }) => {
        if (rc !== 0) throw new KernelCallError(name, errnoName(errno), null);
      },
      (returned) => new KernelTimeoutError(name, this.timeoutMs, returned),
    );
  }

  /**
   * NV_ESC_NUMA_INFO on a GPU's node (a query: changes nothing). The driver refuses every
   * ioctl on a GPU that was removed from the bus, so on a held node it also tells whether
   * the driver still answers for that GPU, without NVML.
   */
  async numaInfo(nodeFd: number): Promise<NumaInfo> {
    const arg = Buffer.alloc(560);
    arg.writeInt32LE(-1, 0);
    // numEntries on input: no memory block addresses wanted.
    arg.writeUInt32LE(0, 552);
    await this.#call("NV_ESC_NUMA_INFO", nodeFd, NV_ESC_NUMA_INFO, arg);
    return {
      nid: arg.readInt32LE(0),
      status: arg.readInt32LE(4),
      useAutoOnline: arg.readUInt8(32) !== 0,
      memSizeBytes: arg.readBigUInt64LE(24),
    };
  }

  /**
   * Opens /dev/nvidia-uvm (in `dir`), initialises it and registers the GPU with `uuid`
   * there: what every CUDA program does; the registration holds the GPU until the returned
   * fd is closed. Throws KernelCallError (NV_STATUS in nvStatus) or an errno Error.
   */
  async registerUvm(dir: string, uuid: string): Promise<number> {
    const fd = await openAsync(`${dir}/nvidia-uvm`, constants.O_RDWR);
    try {
      const init = Buffer.alloc(16);
      await this.#call("UVM_INITIALIZE", fd, UVM_INITIALIZE, init);
      const initStatus = init.readUInt32LE(8);
      if (initStatus !== NV_OK) throw new KernelCallError("UVM_INITIALIZE", null, initStatus);
      const register = Buffer.alloc(40);
      uuidBytes(uuid).copy(register, 0);
      // No MIG: no RM client, control fd or partition reference is needed.
      register.writeInt32LE(-1, 24);
      await this.#call("UVM_REGISTER_GPU", fd, UVM_REGISTER_GPU, register);
      const status = register.readUInt32LE(36);
      if (status !== NV_OK) throw new KernelCallError("UVM_REGISTER_GPU", null, status);
      return fd;
    } catch (err) {
      await closeAsync(fd);
      throw err;
    }
  }
}

/** `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` as the 16 bytes the driver compares. */
export function uuidBytes(uuid: string): Buffer {
  const hex = uuid.replace(/^GPU-/i, "").replaceAll("-", "");
  if (!/^[0-9a-f]{32}$/i.test(hex)) throw new Error(`'${uuid}' is not a GPU UUID`);
  return Buffer.from(hex, "hex");
}
