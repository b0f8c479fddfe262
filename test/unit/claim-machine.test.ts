// The registry's claim state machine against a TypeScript fake of its effects: one row per
// case, each naming the state and claims before, the request, and the state, claims and
// effects after. No native code: what the registry decides, apart from what the driver does.
import { describe, expect, it } from "vitest";
import type { NumaInfo } from "../../native-bindings/nvidia-kernel.js";
import type { DeviceHandle } from "../../native-bindings/nvml.js";
import type { Claim, Gpu, GpuState, Origin, PersistenceReading } from "../../src/gpu/gpu-model.js";
import { GpuRegistry } from "../../src/gpu/gpu-registry.js";
import type { HoldEffects, PersistenceOutcome } from "../../src/gpu/hold-effects.js";

class FakeEffects implements HoldEffects {
  readonly log: string[] = [];
  failOpen = false;
  coherent = false;
  #fd = 100;
  async readPersistence(): Promise<PersistenceReading> {
    this.log.push("persistence");
    return "enabled";
  }
  async enablePersistence(): Promise<PersistenceOutcome> {
    throw new Error("not called: it reads enabled");
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

function registry(effects: FakeEffects, nvmlOpen = true): GpuRegistry {
  return new GpuRegistry(
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
}

type Step =
  | ["acquire", Claim, Origin]
  | ["relinquish", Claim, Origin]
  | ["release"]
  | ["restore", Claim[] | null]
  | ["lost"];

async function run(r: GpuRegistry, gpu: Gpu, step: Step): Promise<void> {
  if (step[0] === "acquire") await r.acquire(gpu, step[1], step[2]);
  else if (step[0] === "relinquish") await r.relinquish(gpu, step[1], step[2]);
  else if (step[0] === "release") await r.release(gpu);
  else if (step[0] === "restore") await r.restore(gpu, step[1]);
  else await r.markLost(gpu, new Error("Xid 79"));
}

const held = ["persistence", "open", "numa", "uvm"];
const rows: {
  name: string;
  setup: Step[];
  step: Step;
  state: GpuState;
  claims: Claim[];
  effects: string[];
  failOpen?: boolean;
  coherent?: boolean;
  nvmlOpen?: boolean;
}[] = [
  {
    name: "config hold: persistence, node, NUMA, UVM",
    setup: [],
    step: ["acquire", "persistence", "config"],
    state: "held",
    claims: ["persistence"],
    effects: held,
  },
  {
    name: "a hold while the NVML session is closed does not call the setter",
    setup: [],
    step: ["acquire", "persistence", "config"],
    state: "held",
    claims: ["persistence"],
    effects: ["open", "numa", "uvm"],
    nvmlOpen: false,
  },
  {
    name: "a client's hold never calls the setter",
    setup: [],
    step: ["acquire", "persistence", "request"],
    state: "held",
    claims: ["persistence"],
    effects: ["open", "numa", "uvm"],
  },
  {
    name: "a second claim opens nothing more",
    setup: [["acquire", "persistence", "config"]],
    step: ["acquire", "persistence", "request"],
    state: "held",
    claims: ["persistence"],
    effects: held,
  },
  {
    name: "a node that cannot be opened: failed",
    setup: [],
    step: ["acquire", "persistence", "config"],
    state: "failed",
    claims: ["persistence"],
    effects: ["persistence", "open"],
    failOpen: true,
  },
  {
    name: "NUMA without coherent memory: a no-op that closes what it opened",
    setup: [],
    step: ["acquire", "numa", "request"],
    state: "identified",
    claims: [],
    effects: ["open", "numa", "uvm", "close uvm", "close node"],
  },
  {
    name: "NUMA with coherent memory keeps the node",
    setup: [],
    step: ["acquire", "numa", "request"],
    state: "held",
    claims: ["numa"],
    effects: ["open", "numa", "uvm"],
    coherent: true,
  },
  {
    name: "a client's relinquish of the last claim: released, UVM closed before the node",
    setup: [["acquire", "persistence", "config"]],
    step: ["relinquish", "persistence", "request"],
    state: "released",
    claims: [],
    effects: [...held, "close uvm", "close node"],
  },
  {
    name: "deselected by config: identified",
    setup: [["acquire", "persistence", "config"]],
    step: ["relinquish", "persistence", "config"],
    state: "identified",
    claims: [],
    effects: [...held, "close uvm", "close node"],
  },
  {
    name: "one claim left keeps the node",
    setup: [
      ["acquire", "numa", "request"],
      ["acquire", "persistence", "request"],
    ],
    step: ["relinquish", "persistence", "request"],
    state: "held",
    claims: ["numa"],
    effects: ["open", "numa", "uvm"],
    coherent: true,
  },
  {
    name: "release of an unheld GPU: released (no NVML session may pin it)",
    setup: [],
    step: ["release"],
    state: "released",
    claims: [],
    effects: [],
  },
  {
    name: "restore with claims: held again",
    setup: [["acquire", "persistence", "config"], ["release"]],
    step: ["restore", ["persistence"]],
    state: "held",
    claims: ["persistence"],
    effects: [...held, "close uvm", "close node", "open", "numa", "uvm"],
  },
  {
    name: "restore with none: not released any more",
    setup: [["release"]],
    step: ["restore", []],
    state: "identified",
    claims: [],
    effects: [],
  },
  {
    name: "restore with null: stays released",
    setup: [["release"]],
    step: ["restore", null],
    state: "released",
    claims: [],
    effects: [],
  },
  {
    name: "a lost GPU is let go and stays lost",
    setup: [["acquire", "persistence", "config"]],
    step: ["lost"],
    state: "lost",
    claims: [],
    effects: [...held, "close uvm", "close node"],
  },
  {
    name: "a lost GPU is never held again",
    setup: [["lost"]],
    step: ["acquire", "persistence", "request"],
    state: "lost",
    claims: [],
    effects: [],
  },
  {
    name: "a lost GPU cannot be released",
    setup: [["lost"]],
    step: ["release"],
    state: "lost",
    claims: [],
    effects: [],
  },
  {
    name: "a hold that failed, released by the same client: released",
    setup: [["acquire", "persistence", "request"]],
    step: ["relinquish", "persistence", "request"],
    state: "released",
    claims: [],
    effects: ["open"],
    failOpen: true,
  },
];

describe("the claim state machine", () => {
  for (const row of rows) {
    it(row.name, async () => {
      const effects = new FakeEffects();
      effects.failOpen = row.failOpen ?? false;
      effects.coherent = row.coherent ?? false;
      const r = registry(effects, row.nvmlOpen ?? true);
      const gpu = r.list()[0] as Gpu;
      for (const step of row.setup) await run(r, gpu, step);
      await run(r, gpu, row.step);
      expect({ state: gpu.state, claims: [...gpu.claims].sort(), effects: effects.log }).toEqual({
        state: row.state,
        claims: [...row.claims].sort(),
        effects: row.effects,
      });
    });
  }

  it("transitions of one GPU run one at a time, in the order asked", async () => {
    const effects = new FakeEffects();
    const r = registry(effects);
    const gpu = r.list()[0] as Gpu;
    const states: GpuState[] = [];
    r.on("transition", (t) => states.push(t.to));
    await Promise.all([r.acquire(gpu, "persistence", "config"), r.release(gpu), r.restore(gpu, ["persistence"])]);
    expect(states).toEqual(["holding", "held", "released", "holding", "held"]);
  });
});
