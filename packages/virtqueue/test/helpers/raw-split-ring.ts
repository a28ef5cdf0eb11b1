// Writes split-ring structures straight into guest memory, as a (possibly hostile) driver
// would, without going through SplitDriverQueue.
import { createGuestMemory, type GuestMemoryMap } from "@virtio-ts/memory";
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
  readonly mem: GuestMemoryMap;
  readonly layout: QueueLayout;
  availIdx = 0;

  constructor(size = 8, memSize = 0x10000) {
    this.mem = createGuestMemory({ size: memSize, shared: false });
    this.layout = { size, desc: 0x1000, driver: 0x1000 + 16 * size, device: 0x3000 };
  }

  /** Data buffers for tests start here. */
  static readonly DATA = 0x4000;

  writeDesc(i: number, d: RawDesc, table = this.layout.desc): void {
    const at = table + i * 16;
    this.mem.writeU64(at, BigInt(d.addr));
    this.mem.writeU32(at + 8, d.len);
    this.mem.writeU16(at + 12, d.flags ?? 0);
    this.mem.writeU16(at + 14, d.next ?? 0);
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
