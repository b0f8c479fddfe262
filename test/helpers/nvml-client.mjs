// An NVML client stand-in for the real-systemd suites (nvidia-smi, pynvml): the simulated
// libnvidia-ml through koffi, routing persistence calls to /run/nvidia-persistenced/socket as
// real NVML does. Prints one line:
//   get N        "mode M ms T": nvmlDeviceGetPersistenceMode on GPU N and how long it took
//   set N M      "set M ms T" or "error CODE ms T": nvmlDeviceSetPersistenceMode (nvidia-smi -pm M)
//   state N      "held", "initialised" or "torn down", as the simulated driver sees GPU N
// The simulator's configuration comes from the environment, as for the daemon.
import { createRequire } from "node:module";

const lib = process.env.GPU_PERSISTD_LIB ?? "/usr/lib/gpu-persistd";
const koffi = createRequire(`${lib}/`)("koffi");
const sim = koffi.load(`${lib}/libnvidia-ml-sim.so`);
const [verb, gpu, mode] = process.argv.slice(2);
const index = Number(gpu);
if (verb === "state") {
  const state = sim.func("int gpuPersistdSimGpuState(int gpu)")(index);
  console.log(["torn down", "initialised", "held"][state] ?? `unknown GPU ${index}`);
  process.exit(0);
}
const check = (what, ret) => {
  if (ret !== 0) {
    console.log(`error ${ret} (${what})`);
    process.exit(1);
  }
};
check("nvmlInit_v2", sim.func("int nvmlInit_v2()")());
const handle = [null];
check("handle", sim.func("int nvmlDeviceGetHandleByIndex_v2(unsigned int index, _Out_ void **dev)")(index, handle));
const started = performance.now();
const ms = () => Math.round(performance.now() - started);
if (verb === "get") {
  const out = [0];
  check("get", sim.func("int nvmlDeviceGetPersistenceMode(void *dev, _Out_ int *mode)")(handle[0], out));
  console.log(`mode ${out[0]} ms ${ms()}`);
} else if (verb === "set") {
  const ret = sim.func("int nvmlDeviceSetPersistenceMode(void *dev, int mode)")(handle[0], Number(mode));
  console.log(ret === 0 ? `set ${mode} ms ${ms()}` : `error ${ret} ms ${ms()}`);
} else {
  console.log(`unknown verb ${verb}: get N | set N MODE | state N`);
  process.exit(64);
}
