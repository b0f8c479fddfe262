// The intents' pure rule (targetOf) and the book's change and take-back, without a registry.
import { describe, expect, it } from "vitest";
import { type GpuIntents, IntentBook, NO_INTENTS, releasedBy, targetOf } from "../../src/gpu/intents.js";

const at = new Date(0);
const release = { mode: "release", uid: 0, since: at } as const;
const hold = { mode: "hold", uid: 0, since: at } as const;
const lease = { pid: 7, since: at };
const numa = { uid: 0, since: at };
const on = { persistenceMode: true, selected: true };

describe("targetOf: intents -> what holds the GPU", () => {
  const rows: [string, Partial<GpuIntents>, typeof on, ReturnType<typeof targetOf>][] = [
    ["nothing but the configuration", {}, on, { claims: ["persistence"], idle: "identified", forConfig: true }],
    ["persistence off", {}, { ...on, persistenceMode: false }, { claims: [], idle: "identified", forConfig: false }],
    ["not selected", {}, { ...on, selected: false }, { claims: [], idle: "identified", forConfig: false }],
    ["a client's release", { client: release }, on, { claims: [], idle: "released", forConfig: false }],
    [
      "a client's hold, not selected",
      { client: hold },
      { ...on, selected: false },
      { claims: ["persistence"], idle: "identified", forConfig: false },
    ],
    ["NUMA with a release", { client: release, numa }, on, { claims: ["numa"], idle: "released", forConfig: false }],
    [
      "a lease wins over a hold and NUMA",
      { lease, client: hold, numa },
      on,
      { claims: [], idle: "released", forConfig: false },
    ],
  ];
  for (const [name, intents, config, target] of rows) {
    it(name, () => expect(targetOf({ ...NO_INTENTS, ...intents }, config)).toEqual(target));
  }

  it("a plain release names the owner over a lease it came in during (it outlives the lease)", () => {
    expect(releasedBy({ ...NO_INTENTS, lease, client: release })).toMatchObject({ kind: "request", uid: 0 });
    expect(releasedBy({ ...NO_INTENTS, lease })).toMatchObject({ kind: "lease", pid: 7 });
    expect(releasedBy({ ...NO_INTENTS, client: hold })).toBeNull();
  });
});

describe("the book: a change taken back undoes only what is still its own", () => {
  it("a field set since by another change stays, even to the same value (null)", () => {
    const book = new IntentBook();
    book.change(0, { client: release });
    const first = book.change(0, { client: null });
    book.change(0, { client: null });
    book.revert(first);
    expect(book.of(0).client).toBeNull();
  });

  it("a field nobody touched since goes back; a field named alone goes back alone", () => {
    const book = new IntentBook();
    book.change(0, { client: release });
    const change = book.change(0, { client: hold, numa });
    book.revert(change, ["numa"]);
    expect(book.of(0)).toEqual({ client: hold, numa: null, lease: null });
    book.revert(change);
    expect(book.of(0)).toEqual({ client: release, numa: null, lease: null });
  });

  it("each change is reported to the state record; a GPU with no intent left is not listed", () => {
    const book = new IntentBook();
    let writes = 0;
    book.onChange = () => writes++;
    const change = book.change(3, { lease });
    expect(book.entries()).toEqual([[3, { client: null, numa: null, lease }]]);
    book.revert(change);
    expect(book.entries()).toEqual([]);
    expect(writes).toBe(2);
  });
});
