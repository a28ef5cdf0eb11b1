// A hand-driven vhost-user-blk front-end for back-end tests: our VhostUserFrontend sends the
// messages QEMU would, and a SplitDriverQueue in shared memory carries raw virtio-blk requests
// (header, data, status), so a test can stop anywhere — mid-request, between back-ends.
import type { BlockBackend } from "@virtio-ts/devices";
import { BlkRequestType, Feature, featureMask } from "@virtio-ts/spec";
import { NO_RING_FEATURES, SplitDriverQueue } from "@virtio-ts/virtqueue";
import {
  createSharedMemory,
  EventFd,
  VhostUserProtocolFeature as PF,
  type SharedGuestMemory,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserFrontend,
} from "../src/index.js";

export const RING = 0x10000;
export const DESC = RING;
export const AVAIL = RING + 0x1000;
export const USED = RING + 0x2000;
export const BUFFERS = 0x100000;
export const QUEUE_SIZE = 16;

/** The protocol features these tests ask for. */
export const TEST_PROTOCOL =
  (1n << BigInt(PF.REPLY_ACK)) |
  (1n << BigInt(PF.CONFIG)) |
  (1n << BigInt(PF.INFLIGHT_SHMFD)) |
  (1n << BigInt(PF.BACKEND_REQ)) |
  (1n << BigInt(PF.STATUS)) |
  (1n << BigInt(PF.CONFIGURE_MEM_SLOTS)) |
  (1n << BigInt(PF.RESET_DEVICE));

/** One raw blk request's slot in guest memory: header at +0, data at +0x1000, status at +0xff0. */
export interface Slot {
  readonly header: number;
  readonly data: number;
  readonly status: number;
}

export function slot(i: number): Slot {
  const base = BUFFERS + i * 0x2000;
  return { header: base, status: base + 0xff0, data: base + 0x1000 };
}

/** A front-end connection over `mem` with ring 0 ready to carry raw requests. */
export class RawBlk {
  readonly fe: VhostUserFrontend;
  readonly mem: SharedGuestMemory;
  readonly kick = new EventFd();
  readonly call = new EventFd();
  readonly queue: SplitDriverQueue<number>;

  /**
   * @param queue - the driver queue of an earlier connection (its ring stays as it is);
   *   default a new one (which zeroes the ring)
   */
  constructor(path: string, mem: SharedGuestMemory, queue?: SplitDriverQueue<number>) {
    this.fe = VhostUserFrontend.connect(path, { replyTimeoutMs: 10_000 });
    this.mem = mem;
    this.queue =
      queue ??
      new SplitDriverQueue<number>(
        mem.memory,
        { size: QUEUE_SIZE, desc: DESC, driver: AVAIL, device: USED },
        NO_RING_FEATURES,
      );
  }

  /** SET_OWNER, features (VERSION_1 and bit 30, plus `extra`), protocol features. */
  async handshake(extra = 0n, protocol = TEST_PROTOCOL): Promise<void> {
    await this.fe.setOwner();
    await this.fe.getFeatures();
    await this.fe.getProtocolFeatures();
    await this.fe.setProtocolFeatures(protocol);
    await this.fe.setFeatures(
      featureMask(Feature.VERSION_1) | featureMask(VHOST_USER_F_PROTOCOL_FEATURES) | extra,
    );
  }

  /** SET_MEM_TABLE, then ring 0: NUM, BASE, ADDR, KICK, CALL, ENABLE. */
  async startRing(base = 0): Promise<void> {
    await this.fe.setMemTable(this.mem.regions);
    await this.fe.setVringNum(0, QUEUE_SIZE);
    await this.fe.setVringBase(0, base);
    const u = (a: number): bigint => this.mem.userAddress(a, 1)!;
    await this.fe.setVringAddr({
      index: 0,
      flags: 0,
      desc: u(DESC),
      avail: u(AVAIL),
      used: u(USED),
      log: 0n,
    });
    await this.fe.setVringKick(0, this.kick.fd);
    await this.fe.setVringCall(0, this.call.fd);
    await this.fe.setVringEnable(0, true);
  }

  /** Post a write of `data` (whole sectors) at `sector` in slot `i`; kick. */
  write(i: number, sector: number, data: Uint8Array): void {
    const s = slot(i);
    const m = this.mem.memory;
    m.writeU32(s.header, BlkRequestType.OUT);
    m.writeU32(s.header + 4, 0);
    m.writeU64(s.header + 8, BigInt(sector));
    m.write(s.data, data);
    m.writeU8(s.status, 0xff);
    this.queue.add(
      [
        { addr: s.header, len: 16 },
        { addr: s.data, len: data.length },
      ],
      [{ addr: s.status, len: 1 }],
      i,
    );
    if (this.queue.publish()) this.kick.signal();
  }

  /** Used entries so far: slot → status byte. */
  reap(): Map<number, number> {
    const out = new Map<number, number>();
    for (let t = this.queue.reap(); t !== undefined; t = this.queue.reap()) {
      out.set(t, this.mem.memory.readU8(slot(t).status));
    }
    return out;
  }

  /** `used.idx` as the device last published it. */
  usedIdx(): number {
    return this.mem.memory.readU16(USED + 2);
  }

  close(): void {
    this.fe.close();
    this.kick.close();
    this.call.close();
  }
}

/** Resolve once `cond()` holds (polled every 5 ms, at most `ms`). */
export async function until(cond: () => boolean, ms = 5000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** A disk in memory whose writes can be held (they then wait until released) and that can grow. */
export class HoldDisk implements BlockBackend {
  readonly bytes: Uint8Array;
  capacity: number;
  readonly blockSize = 512;
  readonly readOnly = false;
  hold = false;
  readonly held: (() => void)[] = [];
  writes = 0;

  constructor(bytes: number, capacity = bytes / 512) {
    this.bytes = new Uint8Array(bytes);
    this.capacity = capacity;
  }

  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    let at = sector * 512;
    for (const v of iovecs) {
      v.set(this.bytes.subarray(at, at + v.length));
      at += v.length;
    }
  }

  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    if (this.hold) await new Promise<void>((r) => this.held.push(r));
    let at = sector * 512;
    for (const v of iovecs) {
      this.bytes.set(v, at);
      at += v.length;
    }
    this.writes++;
  }

  async flush(): Promise<void> {}
  async discard(): Promise<void> {}
  async writeZeroes(): Promise<void> {}
}

export function sharedMemory(): SharedGuestMemory {
  return createSharedMemory({ size: 2 << 20 });
}

export function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed * 31 + i * 7) & 0xff;
  return b;
}
