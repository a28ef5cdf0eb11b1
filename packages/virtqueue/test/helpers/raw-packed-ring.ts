// Writes packed-ring structures straight into guest memory, as a (possibly hostile) driver or
// device would, without going through PackedDriverQueue / PackedDeviceQueue.
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import type { QueueLayout } from "@virtio-ts/virtqueue";

export const F_NEXT = 1;
export const F_WRITE = 2;
export const F_INDIRECT = 4;
export const F_AVAIL = 1 << 7;
export const F_USED = 1 << 15;

export const EV_ENABLE = 0;
export const EV_DISABLE = 1;
export const EV_DESC = 2;

export interface RawPackedDesc {
  addr: number | bigint;
  len: number;
  id?: number;
  /** Flags other than AVAIL/USED (NEXT, WRITE, INDIRECT); `offer` adds AVAIL/USED itself. */
  flags?: number;
}

/** AVAIL/USED bits of an available descriptor made with driver wrap counter `wrap` (§2.8.1). */
export function availBits(wrap: boolean): number {
  return wrap ? F_AVAIL : F_USED;
}

/** AVAIL/USED bits of a used descriptor made with device wrap counter `wrap` (§2.8.1). */
export function usedBits(wrap: boolean): number {
  return wrap ? F_AVAIL | F_USED : 0;
}

export class RawPackedRing {
  readonly mem: GuestMemory;
  readonly layout: QueueLayout;
  /** The raw driver's next ring position and wrap counter. */
  nextAvail = 0;
  availWrap = true;

  /** Data buffers for tests start here. */
  static readonly DATA = 0x4000;
  /** Indirect tables for tests start here. */
  static readonly TABLE = 0x8000;

  constructor(size = 8, memSize = 0x10000, mem?: GuestMemory) {
    this.mem = mem ?? createGuestMemory({ size: memSize, shared: false });
    this.layout = { size, desc: 0x1000, driver: 0x3000, device: 0x3004 };
  }

  /** Write descriptor `pos` of the ring verbatim (flags exactly as given). */
  writeDesc(pos: number, addr: number | bigint, len: number, id: number, flags: number): void {
    const at = this.layout.desc + pos * 16;
    this.mem.writeU64(at, BigInt(addr));
    this.mem.writeU32(at + 8, len);
    this.mem.writeU16(at + 12, id);
    this.mem.writeU16(at + 14, flags);
  }

  /** Write an indirect table entry verbatim. */
  writeTableEntry(table: number, i: number, d: RawPackedDesc): void {
    const at = table + i * 16;
    this.mem.writeU64(at, BigInt(d.addr));
    this.mem.writeU32(at + 8, d.len);
    this.mem.writeU16(at + 12, d.id ?? 0);
    this.mem.writeU16(at + 14, d.flags ?? 0);
  }

  /**
   * Make a list available at the raw driver's position, as a correct driver would: NEXT is
   * added on all but the last descriptor, AVAIL/USED for each descriptor's lap, the buffer ID
   * in every descriptor, and the first descriptor's flags written last.
   * @returns the ring position of the first descriptor.
   */
  offer(descs: RawPackedDesc[], id: number): number {
    const size = this.layout.size;
    const first = this.nextAvail;
    let firstFlags = 0;
    descs.forEach((d, i) => {
      const flags =
        (d.flags ?? 0) | (i < descs.length - 1 ? F_NEXT : 0) | availBits(this.availWrap);
      const pos = this.nextAvail;
      this.writeDesc(pos, d.addr, d.len, d.id ?? id, i === 0 ? 0 : flags);
      if (i === 0) firstFlags = flags;
      this.nextAvail++;
      if (this.nextAvail === size) {
        this.nextAvail = 0;
        this.availWrap = !this.availWrap;
      }
    });
    this.setFlags(first, firstFlags);
    return first;
  }

  setFlags(pos: number, flags: number): void {
    this.mem.writeU16(this.layout.desc + pos * 16 + 14, flags);
  }

  flags(pos: number): number {
    return this.mem.readU16(this.layout.desc + pos * 16 + 14);
  }

  id(pos: number): number {
    return this.mem.readU16(this.layout.desc + pos * 16 + 12);
  }

  len(pos: number): number {
    return this.mem.readU32(this.layout.desc + pos * 16 + 8);
  }

  addr(pos: number): bigint {
    return this.mem.readU64(this.layout.desc + pos * 16);
  }

  /** The 16 raw bytes of descriptor `pos`. */
  descBytes(pos: number): number[] {
    const out = new Uint8Array(16);
    this.mem.read(this.layout.desc + pos * 16, out);
    return [...out];
  }

  /** Write the Driver Event Suppression structure (off_wrap, flags). */
  setDriverEvent(flags: number, offWrap = 0): void {
    this.mem.writeU16(this.layout.driver, offWrap);
    this.mem.writeU16(this.layout.driver + 2, flags);
  }

  /** Write the Device Event Suppression structure (off_wrap, flags). */
  setDeviceEvent(flags: number, offWrap = 0): void {
    this.mem.writeU16(this.layout.device, offWrap);
    this.mem.writeU16(this.layout.device + 2, flags);
  }

  driverEvent(): { offWrap: number; flags: number } {
    return {
      offWrap: this.mem.readU16(this.layout.driver),
      flags: this.mem.readU16(this.layout.driver + 2),
    };
  }

  deviceEvent(): { offWrap: number; flags: number } {
    return {
      offWrap: this.mem.readU16(this.layout.device),
      flags: this.mem.readU16(this.layout.device + 2),
    };
  }
}
