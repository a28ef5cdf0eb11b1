// Wires a BlkDevice behind MmioDevice and drives it with MmioDriverTransport and a split
// driver queue, building virtio-blk requests by hand (there is no blk driver yet).
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import { InThreadMmio, type MmioDevice, type MmioDriverTransport } from "@virtio-ts/transport";
import type { DriverQueue, Segment } from "@virtio-ts/virtqueue";
import { BlkDevice, type BlkDeviceOptions } from "../../src/index.js";
import { TestBackend } from "./test-backend.js";

export interface Request {
  readonly token: number;
  readonly status: number;
  readonly data: number;
}

export interface SubmitOptions {
  /** Readable payload after the header (OUT data, DISCARD ranges). */
  readonly out?: Uint8Array;
  /** Writable data bytes before the status byte (IN, GET_ID), split into these lengths. */
  readonly inLens?: readonly number[];
  /** Header bytes actually offered (default 16). */
  readonly headerLen?: number;
  /** Whether to add the status byte (default true). */
  readonly statusByte?: boolean;
}

export class Harness {
  readonly memory: GuestMemory;
  readonly backend: TestBackend;
  readonly model: BlkDevice;
  readonly device: MmioDevice;
  readonly driver: MmioDriverTransport;
  readonly q: DriverQueue<number>;
  readonly negotiated: bigint;
  #next = 0x10000;
  #token = 0;

  constructor(
    backend = new TestBackend(64),
    options: BlkDeviceOptions = { queueSize: 16, serial: "virtio-ts-disk0" },
    accept: (offered: bigint) => bigint = (o) => o & ~featureMask(Feature.RING_PACKED),
  ) {
    this.memory = createGuestMemory({ size: 0x100000 });
    this.backend = backend;
    this.model = new BlkDevice(backend, options);
    const vm = new InThreadMmio(this.model, { memory: this.memory, delivery: "none" });
    this.device = vm.device;
    this.driver = vm.transport;
    this.negotiated = this.driver.negotiate(accept);
    this.q = this.driver.setupQueue<number>(0, this.memory, {
      size: 16,
      desc: 0x1000,
      driver: 0x2000,
      device: 0x3000,
    });
    this.driver.driverOk();
  }

  alloc(len: number): number {
    const a = this.#next;
    this.#next += Math.max(16, (len + 15) & ~15);
    return a;
  }

  /** Add one request (without publishing); returns where its status and data live. */
  add(type: number, sector: number | bigint, o: SubmitOptions = {}): Request {
    const hdr = this.alloc(16);
    this.memory.writeU32(hdr, type);
    this.memory.writeU32(hdr + 4, 0);
    this.memory.writeU64(hdr + 8, BigInt(sector));
    const readable: Segment[] = [{ addr: hdr, len: o.headerLen ?? 16 }];
    if (o.out !== undefined && o.out.length > 0) {
      const a = this.alloc(o.out.length);
      this.memory.write(a, o.out);
      readable.push({ addr: a, len: o.out.length });
    }
    const writable: Segment[] = [];
    let data = 0;
    for (const len of o.inLens ?? []) {
      const a = this.alloc(len);
      this.memory.fill(a, len, 0xee);
      if (data === 0) data = a;
      writable.push({ addr: a, len });
    }
    const status = this.alloc(1);
    this.memory.writeU8(status, 0xff);
    if (o.statusByte ?? true) writable.push({ addr: status, len: 1 });
    const token = ++this.#token;
    if (!this.q.add(readable, writable, token)) throw new Error("queue full");
    return { token, status, data };
  }

  kick(): void {
    if (this.q.publish()) this.driver.notify(0);
  }

  /** Add, kick, wait for the back-end, and return the status byte and used length. */
  async run(
    type: number,
    sector: number | bigint,
    o: SubmitOptions = {},
  ): Promise<{ status: number; len: number; req: Request }> {
    const req = this.add(type, sector, o);
    this.kick();
    await this.model.whenIdle();
    const token = this.q.reap();
    if (token !== req.token) throw new Error(`reaped ${token}, expected ${req.token}`);
    return { status: this.memory.readU8(req.status), len: this.q.lastLen, req };
  }
}

export function sectorsOf(n: number, fill: (i: number) => number): Uint8Array {
  const b = new Uint8Array(n * 512);
  for (let i = 0; i < b.length; i++) b[i] = fill(i) & 0xff;
  return b;
}

export function range(sector: number, count: number, flags = 0): Uint8Array {
  const b = new Uint8Array(16);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, BigInt(sector), true);
  v.setUint32(8, count, true);
  v.setUint32(12, flags, true);
  return b;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
