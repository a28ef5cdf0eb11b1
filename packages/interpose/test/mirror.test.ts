import { MemoryDisk } from "@virtio-ts/backend-disk";
import { describe, expect, it } from "vitest";
import { MirrorBackend, mirror } from "../src/index.js";
import { Faulty } from "./helpers/mirror-faults.js";
import { settle } from "./helpers/rate-limit-clock.js";

const SECTORS = 64;

function members(n: number): { disks: MemoryDisk[]; faulty: Faulty[] } {
  const disks = Array.from({ length: n }, () => MemoryDisk.ofSize(SECTORS * 512));
  return { disks, faulty: disks.map((d) => new Faulty(d)) };
}

function block(fill: number, sectors = 1): Uint8Array {
  return new Uint8Array(sectors * 512).fill(fill);
}

function same(a: MemoryDisk, b: MemoryDisk): boolean {
  return Buffer.compare(a.bytes, b.bytes) === 0;
}

/** Track whether a promise has settled, and how. */
function watch(p: Promise<unknown>): { state: string } {
  const w = { state: "pending" };
  p.then(
    () => {
      w.state = "resolved";
    },
    (e: { code?: string }) => {
      w.state = `rejected ${e.code}`;
    },
  );
  return w;
}

describe("mirror", () => {
  it("writes, zeroes and discards on every member and reads from the primary", async () => {
    const { disks, faulty } = members(3);
    const m = mirror(faulty);
    expect([m.capacity, m.ackCount, m.readMember]).toEqual([SECTORS, 3, 0]);
    await m.write(4, [block(1, 2), block(2)]);
    await m.writeZeroes(5, 1, false);
    await m.discard(6, 1);
    await m.flush();
    expect(same(disks[0]!, disks[1]!) && same(disks[0]!, disks[2]!)).toBe(true);
    expect([disks[2]!.bytes[4 * 512], disks[2]!.bytes[5 * 512], disks[2]!.bytes[6 * 512]]).toEqual([
      1, 0, 0,
    ]);
    const back = new Uint8Array(512);
    await m.read(4, [back]);
    expect(back[0]).toBe(1);
    expect(faulty.map((f) => f.log.filter((l) => l.startsWith("read")).length)).toEqual([1, 0, 0]);
    expect(faulty[1]!.log).toEqual(["write 4", "writeZeroes 5 1", "discard 6 1", "flush"]);
  });

  it('with ack "all" settles a write only after every member, reading guest memory in place', async () => {
    const { disks, faulty } = members(2);
    const m = mirror(faulty, { ack: "all" });
    faulty[1]!.holding.add("write");
    const guest = block(7);
    const w = watch(m.write(0, [guest]));
    await settle();
    expect(w.state).toBe("pending");
    expect(disks[0]!.bytes[0]).toBe(7);
    faulty[1]!.release();
    await settle();
    expect(w.state).toBe("resolved");
    expect([disks[1]!.bytes[0], m.stats.earlyAcks]).toEqual([7, 0]);
  });

  it("with a quorum acknowledges before a slow replica and never reads guest memory after that", async () => {
    const { disks, faulty } = members(3);
    const m = mirror(faulty, { ack: "quorum" });
    expect(m.ackCount).toBe(2);
    faulty[2]!.holding.add("write");
    const guest = block(0x11);
    const w = watch(m.write(3, [guest.subarray(0, 100), guest.subarray(100)]));
    await settle();
    expect(w.state).toBe("resolved");
    // The guest reuses its buffer after the completion; the slow replica must still get 0x11.
    guest.fill(0xee);
    faulty[2]!.release();
    await settle();
    expect(disks[2]!.bytes.subarray(3 * 512, 4 * 512).every((b) => b === 0x11)).toBe(true);
    expect(same(disks[0]!, disks[2]!)).toBe(true);
    expect(m.stats.earlyAcks).toBe(1);
  });

  it("waits for every member instead of copying once the lag budget is spent", async () => {
    const { disks, faulty } = members(3);
    const m = mirror(faulty, { ack: "quorum", maxLagBytes: 512 });
    faulty[2]!.holding.add("write");
    const first = watch(m.write(0, [block(1)]));
    const guest = block(2);
    const second = watch(m.write(1, [guest]));
    await settle();
    expect([first.state, second.state]).toEqual(["resolved", "pending"]);
    faulty[2]!.release();
    await settle();
    expect(second.state).toBe("resolved");
    expect([disks[2]!.bytes[0], disks[2]!.bytes[512]]).toEqual([1, 2]);
  });

  it("marks a failing replica failed, tracks its missed writes as dirty extents, and resync brings it back", async () => {
    const { disks, faulty } = members(3);
    const m = mirror(faulty, { ack: "quorum", extentSectors: 8 });
    await m.write(0, [block(9, SECTORS)]);
    faulty[1]!.failing.add("write");
    await m.write(2, [block(3)]); // extent 0: fails on member 1, acknowledged by 0 and 2
    faulty[1]!.failing.delete("write");
    expect([m.state(1), m.dirtyExtents(1)]).toEqual(["failed", 1]);
    await m.write(17, [block(4, 8)]); // extents 2 and 3, not sent to member 1
    await m.writeZeroes(40, 1, false); // extent 5
    expect(m.dirtyExtents(1)).toBe(4);
    expect(faulty[1]!.log.filter((l) => l.startsWith("write")).length).toBe(2);
    expect(same(disks[0]!, disks[1]!)).toBe(false);
    const result = await m.resync();
    expect(result).toEqual({ rejoined: [1], stillFailed: [], copiedExtents: 4 });
    expect([m.state(1), m.dirtyExtents(1)]).toEqual(["healthy", 0]);
    expect(same(disks[0]!, disks[1]!)).toBe(true);
    // Only the dirty extents were copied: 4 extent writes, then the flush.
    expect(faulty[1]!.log.slice(-5)).toEqual([
      "write 0",
      "write 16",
      "write 24",
      "write 40",
      "flush",
    ]);
  });

  it('rejects writes with "all" while a member is failed, without writing anything', async () => {
    const { disks, faulty } = members(2);
    const m = mirror(faulty);
    faulty[1]!.failing.add("write");
    await expect(m.write(0, [block(1)])).rejects.toMatchObject({ code: "io" });
    // The failed write reached the primary before the replica failed: a resync repairs it.
    expect(m.state(1)).toBe("failed");
    await expect(m.write(1, [block(2)])).rejects.toMatchObject({ code: "io" });
    expect(disks[0]!.bytes[512]).toBe(0);
    faulty[1]!.failing.delete("write");
    await m.resync();
    await m.write(1, [block(2)]);
    expect(same(disks[0]!, disks[1]!)).toBe(true);
    expect(m.stats.rejected).toBe(2);
  });

  it("fails reads over to a healthy replica when the primary cannot read", async () => {
    const { disks, faulty } = members(2);
    const m = mirror(faulty, { ack: 1 });
    await m.write(10, [block(0x5a)]);
    faulty[0]!.failing.add("read");
    const back = new Uint8Array(512);
    await m.read(10, [back]);
    expect(back.every((b) => b === 0x5a)).toBe(true);
    expect([m.state(0), m.readMember, m.stats.readFailovers, m.dirtyExtents(0)]).toEqual([
      "failed",
      1,
      1,
      1,
    ]);
    // Writes go on to the replica alone (ack 1) and the primary catches up on resync.
    await m.write(11, [block(0x6b)]);
    faulty[0]!.failing.delete("read");
    expect(await m.resync()).toMatchObject({ rejoined: [0] });
    expect(same(disks[0]!, disks[1]!)).toBe(true);
  });

  it("after a failover, serves reads only once writes in flight to the new read member landed", async () => {
    const { faulty } = members(2);
    const m = mirror(faulty, { ack: 1 });
    faulty[1]!.holding.add("write");
    await m.write(0, [block(8)]); // acknowledged by the primary alone
    m.markFailed(0);
    const back = new Uint8Array(512);
    const r = watch(m.read(0, [back]));
    await settle();
    expect(r.state).toBe("pending");
    faulty[1]!.release();
    await settle();
    expect([r.state, back[0]]).toEqual(["resolved", 8]);
  });

  it("flushes each member only after the writes issued to it before the flush have landed", async () => {
    const { faulty } = members(2);
    const m = mirror(faulty, { ack: 1 });
    faulty[1]!.holding.add("write");
    await m.write(0, [block(1)]);
    const f = watch(m.flush());
    await settle();
    expect(f.state).toBe("resolved"); // the primary's flush satisfies ack 1
    expect(faulty[1]!.log).toEqual([]);
    faulty[1]!.release();
    await settle();
    expect(faulty[1]!.log).toEqual(["write 0", "flush"]);
  });

  it("treats a failed flush as losing everything on that member", async () => {
    const { faulty } = members(3);
    const m = mirror(faulty, { ack: 2, extentSectors: 16 });
    faulty[2]!.failing.add("flush");
    await m.flush();
    expect([m.state(2), m.dirtyExtents(2)]).toEqual(["failed", 4]);
    faulty[2]!.failing.delete("flush");
    expect(await m.resync()).toEqual({ rejoined: [2], stillFailed: [], copiedExtents: 4 });
  });

  it("keeps serving writes during a resync and ends with identical members", async () => {
    const { disks, faulty } = members(2);
    const m = mirror(faulty, { ack: 1, extentSectors: 4 });
    m.markFailed(1);
    for (let s = 0; s < SECTORS; s += 2) await m.write(s, [block(s + 1)]);
    expect(m.dirtyExtents(1)).toBe(16);
    const sync = m.resync();
    const writes: Promise<void>[] = [];
    for (let s = 0; s < SECTORS; s += 3) writes.push(m.write(s, [block(200 + (s % 50))]));
    await Promise.all(writes);
    expect(await sync).toMatchObject({ rejoined: [1], stillFailed: [] });
    expect(same(disks[0]!, disks[1]!)).toBe(true);
    expect(disks[1]!.bytes[3 * 512]).toBe(203);
  });

  it("reports a member that fails again during resync and keeps its dirty extents", async () => {
    const { faulty } = members(2);
    const m = mirror(faulty, { ack: 1, extentSectors: 8 });
    m.markFailed(1);
    await m.write(0, [block(1)]);
    await m.write(20, [block(1)]);
    faulty[1]!.failing.add("write");
    expect(await m.resync()).toEqual({ rejoined: [], stillFailed: [1], copiedExtents: 0 });
    expect([m.state(1), m.dirtyExtents(1)]).toEqual(["failed", 2]);
  });

  it("rejects out-of-range requests with BackendError out-of-range", async () => {
    const { faulty } = members(2);
    const m = mirror(faulty);
    await expect(m.write(SECTORS, [block(1)])).rejects.toMatchObject({ code: "out-of-range" });
    await expect(m.read(SECTORS - 1, [block(0, 2)])).rejects.toMatchObject({
      code: "out-of-range",
    });
    await expect(m.discard(0, SECTORS + 1)).rejects.toMatchObject({ code: "out-of-range" });
    expect(faulty[0]!.log).toEqual([]);
  });

  it("rejects bad configuration with errors naming the argument", () => {
    const d = () => MemoryDisk.ofSize(SECTORS * 512);
    expect(() => mirror([])).toThrow(/backends/);
    expect(() => mirror([d(), d()], { ack: 3 })).toThrow(/options\.ack/);
    expect(() => mirror([d(), d()], { ack: 0 })).toThrow(/options\.ack/);
    expect(() => mirror([d()], { ack: "most" as "all" })).toThrow(/options\.ack/);
    expect(() => mirror([d(), MemoryDisk.ofSize(512)])).toThrow(/backends\[1\]\.capacity/);
    expect(() => mirror([d(), MemoryDisk.ofSize(SECTORS * 512, { readOnly: true })])).toThrow(
      /backends\[1\] is read-only/,
    );
    expect(() => mirror([d()], { extentSectors: 0 })).toThrow(/options\.extentSectors/);
    expect(() => mirror([d()], { maxLagBytes: -1 })).toThrow(/options\.maxLagBytes/);
    expect(new MirrorBackend([d(), d(), d(), d(), d()], { ack: "quorum" }).ackCount).toBe(3);
  });
});
