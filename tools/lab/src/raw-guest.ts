// A virtio-blk guest whose whole state lives in guest memory, as a real guest's does in its
// RAM: the ring, a request table, the headers, the data and the driver's own indices. Copy the
// memory to another process and the guest goes on there, with no JavaScript object to carry —
// which is what moving a running VM means. Split ring, one sector per request, kicks always.
import type { GuestMemory } from "@virtio-ts/memory";
import { BlkRequestType, BlkStatus, MmioReg, SplitDescFlags } from "@virtio-ts/spec";
import { type MmioDevice, MmioDriverTransport } from "@virtio-ts/transport";
import { ringLayoutAt } from "@virtio-ts/virtqueue";

/** Queue size of the guest's ring (three descriptors per request). */
export const RAW_QUEUE_SIZE = 256;
/** The most requests the guest can have (one set of three descriptors each). */
export const RAW_MAX_REQUESTS = Math.floor(RAW_QUEUE_SIZE / 3);
/** Guest RAM the guest needs. */
export const RAW_GUEST_RAM = 0x100000;

const STATE = 0x0; // u16 nextAvail, u16 lastUsed, u32 requests posted
const RING = ringLayoutAt(0x1000, RAW_QUEUE_SIZE);
const TABLE = 0x8000; // per request: u8 kind, u8 completions, u8 status seen, u8 wrong data, u32 sector
const HEADERS = 0xa000; // per request: 16-byte header, then the status byte at +16 (24 apart)
const DATA = 0x20000; // per request: one 512-byte sector
const SECTOR = 512;

/** The byte pattern a write of request `id` puts in every byte of its sector. */
export function writePattern(id: number): number {
  return (0x40 + id * 7) & 0xff;
}

/** What a guest saw of its requests (from its memory). */
export interface RawGuestReport {
  /** Requests posted. */
  readonly posted: number;
  /** Requests completed exactly once. */
  readonly once: number;
  /** Requests never completed. */
  readonly missing: number;
  /** Requests completed more than once (a used entry for a finished request). */
  readonly duplicated: number;
  /** Completions whose status was not OK. */
  readonly failed: number;
  /** Reads that came back with bytes other than `expected`'s. */
  readonly wrongData: number;
}

/**
 * The guest's driver code. It keeps no state of its own: every method reads and writes the
 * guest memory it was given, so a new instance over a copy of that memory carries on.
 */
export class RawBlkGuest {
  readonly memory: GuestMemory;
  readonly #notify: () => void;

  /**
   * @param memory - the guest's RAM
   * @param notify - the guest's QueueNotify write (an MMIO exit to whichever device serves it)
   */
  constructor(memory: GuestMemory, notify: () => void) {
    this.memory = memory;
    this.#notify = notify;
  }

  /**
   * Boot: initialise the device through its registers (features: VERSION_1 only, so no
   * EVENT_IDX) and the guest's memory.
   * @param mmio - the device at the guest's MMIO window
   */
  static boot(memory: GuestMemory, mmio: MmioDevice): RawBlkGuest {
    const t = new MmioDriverTransport({
      read: (o, s) => mmio.read(o, s),
      write: (o, s, v) => mmio.write(o, s, v),
    });
    t.negotiate((offered) => offered & (1n << 32n)); // VIRTIO_F_VERSION_1
    // The transport initialises the ring memory; the guest drives the ring itself from here.
    t.setupQueue(0, memory, RING);
    t.driverOk();
    memory.fill(STATE, 8, 0);
    return new RawBlkGuest(memory, () => mmio.write(MmioReg.QUEUE_NOTIFY, 4, 0));
  }

  /** Requests posted so far. */
  get posted(): number {
    return this.memory.readU32(STATE + 4);
  }

  /**
   * Post request `id` (the next one): a read (`write` false) or a write of
   * {@link writePattern} to one sector, and kick.
   */
  post(write: boolean, sector: number): number {
    const m = this.memory;
    const id = this.posted;
    if (id >= RAW_MAX_REQUESTS) throw new RangeError("the guest's request table is full");
    const t = TABLE + id * 8;
    m.writeU8(t, write ? 1 : 0);
    m.writeU8(t + 1, 0);
    m.writeU8(t + 2, 0xff);
    m.writeU8(t + 3, 0);
    m.writeU32(t + 4, sector);
    const h = HEADERS + id * 24;
    m.writeU32(h, write ? BlkRequestType.OUT : BlkRequestType.IN);
    m.writeU32(h + 4, 0);
    m.writeU64(h + 8, BigInt(sector));
    m.writeU8(h + 16, 0xff);
    const d = DATA + id * SECTOR;
    m.fill(d, SECTOR, write ? writePattern(id) : 0);
    const desc = (i: number, addr: number, len: number, flags: number, next: number): void => {
      const at = RING.desc + i * 16;
      m.writeU64(at, BigInt(addr));
      m.writeU32(at + 8, len);
      m.writeU16(at + 12, flags);
      m.writeU16(at + 14, next);
    };
    const head = id * 3;
    desc(head, h, 16, SplitDescFlags.NEXT, head + 1);
    desc(head + 1, d, SECTOR, SplitDescFlags.NEXT | (write ? 0 : SplitDescFlags.WRITE), head + 2);
    desc(head + 2, h + 16, 1, SplitDescFlags.WRITE, 0);
    const avail = m.readU16(STATE);
    m.writeU16(RING.driver + 4 + 2 * (avail % RAW_QUEUE_SIZE), head);
    m.writeU16(RING.driver + 2, (avail + 1) & 0xffff); // avail.idx: publish
    m.writeU16(STATE, (avail + 1) & 0xffff);
    m.writeU32(STATE + 4, id + 1);
    this.#notify();
    return id;
  }

  /**
   * Reap every used entry since the last call: count the completion on its request, keep its
   * status, and for a read check the data against `expected(sector)`.
   * @returns how many used entries were reaped
   */
  reap(expected: (sector: number) => Uint8Array): number {
    const m = this.memory;
    const usedIdx = m.readU16(RING.device + 2);
    let last = m.readU16(STATE + 2);
    let n = 0;
    const buf = new Uint8Array(SECTOR);
    while (last !== usedIdx) {
      const id = m.readU32(RING.device + 4 + 8 * (last % RAW_QUEUE_SIZE)) / 3;
      last = (last + 1) & 0xffff;
      n++;
      if (!Number.isInteger(id) || id >= this.posted) continue;
      const t = TABLE + id * 8;
      m.writeU8(t + 1, m.readU8(t + 1) + 1);
      const status = m.readU8(HEADERS + id * 24 + 16);
      m.writeU8(t + 2, status);
      if (m.readU8(t) === 0) {
        m.read(DATA + id * SECTOR, buf);
        const want = expected(m.readU32(t + 4));
        if (buf.some((b, i) => b !== want[i])) m.writeU8(t + 3, 1);
      }
    }
    m.writeU16(STATE + 2, last);
    return n;
  }

  /** Requests with no completion yet. */
  get outstanding(): number {
    let n = 0;
    for (let id = 0; id < this.posted; id++) if (this.memory.readU8(TABLE + id * 8 + 1) === 0) n++;
    return n;
  }

  /** Tally the request table. */
  report(): RawGuestReport {
    const m = this.memory;
    let once = 0;
    let missing = 0;
    let duplicated = 0;
    let failed = 0;
    let wrongData = 0;
    for (let id = 0; id < this.posted; id++) {
      const t = TABLE + id * 8;
      const c = m.readU8(t + 1);
      if (c === 0) missing++;
      else if (c === 1) once++;
      else duplicated++;
      if (c > 0 && m.readU8(t + 2) !== BlkStatus.OK) failed++;
      if (m.readU8(t + 3) !== 0) wrongData++;
    }
    return { posted: this.posted, once, missing, duplicated, failed, wrongData };
  }
}
