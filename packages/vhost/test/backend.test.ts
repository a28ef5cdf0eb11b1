// VhostBackend driven in-thread (no worker): the control protocol's state machine and error
// replies, then a BlkDevice data plane served through the kick and call doorbells.
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice, type BlockBackend } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory } from "@virtio-ts/memory";
import { DeviceStatus, MmioInterrupt } from "@virtio-ts/spec";
import {
  type DeviceNotifiers,
  MmioDevice,
  MmioDriverTransport,
  SharedDoorbell,
} from "@virtio-ts/transport";
import { describe, expect, it } from "vitest";
import { ControlWord, VhostBackend, type VhostMessage, type VhostReply } from "../src/index.js";

type Req = Record<string, unknown> & { type: string };

/** A backend with a recording port; `ask` sends one request and resolves with its reply. */
function harness(
  model: BlkDevice = new BlkDevice(new MemoryDisk(new Uint8Array(512 * 64))),
  drainTimeoutMs = 5000,
  more: { usedBatch?: number; weight?: number } = {},
) {
  const out: VhostMessage[] = [];
  const waiters = new Map<number, (r: VhostReply) => void>();
  const backend = new VhostBackend(
    model,
    (m) => {
      out.push(m);
      if (m.type === "reply") waiters.get(m.id)?.(m);
    },
    { drainTimeoutMs, ...more },
  );
  let id = 1;
  const ask = (req: Req): Promise<VhostReply> => {
    const n = id++;
    const p = new Promise<VhostReply>((resolve) => waiters.set(n, resolve));
    backend.handle({ ...req, id: n });
    return p;
  };
  const control = { buffer: new SharedArrayBuffer(ControlWord.COUNT * 4) };
  return { backend, out, ask, control, ctl: new Int32Array(control.buffer) };
}

function errorOf(r: VhostReply): string {
  return r.ok ? "ok" : r.code;
}

describe("VhostBackend control protocol", () => {
  it("refuses every request before SET_OWNER with vhost-bad-state, then accepts SET_OWNER once", async () => {
    const h = harness();
    expect(errorOf(await h.ask({ type: "GET_FEATURES" }))).toBe("vhost-bad-state");
    expect(errorOf(await h.ask({ type: "SET_VRING_NUM", index: 0, num: 8 }))).toBe(
      "vhost-bad-state",
    );
    expect(errorOf(await h.ask({ type: "SET_OWNER", control: h.control }))).toBe("ok");
    expect(errorOf(await h.ask({ type: "SET_OWNER", control: h.control }))).toBe("vhost-bad-state");
  });

  it("answers GET_FEATURES with the model's features plus VERSION_1", async () => {
    const model = new BlkDevice(new MemoryDisk(new Uint8Array(4096)));
    const h = harness(model);
    await h.ask({ type: "SET_OWNER", control: h.control });
    const r = await h.ask({ type: "GET_FEATURES" });
    expect(r.ok && r.value).toBe(model.features | (1n << 32n));
  });

  it("refuses SET_FEATURES with bits the model does not offer (vhost EOPNOTSUPP)", async () => {
    const h = harness();
    await h.ask({ type: "SET_OWNER", control: h.control });
    const r = await h.ask({ type: "SET_FEATURES", features: 1n << 60n });
    expect(r.ok).toBe(false);
    expect(!r.ok && r.message).toMatch(/bits 0x1000000000000000 are not supported/);
  });

  it("refuses bad indices, sizes, addresses, doorbells and memory tables with vhost-bad-argument", async () => {
    const h = harness();
    await h.ask({ type: "SET_OWNER", control: h.control });
    const bad = [
      { type: "SET_VRING_NUM", index: 1, num: 8 },
      { type: "SET_VRING_NUM", index: 0, num: 0 },
      { type: "SET_VRING_NUM", index: 0, num: 512 },
      { type: "SET_VRING_ADDR", index: 0, desc: -1, driver: 0, device: 0 },
      { type: "SET_VRING_BASE", index: 0, state: { availIdx: 70000, usedIdx: 0 } },
      { type: "SET_VRING_KICK", index: 0, doorbell: { buffer: new ArrayBuffer(4), byteOffset: 0 } },
      { type: "SET_MEM_TABLE", regions: [] },
      {
        type: "SET_MEM_TABLE",
        regions: [{ guestBase: 0, size: 4096, buffer: new ArrayBuffer(4096) }],
      },
      { type: "NO_SUCH_REQUEST" },
    ];
    for (const req of bad) expect(errorOf(await h.ask(req)), req.type).toBe("vhost-bad-argument");
  });

  it("refuses SET_VRING_ENABLE before the ring is fully described, and DRIVER_OK before the memory table", async () => {
    const h = harness();
    await h.ask({ type: "SET_OWNER", control: h.control });
    expect(errorOf(await h.ask({ type: "SET_VRING_ENABLE", index: 0, enable: true }))).toBe(
      "vhost-bad-state",
    );
    expect(
      errorOf(await h.ask({ type: "SET_STATUS", status: DeviceStatus.DRIVER_OK, epoch: 0 })),
    ).toBe("vhost-bad-state");
  });

  it("reports a failing model factory as vhost-factory on SET_OWNER", async () => {
    const out: VhostMessage[] = [];
    const backend = new VhostBackend(Promise.reject(new Error("no disk")), (m) => out.push(m));
    backend.handle({ type: "SET_OWNER", id: 7, control: { buffer: new SharedArrayBuffer(32) } });
    await new Promise((r) => setTimeout(r, 10));
    expect(out).toEqual([
      {
        type: "reply",
        id: 7,
        ok: false,
        code: "vhost-factory",
        message: "the model factory failed: no disk",
      },
    ]);
  });

  it("ignores messages without a numeric id and a string type", () => {
    const h = harness();
    for (const m of [null, 3, "x", { type: "GET_FEATURES" }, { id: "1", type: "GET_FEATURES" }]) {
      h.backend.handle(m);
    }
    expect(h.out).toEqual([]);
  });
});

/** A BlkDevice description whose kicks and interrupt status are offloaded, like VhostDevice's. */
class OffloadedBlk extends BlkDevice {
  readonly notifiers: DeviceNotifiers;
  constructor(sectors: number, notifiers: DeviceNotifiers) {
    super(new MemoryDisk(new Uint8Array(sectors * 512)));
    this.notifiers = notifiers;
  }
}

async function liveBlk(
  sectors = 256,
  disk?: BlockBackend,
  drainTimeoutMs?: number,
  o: { usedBatch?: number; weight?: number; eventIdx?: boolean } = {},
) {
  const memory = createGuestMemory({ size: 0x200000 });
  const kick = new SharedDoorbell();
  const call = new SharedDoorbell();
  const h = harness(
    new BlkDevice(disk ?? new MemoryDisk(new Uint8Array(sectors * 512))),
    drainTimeoutMs,
    {
      ...(o.usedBatch === undefined ? {} : { usedBatch: o.usedBatch }),
      ...(o.weight === undefined ? {} : { weight: o.weight }),
    },
  );
  const isr = h.ctl.subarray(ControlWord.ISR, ControlWord.ISR + 1);
  const mmio = new MmioDevice(new OffloadedBlk(sectors, { kicks: [kick], interruptStatus: isr }), {
    memory,
  });
  const transport = new MmioDriverTransport({
    read: (o, s) => mmio.read(o, s),
    write: (o, s, v) => mmio.write(o, s, v),
  });
  const driver = new BlkDriver(transport, memory, new SlabAllocator(0x100000, 4096, 64), {
    ringBase: 0x10000,
    queueSize: 64,
    ...(o.eventIdx === undefined ? {} : { eventIdx: o.eventIdx }),
  });
  const l = mmio.core.queueLayout(0)!;
  const setup: Req[] = [
    { type: "SET_OWNER", control: h.control },
    { type: "SET_FEATURES", features: mmio.core.features },
    { type: "SET_MEM_TABLE", regions: memory.regions.map((r) => ({ ...r })) },
    { type: "SET_VRING_NUM", index: 0, num: l.size },
    { type: "SET_VRING_ADDR", index: 0, desc: l.desc, driver: l.driver, device: l.device },
    { type: "SET_VRING_KICK", index: 0, doorbell: kick.handle },
    { type: "SET_VRING_CALL", index: 0, doorbell: call.handle },
    { type: "SET_VRING_ENABLE", index: 0, enable: true },
    { type: "SET_STATUS", status: DeviceStatus.DRIVER_OK, epoch: 0 },
  ];
  for (const req of setup) expect(errorOf(await h.ask(req)), req.type).toBe("ok");
  const settle = async <T>(p: Promise<T>): Promise<T> => {
    let done = false;
    const tracked = p.finally(() => {
      done = true;
    });
    tracked.catch(() => {});
    for (let i = 0; i < 2000 && !done; i++) {
      await call.wait(5);
      call.take();
      driver.onInterrupt();
    }
    return tracked;
  };
  return { ...h, memory, mmio, driver, kick, call, settle, model: h.backend.model as BlkDevice };
}

describe("VhostBackend data plane (in-thread)", () => {
  it("serves blk writes and reads through the kick doorbell, never calling the description's onQueueNotify", async () => {
    const t = await liveBlk();
    const data = new Uint8Array(8192).map((_, i) => (i * 7) & 0xff);
    await t.settle(t.driver.write(16, data));
    expect(await t.settle(t.driver.read(16, 8192))).toEqual(data);
    expect(t.model.stats.ok).toBe(2);
    expect((t.mmio.core.model as OffloadedBlk).stats.requests).toBe(0);
    expect(Atomics.load(t.ctl, ControlWord.KICKS_SEEN)).toBeGreaterThan(0);
    expect(Atomics.load(t.ctl, ControlWord.INTERRUPTS)).toBeGreaterThan(0);
  });

  it("§4.2.2: sets InterruptStatus bit 0 in the shared word before ringing the call doorbell", async () => {
    const t = await liveBlk();
    const p = t.driver.read(0, 512);
    await t.call.wait(1000);
    expect(t.mmio.core.interruptStatus & MmioInterrupt.USED_BUFFER).toBe(MmioInterrupt.USED_BUFFER);
    await t.settle(p);
    expect(t.mmio.core.interruptStatus).toBe(0);
  });

  it("GET_VRING_BASE stops the ring after in-flight requests complete and returns the next avail index", async () => {
    const t = await liveBlk();
    const writes = Array.from({ length: 10 }, (_, i) =>
      t.driver.write(i * 8, new Uint8Array(4096).fill(i)),
    );
    await t.settle(Promise.all(writes));
    const r = await t.ask({ type: "GET_VRING_BASE", index: 0 });
    expect(r.ok && r.value).toEqual({ availIdx: 10, usedIdx: 10, availWrap: true, usedWrap: true });
    // Stopped: a new request is not served until the ring is enabled again.
    const p = t.driver.read(0, 4096);
    await new Promise((res) => setTimeout(res, 20));
    expect(t.model.stats.requests).toBe(10);
    expect(errorOf(await t.ask({ type: "SET_VRING_NUM", index: 0, num: 64 }))).toBe("ok");
    expect(errorOf(await t.ask({ type: "SET_VRING_BASE", index: 0, state: r.ok && r.value }))).toBe(
      "ok",
    );
    expect(errorOf(await t.ask({ type: "SET_VRING_ENABLE", index: 0, enable: true }))).toBe("ok");
    expect(await t.settle(p)).toEqual(new Uint8Array(4096).fill(0));
  });

  it("refuses to change a running ring with vhost-bad-state", async () => {
    const t = await liveBlk();
    expect(errorOf(await t.ask({ type: "SET_VRING_NUM", index: 0, num: 32 }))).toBe(
      "vhost-bad-state",
    );
    expect(errorOf(await t.ask({ type: "SET_FEATURES", features: 0n }))).toBe("vhost-bad-state");
  });

  it("stops touching guest memory once the front-end bumped EPOCH (device reset fence)", async () => {
    const t = await liveBlk();
    await t.settle(t.driver.write(0, new Uint8Array(512).fill(1)));
    Atomics.add(t.ctl, ControlWord.EPOCH, 1);
    expect(Atomics.load(t.ctl, ControlWord.BUSY)).toBe(0);
    const before = t.model.stats.requests;
    t.driver.read(0, 512).catch(() => {});
    await new Promise((res) => setTimeout(res, 20));
    expect(t.model.stats.requests).toBe(before);
    expect(Atomics.load(t.ctl, ControlWord.INTERRUPTS)).toBe(1);
  });

  it.each([
    ["a synchronous back-end and usedBatch 8 interrupt 3 times", true, 8, 3],
    ["a synchronous back-end and usedBatch 0 interrupt once", true, 0, 1],
    ["an asynchronous back-end and usedBatch 8 interrupt once", false, 8, 1],
  ] as const)(
    "usedBatch: 24 requests served in one kick with %s",
    async (_name, synchronous, usedBatch, interrupts) => {
      // Without EVENT_IDX a decision notifies whenever buffers were used since the last one, so
      // the count shows when decisions were made: after each 8 buffers a single call of the
      // model used (the end of the turn then finds nothing new), or only at the end of the
      // turn. An asynchronous back-end's completions each come in a call of their own. (24
      // writes of 512 bytes take 48 of the driver's 64 slots: all are on the ring before the
      // back-end runs.)
      const disk = new MemoryDisk(new Uint8Array(256 * 512), { synchronous });
      const t = await liveBlk(256, disk, undefined, { usedBatch, eventIdx: false });
      const writes = Array.from({ length: 24 }, (_, i) =>
        t.driver.write(i, new Uint8Array(512).fill(i + 1)),
      );
      await t.settle(Promise.all(writes));
      expect(t.model.stats.ok).toBe(24);
      expect(Atomics.load(t.ctl, ControlWord.INTERRUPTS)).toBe(interrupts);
      for (let i = 0; i < 24; i++) expect(disk.bytes[i * 512]).toBe(i + 1);
    },
  );

  it("a kick's call of the model takes at most `weight` chains; the ring is served again after a turn of the event loop", async () => {
    // A synchronous back-end frees each request's slot at once, so without the weight one call
    // would go on for as long as the driver kept the ring fed.
    const disk = new MemoryDisk(new Uint8Array(256 * 512), { synchronous: true });
    const t = await liveBlk(256, disk, undefined, { weight: 8 });
    const served: number[] = [];
    const model = t.model;
    const notify = model.onQueueNotify.bind(model);
    model.onQueueNotify = (index) => {
      const before = model.stats.requests;
      notify(index);
      served.push(model.stats.requests - before);
    };
    const writes = Array.from({ length: 20 }, (_, i) =>
      t.driver.write(i, new Uint8Array(512).fill(i + 1)),
    );
    await t.settle(Promise.all(writes));
    expect(served).toEqual([8, 8, 4]);
    for (let i = 0; i < 20; i++) expect(disk.bytes[i * 512]).toBe(i + 1);
  });

  it("GET_VRING_BASE gives up after drainTimeoutMs when a request never completes, with vhost-drain-timeout", async () => {
    const stuck = new MemoryDisk(new Uint8Array(256 * 512));
    stuck.read = () => new Promise(() => {});
    const t = await liveBlk(256, stuck, 50);
    t.driver.read(0, 512).catch(() => {});
    await until(() => t.model.inFlight === 1);
    const r = await t.ask({ type: "GET_VRING_BASE", index: 0 });
    expect(errorOf(r)).toBe("vhost-drain-timeout");
    expect(!r.ok && r.message).toMatch(/1 requests in flight after 50 ms/);
  });

  it("a queue disable (SET_VRING_ENABLE false) after an EPOCH bump resumes serving under the epoch it carries", async () => {
    const t = await liveBlk();
    await t.settle(t.driver.write(0, new Uint8Array(512).fill(9)));
    const epoch = Atomics.add(t.ctl, ControlWord.EPOCH, 1) + 1;
    const r = await t.ask({ type: "SET_VRING_ENABLE", index: 0, enable: false, epoch });
    expect(errorOf(r)).toBe("ok");
    const base = await t.ask({ type: "GET_VRING_BASE", index: 0 });
    expect(base.ok && base.value).toEqual({
      availIdx: 1,
      usedIdx: 1,
      availWrap: true,
      usedWrap: true,
    });
    expect(errorOf(await t.ask({ type: "SET_VRING_ENABLE", index: 0, enable: true }))).toBe("ok");
    expect(await t.settle(t.driver.read(0, 512))).toEqual(new Uint8Array(512).fill(9));
  });
});

async function until(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 1000 && !cond(); i++) await new Promise((r) => setTimeout(r, 1));
  expect(cond()).toBe(true);
}
