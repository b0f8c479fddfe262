// `gpu-persistd release GPU` and `gpu-persistd hold GPU`: the persistence protocol's Set,
// as `nvidia-smi -pm` would send it, to the running daemon.
import { requestStatus } from "../control/control-client.js";
import { ExitCode } from "../exit-codes.js";
import { FatalError } from "../fatal-error.js";
import { fixes, legacyFlagNote } from "../fixes.js";
import { NvPdStatus, PERSISTENCE_PROGRAM, PROC_SET_PERSISTENCE } from "../rpc/persistence-program.js";
import { callOnce } from "../rpc/rpc-client.js";
import { XdrWriter } from "../rpc/xdr.js";
import { RPC_SOCKET_NAME } from "../runtime-dir.js";
import { parseGpuSelector, selectorMatches } from "../selection/gpu-selector.js";
import { parsePciAddress } from "../selection/pci-address.js";

const STATUS_NAMES = Object.fromEntries(Object.entries(NvPdStatus).map(([k, v]) => [v, k]));

/** `release GPU...` / `hold GPU...`: one Set per GPU, in order; the first failure ends it. */
export async function setPersistenceCommand(runtimeDir: string, targets: string[], hold: boolean): Promise<void> {
  for (const target of targets) await setOne(runtimeDir, target, hold);
}

async function setOne(runtimeDir: string, target: string, hold: boolean): Promise<void> {
  const selector = parseGpuSelector(target);
  if (!selector) {
    throw new FatalError(
      ExitCode.USAGE,
      `'${target}' is not a GPU index, UUID (GPU-...) or PCI bus id (00000000:18:00.0)`,
    );
  }
  const status = await requestStatus(runtimeDir);
  const gpu = status.devices.find((d) => selectorMatches(selector, { ...d, pci: parsePciAddress(d.pciBusId) }));
  if (!gpu) {
    throw new FatalError(
      ExitCode.FAILURE,
      `no GPU matches '${target}' (the daemon knows ${status.devices.length} GPUs; see gpu-persistd status)`,
    );
  }
  const address = parsePciAddress(gpu.pciBusId);
  if (!address)
    throw new FatalError(ExitCode.FAILURE, `GPU ${gpu.index} has no PCI bus id: ${gpu.error ?? "not identified"}`);
  const args = new XdrWriter()
    .i32(address.domain)
    .i32(address.bus)
    .i32(address.device)
    .i32(address.function)
    .i32(hold ? 1 : 0)
    .bytes();
  const reply = await callOnce(`${runtimeDir}/${RPC_SOCKET_NAME}`, PERSISTENCE_PROGRAM, 2, PROC_SET_PERSISTENCE, args);
  const result = reply.i32("status");
  const name = `GPU ${gpu.index} ${gpu.pciBusId}`;
  if (result === NvPdStatus.PERMISSIONS) {
    throw new FatalError(
      ExitCode.NO_PERMISSION,
      `${name}: refused: only root may hold or release GPUs (run with sudo)`,
    );
  }
  if (result !== NvPdStatus.SUCCESS) {
    // The protocol answers one number: the daemon's record says what the GPU is now, and why.
    const now = (await requestStatus(runtimeDir).catch(() => status)).devices.find((d) => d.index === gpu.index);
    const why =
      now && !now.held && now.state !== "released" ? `: it is ${now.state}${now.error ? ` (${now.error})` : ""}` : "";
    const fix = now?.state === "lost" ? `; to recover it: ${fixes.lostGpu}` : "; see journalctl -u gpu-persistd";
    throw new FatalError(
      ExitCode.FAILURE,
      `${name}: the daemon answered ${STATUS_NAMES[result] ?? result}${why}${fix}`,
    );
  }
  const verb = hold ? "held" : "released";
  process.stdout.write(
    gpu.held === hold ? `${name}: already ${verb}\n` : `${name}: ${verb} (was ${gpu.held ? "held" : "released"})\n`,
  );
  // Released, yet still initialised: say so, as nvidia-smi will go on printing "Enabled".
  if (!hold && gpu.legacyFlag === "enabled") process.stdout.write(`${name}: but ${legacyFlagNote(gpu.index)}\n`);
}
