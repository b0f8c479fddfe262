// The reconciler and the registry's claim machine against a TypeScript fake of the effects:
// one row per case of intents x physical state, each naming the configuration, how the GPU
// got to its physical state, the intents then, and the state, claims and effects after the
// reconcile. No native code: what the daemon decides, apart from what the driver does.
import { describe, expect, it } from "vitest";
import type { NumaInfo } from "../../native-bindings/nvidia-kernel.js";
import type { DeviceHandle } from "../../native-bindings/nvml.js";
import type { Claim, Gpu, GpuState, PersistenceReading } from "../../src/gpu/gpu-model.js";
import { GpuRegistry } from "../../src/gpu/gpu-registry.js";
import type { HoldEffects } from "../../src/gpu/hold-effects.js";
import { type GpuIntents, IntentBook, NO_INTENTS } from "../../src/gpu/intents.js";
import { Reconciler } from "../../src/gpu/reconciler.js";

class FakeEffects implements HoldEffects {
  readonly log: string[] = [];
  failOpen = false;
  coherent = false;
  #fd = 100;
  async readLegacyFlag(): Promise<PersistenceReading> {
    this.log.push("legacy flag");
    return "disabled";
  }
  closeNow(fd: number): void {
    this.log.push(`close now ${fd >= 900 ? "uvm" : "node"}`);
  }
  async openNode(): Promise<number> {
    this.log.push("open");
    if (this.failOpen) throw new Error("ENOENT");
    return this.#fd++;
  }
  async readNuma(): Promise<NumaInfo> {
    this.log.push("numa");
    return { nid: this.coherent ? 1 : -1, status: this.coherent ? 3 : 0, useAutoOnline: true, memSizeBytes: 0n };
  }
  async registerUvm(): Promise<number> {
    this.log.push("uvm");
    return 900;
  }
  async close(fd: number, _forGood: boolean): Promise<void> {
    this.log.push(`close ${fd >= 900 ? "uvm" : "node"}`);
  }
}

function machine(effects: FakeEffects, persistenceMode: boolean, selected: boolean, nvmlOpen = true) {
  const registry = new GpuRegistry(
    [
      {
        handle: 1n as unknown as DeviceHandle,
        uuid: "GPU-0",
        name: "sim",
        minor: 0,
        pci: { domain: 0, bus: 6, device: 0, function: 0 },
      },
    ],
    { effects, uvmPersistence: true, nvmlOpen: () => nvmlOpen },
  );
  registry.select(selected ? [] : [{ kind: "index", index: 5, text: "5" }]);
  const reconciler = new Reconciler(registry, new IntentBook(), () => persistenceMode);
  return { registry, reconciler, gpu: registry.list()[0] as Gpu };
}

const at = new Date(0);
const client = (mode: "hold" | "release"): Partial<GpuIntents> => ({ client: { mode, uid: 0, since: at } });
const numa: Partial<GpuIntents> = { numa: { uid: 0, since: at } };
const lease: Partial<GpuIntents> = { lease: { pid: 7, since: at } };

/** How the GPU got to its physical state before the row's intents: the intents reconciled then, or its loss. */
type Before = "fresh" | "held" | "released" | "failed" | "lost";

const held = ["open", "legacy flag", "numa", "uvm"];
const heldForClient = ["open", "numa", "uvm"];
const letGo = ["close uvm", "close node"];
const rows: {
  name: string;
  config?: { persistenceMode: boolean; selected: boolean };
  before: Before;
  intents: Partial<GpuIntents>;
  state: GpuState;
  claims: Claim[];
  effects: string[];
  failOpen?: boolean;
  coherent?: boolean;
  nvmlOpen?: boolean;
}[] = [
  {
    name: "config wants it: held, the legacy flag read",
    before: "fresh",
    intents: {},
    state: "held",
    claims: ["persistence"],
    effects: held,
  },
  {
    name: "config wants it, NVML session closed: held, no NVML read",
    before: "fresh",
    intents: {},
    state: "held",
    claims: ["persistence"],
    effects: heldForClient,
    nvmlOpen: false,
  },
  {
    name: "not selected: not held",
    config: { persistenceMode: true, selected: false },
    before: "fresh",
    intents: {},
    state: "identified",
    claims: [],
    effects: [],
  },
  {
    name: "persistence off: not held",
    config: { persistenceMode: false, selected: true },
    before: "fresh",
    intents: {},
    state: "identified",
    claims: [],
    effects: [],
  },
  {
    name: "deselected while held: let go, identified",
    config: { persistenceMode: true, selected: false },
    before: "held",
    intents: {},
    state: "identified",
    claims: [],
    effects: letGo,
  },
  {
    name: "a node that cannot be opened: failed",
    before: "fresh",
    intents: {},
    state: "failed",
    claims: ["persistence"],
    effects: ["open"],
    failOpen: true,
  },
  {
    name: "a client's hold of an unselected GPU: held, no legacy-flag read",
    config: { persistenceMode: true, selected: false },
    before: "fresh",
    intents: client("hold"),
    state: "held",
    claims: ["persistence"],
    effects: heldForClient,
  },
  {
    name: "a client's hold with persistence off: held",
    config: { persistenceMode: false, selected: true },
    before: "fresh",
    intents: client("hold"),
    state: "held",
    claims: ["persistence"],
    effects: heldForClient,
  },
  {
    name: "a client's release of a held GPU: released, UVM closed before the node",
    before: "held",
    intents: client("release"),
    state: "released",
    claims: [],
    effects: letGo,
  },
  {
    name: "a client's release of an unheld GPU: released (no NVML session may pin it)",
    config: { persistenceMode: true, selected: false },
    before: "fresh",
    intents: client("release"),
    state: "released",
    claims: [],
    effects: [],
  },
  {
    name: "a client's release of a GPU that failed: released",
    before: "failed",
    intents: client("release"),
    state: "released",
    claims: [],
    effects: [],
  },
  {
    name: "a client's release with a NUMA request: the node stays held for NUMA",
    before: "held",
    intents: { ...client("release"), ...numa },
    state: "held",
    claims: ["numa"],
    effects: [],
    coherent: true,
  },
  {
    name: "a client's hold after a release: held again",
    before: "released",
    intents: client("hold"),
    state: "held",
    claims: ["persistence"],
    effects: heldForClient,
  },
  {
    name: "the client's choice withdrawn after a release: the configuration holds it",
    before: "released",
    intents: {},
    state: "held",
    claims: ["persistence"],
    effects: held,
  },
  {
    name: "the client's choice withdrawn, not selected: no longer released",
    config: { persistenceMode: true, selected: false },
    before: "released",
    intents: {},
    state: "identified",
    claims: [],
    effects: [],
  },
  {
    name: "NUMA requested on an unheld GPU: held for NUMA",
    config: { persistenceMode: true, selected: false },
    before: "fresh",
    intents: numa,
    state: "held",
    claims: ["numa"],
    effects: heldForClient,
    coherent: true,
  },
  {
    name: "NUMA and the configuration: both claims",
    before: "fresh",
    intents: numa,
    state: "held",
    claims: ["persistence", "numa"],
    effects: held,
    coherent: true,
  },
  {
    name: "a lease on a held GPU: released",
    before: "held",
    intents: lease,
    state: "released",
    claims: [],
    effects: letGo,
  },
  {
    name: "a lease wins over a client's hold and NUMA",
    before: "held",
    intents: { ...lease, ...client("hold"), ...numa },
    state: "released",
    claims: [],
    effects: letGo,
  },
  {
    name: "a lease ended (none left): held again as configured",
    before: "released",
    intents: {},
    state: "held",
    claims: ["persistence"],
    effects: held,
  },
  {
    name: "a lease ended with a plain release during it: stays released",
    before: "released",
    intents: client("release"),
    state: "released",
    claims: [],
    effects: [],
  },
  {
    name: "a lease ended on a GPU deselected meanwhile: not held",
    config: { persistenceMode: true, selected: false },
    before: "released",
    intents: {},
    state: "identified",
    claims: [],
    effects: [],
  },
  {
    name: "a lost GPU is never held again",
    before: "lost",
    intents: client("hold"),
    state: "lost",
    claims: [],
    effects: [],
  },
  {
    name: "a lost GPU cannot be released",
    before: "lost",
    intents: client("release"),
    state: "lost",
    claims: [],
    effects: [],
  },
];

/** Brings the GPU to `before`, through the same reconciler; returns the effects log from then on. */
async function prepare(m: ReturnType<typeof machine>, effects: FakeEffects, before: Before): Promise<void> {
  if (before === "held" || before === "released") {
    m.reconciler.change(m.gpu, { client: { mode: "hold", uid: 0, since: at } });
    await m.reconciler.reconcile(m.gpu);
  }
  if (before === "released") {
    m.reconciler.change(m.gpu, { client: { mode: "release", uid: 0, since: at } });
    await m.reconciler.reconcile(m.gpu);
  }
  m.reconciler.change(m.gpu, { ...NO_INTENTS });
  if (before === "failed") {
    effects.failOpen = true;
    await m.reconciler.reconcile(m.gpu);
    effects.failOpen = false;
  }
  if (before === "lost") await m.registry.markLost(m.gpu, new Error("Xid 79"));
  effects.log.length = 0;
}

describe("intents x physical state -> effects", () => {
  for (const row of rows) {
    it(row.name, async () => {
      const effects = new FakeEffects();
      effects.coherent = row.coherent ?? false;
      const config = row.config ?? { persistenceMode: true, selected: true };
      const m = machine(effects, config.persistenceMode, config.selected, row.nvmlOpen ?? true);
      await prepare(m, effects, row.before);
      effects.failOpen = row.failOpen ?? false;
      m.reconciler.change(m.gpu, { ...NO_INTENTS, ...row.intents });
      await m.reconciler.reconcile(m.gpu);
      expect({ state: m.gpu.state, claims: [...m.gpu.claims].sort(), effects: effects.log }).toEqual({
        state: row.state,
        claims: [...row.claims].sort(),
        effects: row.effects,
      });
    });
  }

  it("reconciles of one GPU run one at a time, and each reads the intents as they are when it runs", async () => {
    const effects = new FakeEffects();
    const m = machine(effects, true, true);
    const states: GpuState[] = [];
    m.registry.on("transition", (t) => states.push(t.to));
    const first = m.reconciler.reconcile(m.gpu);
    m.reconciler.change(m.gpu, client("release"));
    const second = m.reconciler.reconcile(m.gpu);
    await Promise.all([first, second]);
    // The first reconcile already saw the release: nothing was opened for it.
    expect(states).toEqual(["released"]);
    m.reconciler.change(m.gpu, { client: null });
    await Promise.all([m.reconciler.reconcile(m.gpu), m.reconciler.reconcile(m.gpu)]);
    expect(states).toEqual(["released", "holding", "held"]);
  });
});
