// Writes split-ring structures straight into guest memory, as a (possibly hostile) driver
// would, without going through SplitDriverQueue. Offsets are the spec's (VIRTIO 1.3 §2.7):
// descriptor 16 bytes (le64 addr, le32 len, le16 flags, le16 next); avail: flags, idx,
// ring[size], used_event; used: flags, idx, {le32 id, le32 len}[size], avail_event.
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import type { QueueLayout } from "@virtio-ts/virtqueue";

export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;

export interface RawDesc {
  addr: number | bigint;
  len: number;
  flags?: number;
  next?: number;
}

export class RawSplitRing {
  readonly mem: GuestMemory;
  readonly layout: QueueLayout;
  /** The driver's next avail index (what `offer` publishes). */
  availIdx = 0;

  /** Data buffers for tests start here. */
  static readonly DATA = 0x4000;
  /** A free area for indirect tables. */
  static readonly TABLE = 0x5000;

  constructor(size = 8, memSize = 0x10000, mem?: GuestMemory) {
    this.mem = mem ?? createGuestMemory({ size: memSize, shared: false });
    const driver = 0x1000 + 16 * size;
    // Up to size 256 the rings end below DATA; larger queues need a larger memory.
    const device = Math.max(0x3000, Math.ceil((driver + 6 + 2 * size) / 0x1000) * 0x1000);
    this.layout = { size, desc: 0x1000, driver, device };
  }

  /** Write descriptor `i` of the ring's table, or of the indirect table at `table`. */
  writeDesc(i: number, d: RawDesc, table = this.layout.desc): void {
    const at = table + i * 16;
    this.mem.writeU64(at, BigInt(d.addr));
    this.mem.writeU32(at + 8, d.len);
    this.mem.writeU16(at + 12, d.flags ?? 0);
    this.mem.writeU16(at + 14, d.next ?? 0);
  }

  /** Write a whole indirect table at `table`. */
  writeTable(table: number, descs: readonly RawDesc[]): void {
    for (const [i, d] of descs.entries()) this.writeDesc(i, d, table);
  }

  /** Put `head` in the next avail slot and publish it (or only write the slot with publish=false). */
  offer(head: number, publish = true): void {
    const { size, driver } = this.layout;
    this.mem.writeU16(driver + 4 + 2 * (this.availIdx % size), head);
    this.availIdx = (this.availIdx + 1) & 0xffff;
    if (publish) this.setAvailIdx(this.availIdx);
  }

  setAvailIdx(idx: number): void {
    this.mem.writeU16(this.layout.driver + 2, idx);
  }

  setAvailFlags(flags: number): void {
    this.mem.writeU16(this.layout.driver, flags);
  }

  setUsedEvent(v: number): void {
    this.mem.writeU16(this.layout.driver + 4 + 2 * this.layout.size, v);
  }

  /** Zero the descriptor table, avail and used rings, as a driver does when it (re)starts. */
  clearRing(): void {
    const { size, desc, driver, device } = this.layout;
    this.mem.fill(desc, 16 * size, 0);
    this.mem.fill(driver, 6 + 2 * size, 0);
    this.mem.fill(device, 6 + 8 * size, 0);
    this.availIdx = 0;
  }

  usedIdx(): number {
    return this.mem.readU16(this.layout.device + 2);
  }

  usedFlags(): number {
    return this.mem.readU16(this.layout.device);
  }

  availEvent(): number {
    return this.mem.readU16(this.layout.device + 4 + 8 * this.layout.size);
  }

  usedElem(slot: number): { id: number; len: number } {
    const at = this.layout.device + 4 + 8 * slot;
    return { id: this.mem.readU32(at), len: this.mem.readU32(at + 4) };
  }
}

/**
 * A GuestMemory in front of `inner` that counts the 32-bit descriptor words a device queue
 * reads: every element read of the descriptor table view (mapped with `u32View` at
 * `layout.desc`) and every `readU32` (the split device queue reads indirect entries, and
 * nothing else, with it). Four words make one descriptor.
 */
export function countingMemory(
  inner: GuestMemory,
  layout: QueueLayout,
): { mem: GuestMemory; counter: { words: number } } {
  const counter = { words: 0 };
  const mem: GuestMemory = {
    shared: inner.shared,
    check: (a, l, k) => inner.check(a, l, k),
    readU8: (a) => inner.readU8(a),
    readU16: (a) => inner.readU16(a),
    readU32: (a) => {
      counter.words++;
      return inner.readU32(a);
    },
    readU64: (a) => inner.readU64(a),
    writeU8: (a, v) => inner.writeU8(a, v),
    writeU16: (a, v) => inner.writeU16(a, v),
    writeU32: (a, v) => inner.writeU32(a, v),
    writeU64: (a, v) => inner.writeU64(a, v),
    read: (a, d) => inner.read(a, d),
    write: (a, s) => inner.write(a, s),
    fill: (a, l, b) => inner.fill(a, l, b),
    slice: (a, l, k) => inner.slice(a, l, k),
    dataView: (a, l, k) => inner.dataView(a, l, k),
    u16View: (a, c, k) => inner.u16View(a, c, k),
    u32View: (a, c, k) => {
      const view = inner.u32View(a, c, k);
      if (a !== layout.desc) return view;
      return new Proxy(view, {
        get(target, key) {
          if (typeof key === "string" && /^\d+$/.test(key)) counter.words++;
          return Reflect.get(target, key);
        },
      });
    },
    sg: (a, l, o, k) => inner.sg(a, l, o, k),
  };
  return { mem, counter };
}

/** A GuestMemory in front of `inner` whose `check` accepts every range (for length arithmetic). */
export function permissiveMemory(inner: GuestMemory): GuestMemory {
  return new Proxy(inner, {
    get: (target, key) => {
      if (key === "check") return () => true;
      const value = Reflect.get(target, key, target);
      return typeof value === "function" ? value.bind(target) : value;
    },
  });
}
