// The NVIDIA kernel driver's ioctls the daemon uses, with their structs packed by hand
// (numbers and layouts from open-gpu-kernel-modules 580/595: nv-ioctl-numa.h,
// nv-ioctl-numbers.h, nvidia-uvm/uvm_ioctl.h). One `ioctl` function backs them: libc's for
// the real driver, or the simulated libnvidia-ml's stand-in, which answers with the same
// layouts for the simulator's GPUs.
import { closeSync, constants, openSync } from "node:fs";
import koffi from "koffi";
import { lastErrno, libcFunction } from "./libc.js";

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

type IoctlFn = (fd: number, request: number, arg: Buffer) => number;

export class NvidiaKernel {
  readonly #ioctl: IoctlFn;
  readonly #errno: () => string;

  private constructor(ioctl: IoctlFn, errno: () => string) {
    this.#ioctl = ioctl;
    this.#errno = errno;
  }

  /** The real driver, through libc's ioctl. */
  static real(): NvidiaKernel {
    const fn = libcFunction("int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)");
    return new NvidiaKernel(
      (fd, request, arg) => fn(fd, request, arg) as number,
      () => lastErrno().code,
    );
  }

  /** The simulator's stand-in (exported by the simulated libnvidia-ml at `library`). */
  static simulated(library: string): NvidiaKernel {
    const lib = koffi.load(library);
    const fn = lib.func("int gpuPersistdSimIoctl(int fd, unsigned long request, _Inout_ uint8_t *arg)");
    const errno = lib.func("int gpuPersistdSimErrno()");
    return new NvidiaKernel(
      (fd, request, arg) => fn(fd, request, arg) as number,
      () => {
        const n = errno() as number;
        return Object.entries(koffi.os.errno).find(([, v]) => v === n)?.[0] ?? `errno ${n}`;
      },
    );
  }

  #call(name: string, fd: number, request: number, arg: Buffer): void {
    if (this.#ioctl(fd, request, arg) !== 0) throw new KernelCallError(name, this.#errno(), null);
  }

  /** NV_ESC_NUMA_INFO on a GPU's node (a query: changes nothing). */
  numaInfo(nodeFd: number): NumaInfo {
    const arg = Buffer.alloc(560);
    arg.writeInt32LE(-1, 0);
    // numEntries on input: no memory block addresses wanted.
    arg.writeUInt32LE(0, 552);
    this.#call("NV_ESC_NUMA_INFO", nodeFd, NV_ESC_NUMA_INFO, arg);
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
  registerUvm(dir: string, uuid: string): number {
    const fd = openSync(`${dir}/nvidia-uvm`, constants.O_RDWR);
    try {
      const init = Buffer.alloc(16);
      this.#call("UVM_INITIALIZE", fd, UVM_INITIALIZE, init);
      const initStatus = init.readUInt32LE(8);
      if (initStatus !== NV_OK) throw new KernelCallError("UVM_INITIALIZE", null, initStatus);
      const register = Buffer.alloc(40);
      uuidBytes(uuid).copy(register, 0);
      // No MIG: no RM client, control fd or partition reference is needed.
      register.writeInt32LE(-1, 24);
      this.#call("UVM_REGISTER_GPU", fd, UVM_REGISTER_GPU, register);
      const status = register.readUInt32LE(36);
      if (status !== NV_OK) throw new KernelCallError("UVM_REGISTER_GPU", null, status);
      return fd;
    } catch (err) {
      closeSync(fd);
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
