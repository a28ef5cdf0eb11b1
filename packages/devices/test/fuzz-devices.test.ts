// Device fuzz loops: blk, net, console (MULTIPORT) and rng, each on split and packed rings, driven
// by a seeded hostile guest (fuzz-rig.ts) that mostly posts well-formed requests, often malformed
// ones, rewrites descriptors, scribbles on rings and buffers, kicks, resets queues and the device.
// In-memory back-ends record what they see and inject host traffic. After every operation: no
// exception escaped the host, NEEDS_RESET (if set) carries a typed fault, the back-ends saw only
// bytes the guest supplied, and internal queues stay bounded; at random resets and at the end a
// well-formed request is served with the right bytes. CI: FUZZ_OPS (20,000) per model and ring
// with a fixed seed; FUZZ_OPS / FUZZ_SEED run longer or replay (the seed is printed).
import { VirtioError } from "@virtio-ts/memory";
import {
  BlkRequestType,
  BlkStatus,
  ConsoleConfig,
  ConsoleEvent,
  NetCtrlClass,
  NetCtrlCmd,
  NetFeature,
  NetHdrFlags,
} from "@virtio-ts/spec";
import type { Segment } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  BlkDevice,
  type BlockBackend,
  type ConsoleBackend,
  ConsoleDevice,
  type ConsoleInputSink,
  type EntropySource,
  type NetBackend,
  NetDevice,
  type NetFrameSink,
  RngDevice,
} from "../src/index.js";
import { BASE_SEED, CLEAN, heapAfterGc, OPS, Rig } from "./fuzz-rig.js";

const u32 = (rand: (n: number) => number): number =>
  (rand(0x10000) * 0x10000 + rand(0x10000)) >>> 0;

async function microtasks(n = 6): Promise<void> {
  for (let i = 0; i < n; i++) await Promise.resolve();
}

// ---------------------------------------------------------------------------------------------
// virtio-blk

const SECTORS = 64;

/** An in-memory disk that checks every access and can park operations (completed later). */
class FuzzDisk implements BlockBackend {
  readonly capacity = SECTORS;
  readonly blockSize = 4096;
  readonly readOnly = false;
  readonly bytes = new Uint8Array(SECTORS * 512);
  readonly parked: (() => void)[] = [];
  hold = false;
  failNext = false;
  calls = 0;
  rig!: Rig;

  #range(op: string, sector: number, n: number): void {
    this.rig.check(
      Number.isSafeInteger(sector) && sector >= 0 && Number.isSafeInteger(n) && n >= 0,
      `${op}: bad sector ${sector} / count ${n}`,
    );
    this.rig.check(sector + n <= SECTORS, `${op}: sectors ${sector}+${n} past the capacity`);
  }

  #bytes(op: string, sector: number, iov: readonly Uint8Array[], writable: boolean): number {
    let n = 0;
    for (const v of iov) {
      this.rig.checkSupplied(v, writable, `disk ${op}`);
      n += v.length;
    }
    this.rig.check(n % 512 === 0, `${op}: ${n} bytes, not whole sectors`);
    this.#range(op, sector, n / 512);
    return n;
  }

  async #gate(): Promise<void> {
    this.calls++;
    const fail = this.failNext;
    this.failNext = false;
    if (this.hold && this.parked.length < 16) {
      await new Promise<void>((resolve) => this.parked.push(resolve));
    }
    if (fail) throw new Error("injected disk failure");
  }

  async read(sector: number, iov: readonly Uint8Array[]): Promise<void> {
    this.#bytes("read", sector, iov, true);
    await this.#gate();
    let at = sector * 512;
    for (const v of iov) {
      v.set(this.bytes.subarray(at, at + v.length));
      at += v.length;
    }
  }

  async write(sector: number, iov: readonly Uint8Array[]): Promise<void> {
    this.#bytes("write", sector, iov, false);
    const staged = iov.map((v) => v.slice());
    await this.#gate();
    let at = sector * 512;
    for (const v of staged) {
      this.bytes.set(v, at);
      at += v.length;
    }
  }

  async flush(): Promise<void> {
    await this.#gate();
  }

  async discard(sector: number, count: number): Promise<void> {
    this.#range("discard", sector, count);
    await this.#gate();
  }

  async writeZeroes(sector: number, count: number): Promise<void> {
    this.#range("writeZeroes", sector, count);
    await this.#gate();
    this.bytes.fill(0, sector * 512, (sector + count) * 512);
  }

  releaseAll(): void {
    this.hold = false;
    this.failNext = false;
    for (const r of this.parked.splice(0)) r();
  }
}

function blkHeader(rig: Rig, type: number, sector: number, hi = 0): number {
  const h = rig.addr(16);
  rig.mem.writeU32(h, type);
  rig.mem.writeU32(h + 4, 0);
  rig.mem.writeU32(h + 8, sector >>> 0);
  rig.mem.writeU32(h + 12, hi >>> 0);
  return h;
}

function blkWellFormed(rig: Rig): void {
  const r = rig.rand;
  const types = [
    BlkRequestType.IN,
    BlkRequestType.OUT,
    BlkRequestType.FLUSH,
    BlkRequestType.GET_ID,
    BlkRequestType.DISCARD,
    BlkRequestType.WRITE_ZEROES,
  ];
  const type = types[r(types.length)]!;
  const n = 1 + r(4);
  const sector = r(SECTORS - n + 1);
  const readable: Segment[] = [{ addr: blkHeader(rig, type, sector), len: 16 }];
  const writable: Segment[] = [];
  if (type === BlkRequestType.OUT) {
    const a = rig.addr(n * 512);
    rig.fill(a, 32);
    readable.push({ addr: a, len: n * 512 });
  } else if (type === BlkRequestType.IN) {
    writable.push({ addr: rig.addr(n * 512), len: n * 512 });
  } else if (type === BlkRequestType.GET_ID) {
    writable.push({ addr: rig.addr(20), len: 20 });
  } else if (type === BlkRequestType.DISCARD || type === BlkRequestType.WRITE_ZEROES) {
    const a = rig.addr(16);
    rig.mem.writeU32(a, sector);
    rig.mem.writeU32(a + 4, 0);
    rig.mem.writeU32(a + 8, n);
    rig.mem.writeU32(a + 12, type === BlkRequestType.WRITE_ZEROES ? r(2) : 0);
    readable.push({ addr: a, len: 16 });
  }
  writable.push({ addr: rig.addr(1), len: 1 });
  rig.post(0, readable, writable);
}

function blkMalformed(rig: Rig): void {
  const r = rig.rand;
  const type = r(2) ? r(16) : u32(r);
  const sector = r(3) === 0 ? u32(r) : r(SECTORS + 8);
  const hi = r(4) === 0 ? u32(r) : 0;
  const h = blkHeader(rig, type, sector, hi);
  const readable: Segment[] = [];
  const hl = r(3) === 0 ? r(33) : 16;
  if (hl > 0 || r(2)) readable.push({ addr: h, len: hl });
  readable.push(...rig.segs(r(4), 1100));
  const writable = rig.segs(r(4), 1100);
  rig.post(0, readable, writable);
}

async function fuzzBlk(packed: boolean, seed: number): Promise<Rig> {
  const disk = new FuzzDisk();
  const model = new BlkDevice(disk, { queueSize: 16, maxRanges: 4, serial: "fuzz" });
  const rig = new Rig(`blk ${packed ? "packed" : "split"}`, seed, model, packed, 1);
  disk.rig = rig;
  const r = rig.rand;
  rig.init(false);
  const settle = async (): Promise<void> => {
    await microtasks();
    if (r(4) === 0 && disk.parked.length > 0) {
      const i = r(disk.parked.length);
      disk.parked.splice(i, 1)[0]!();
      await microtasks();
    }
  };
  const verify = async (): Promise<void> => {
    disk.releaseAll();
    await model.whenIdle();
    rig.init(false);
    const n = 2;
    const sector = r(SECTORS - n);
    const data = new Uint8Array(n * 512);
    for (let i = 0; i < data.length; i++) data[i] = r(256);
    const hdr = CLEAN;
    rig.mem.writeU32(hdr, BlkRequestType.OUT);
    rig.mem.writeU32(hdr + 4, 0);
    rig.mem.writeU32(hdr + 8, sector);
    rig.mem.writeU32(hdr + 12, 0);
    rig.mem.write(CLEAN + 0x100, data);
    rig.mem.writeU8(CLEAN + 0x80, 0xff);
    const out = rig.post(
      0,
      [
        { addr: hdr, len: 16 },
        { addr: CLEAN + 0x100, len: data.length },
      ],
      [{ addr: CLEAN + 0x80, len: 1 }],
    );
    rig.kick(0);
    await model.whenIdle();
    const done: [number, number][] = [];
    rig.reap(0, (t, len) => done.push([t, len]));
    expect(done).toEqual([[out, 1]]);
    expect(rig.mem.readU8(CLEAN + 0x80)).toBe(BlkStatus.OK);
    expect(disk.bytes.subarray(sector * 512, (sector + n) * 512)).toEqual(data);
    rig.mem.writeU32(hdr + 0x40, BlkRequestType.IN);
    rig.mem.writeU32(hdr + 0x44, 0);
    rig.mem.writeU32(hdr + 0x48, sector);
    rig.mem.writeU32(hdr + 0x4c, 0);
    rig.mem.fill(CLEAN + 0x1000, data.length, 0);
    const inn = rig.post(
      0,
      [{ addr: hdr + 0x40, len: 16 }],
      [
        { addr: CLEAN + 0x1000, len: data.length },
        { addr: CLEAN + 0x81, len: 1 },
      ],
    );
    rig.kick(0);
    await model.whenIdle();
    done.length = 0;
    rig.reap(0, (t, len) => done.push([t, len]));
    expect(done).toEqual([[inn, data.length + 1]]);
    expect(rig.mem.readU8(CLEAN + 0x81)).toBe(BlkStatus.OK);
    expect(rig.mem.slice(CLEAN + 0x1000, data.length)).toEqual(data);
    rig.stats.verified++;
  };

  for (let i = 0; i < OPS; i++) {
    rig.op = i;
    rig.stats.ops++;
    const k = r(16);
    if (!rig.commonOp(k)) {
      switch (k) {
        case 6:
        case 7:
        case 8:
          rig.guest(() => blkWellFormed(rig));
          break;
        case 9:
        case 10:
          rig.guest(() => blkMalformed(rig));
          break;
        case 11:
          rig.guest(() => rig.kick(0));
          await settle();
          break;
        case 12:
          disk.hold = r(3) === 0;
          disk.failNext = r(8) === 0;
          await settle();
          break;
        case 13:
          if (r(50) === 0) await verify();
          else await settle();
          break;
        default:
          rig.guest(() => rig.reap(0));
      }
    }
    rig.afterOp();
    // Bounded: in-flight requests are at most the slots of the live queue plus the parked ones.
    rig.check(
      model.inFlight <= disk.parked.length + 16,
      `${model.inFlight} requests in flight with ${disk.parked.length} parked`,
    );
  }
  await verify();
  console.log(`fuzz ${rig.name}: ${JSON.stringify({ ...rig.stats, model: model.stats })}`);
  expect(model.stats.ok).toBeGreaterThan(0);
  expect(model.stats.ioErrors + model.stats.unsupported + model.stats.malformed).toBeGreaterThan(0);
  return rig;
}

// ---------------------------------------------------------------------------------------------
// virtio-net

const MTU = 1500;
const HDR = 12;

class FuzzNet implements NetBackend {
  sink: NetFrameSink | undefined;
  sent = 0;
  last: Uint8Array | undefined;
  refuse = false;
  rig!: Rig;
  transmit(frame: Uint8Array): boolean {
    const rig = this.rig;
    rig.check(frame.length >= 14 && frame.length <= MTU + 14, `transmit of ${frame.length} bytes`);
    if (!rig.dirty) {
      rig.check(
        frame.length + HDR <= rig.maxReadable,
        `transmit of ${frame.length} bytes, more than any posted chain (${rig.maxReadable})`,
      );
    }
    this.sent++;
    this.last = frame.slice();
    return !this.refuse;
  }
  attach(sink: NetFrameSink): void {
    this.sink = sink;
  }
  detach(): void {
    this.sink = undefined;
  }
  rxReady(): void {}
}

function netFrame(rig: Rig, mac: Uint8Array, len: number): Uint8Array {
  const r = rig.rand;
  const f = new Uint8Array(len);
  for (let i = 0; i < len; i++) f[i] = r(256);
  if (len >= 6) {
    const d = r(4);
    if (d === 0) f.set(mac);
    else if (d === 1) f.fill(0xff, 0, 6);
  }
  if (len >= 34 && r(2)) {
    f[12] = 0x08;
    f[13] = 0x00;
    f[14] = 0x45;
    f[23] = r(2) ? 6 : 17;
  }
  return f;
}

function netTx(rig: Rig, qi: number, wellFormed: boolean): void {
  const r = rig.rand;
  const hdr = new Uint8Array(HDR);
  const len = wellFormed
    ? 14 + r(MTU + 1)
    : [0, 1 + r(13), MTU + 15 + r(9000), r(2000), 14 + r(100)][r(5)]!;
  if (!wellFormed) {
    for (let i = 0; i < HDR; i++) hdr[i] = r(3) === 0 ? r(256) : 0;
    if (r(2)) hdr[0] = NetHdrFlags.NEEDS_CSUM;
  } else if (r(3) === 0 && len >= 40) {
    hdr[0] = NetHdrFlags.NEEDS_CSUM;
    const start = 14 + r(len - 30);
    const off = r(Math.min(16, len - start - 2));
    hdr[6] = start & 0xff;
    hdr[7] = start >> 8;
    hdr[8] = off & 0xff;
    hdr[9] = off >> 8;
  }
  const hl = wellFormed || r(2) ? HDR : r(HDR + 4);
  const total = hl + len;
  const a = rig.addr(total);
  rig.mem.write(a, hdr.subarray(0, Math.min(hl, HDR)));
  rig.fill(a + Math.min(hl, HDR), Math.min(total - Math.min(hl, HDR), 64));
  // Split into 1 to 4 segments at random points.
  const segs: Segment[] = [];
  let at = 0;
  const n = 1 + r(4);
  for (let i = 0; i < n - 1 && at < total; i++) {
    const l = r(total - at + 1);
    segs.push({ addr: a + at, len: l });
    at += l;
  }
  segs.push({ addr: a + at, len: total - at });
  const writable = !wellFormed && r(4) === 0 ? rig.segs(1, 64) : [];
  rig.post(qi, segs, writable);
}

function netCtrl(rig: Rig, ctrl: number, wellFormed: boolean): void {
  const r = rig.rand;
  let cmd: number[];
  if (wellFormed) {
    const choices: number[][] = [
      [NetCtrlClass.RX, NetCtrlCmd.RX_PROMISC, r(2)],
      [NetCtrlClass.RX, NetCtrlCmd.RX_ALLMULTI, r(2)],
      [NetCtrlClass.RX, NetCtrlCmd.RX_NOBCAST, r(2)],
      [NetCtrlClass.MAC, NetCtrlCmd.MAC_ADDR_SET, 2, 0, 0, 0, 0, r(256)],
      [NetCtrlClass.MQ, NetCtrlCmd.MQ_VQ_PAIRS_SET, 1 + r(2), 0],
      [NetCtrlClass.MAC, NetCtrlCmd.MAC_TABLE_SET, 1, 0, 0, 0, 2, 0, 0, 0, 0, 7, 0, 0, 0, 0],
    ];
    cmd = choices[r(choices.length)]!;
  } else {
    const n = r(3) === 0 ? r(600) : r(12);
    cmd = Array.from({ length: n }, () => r(256));
    if (n > 0) cmd[0] = r(6);
    if (n > 1) cmd[1] = r(6);
    // MAC_TABLE_SET with hostile entry counts.
    if (n > 6 && r(2)) {
      cmd[0] = NetCtrlClass.MAC;
      cmd[1] = NetCtrlCmd.MAC_TABLE_SET;
    }
  }
  const a = rig.addr(cmd.length + 1);
  rig.mem.write(a, new Uint8Array(cmd));
  const readable: Segment[] = cmd.length > 0 ? [{ addr: a, len: cmd.length }] : [];
  const writable: Segment[] = !wellFormed && r(4) === 0 ? [] : [{ addr: rig.addr(1), len: 1 }];
  rig.post(ctrl, readable, writable);
}

async function fuzzNet(packed: boolean, seed: number): Promise<Rig> {
  const backend = new FuzzNet();
  const model = new NetDevice(backend, { queueSize: 16, ctrlQueueSize: 16, maxQueuePairs: 2 });
  const rig = new Rig(`net ${packed ? "packed" : "split"}`, seed, model, packed, 5);
  backend.rig = rig;
  const r = rig.rand;
  rig.init(false);
  const ctrl = (): number => (rig.has(NetFeature.MQ) ? 4 : 2);
  const verify = (): void => {
    rig.init(false);
    backend.refuse = false;
    model.setLinkUp(true);
    rig.mem.fill(CLEAN, 2048, 0xee);
    const rx = rig.post(0, [], [{ addr: CLEAN, len: HDR + 1514 }]);
    rig.kick(0);
    const frame = netFrame(rig, model.mac, 14 + r(1500));
    frame.set(model.mac);
    expect(rig.host("deliver", () => backend.sink!.deliver(frame))).toBe(true);
    const done: [number, number][] = [];
    rig.reap(0, (t, len) => done.push([t, len]));
    expect(done).toEqual([[rx, HDR + frame.length]]);
    const hdr = new Uint8Array(HDR);
    hdr[10] = 1; // num_buffers
    expect(rig.mem.slice(CLEAN, HDR)).toEqual(hdr);
    expect(rig.mem.slice(CLEAN + HDR, frame.length)).toEqual(frame);
    const out = netFrame(rig, model.mac, 60);
    rig.mem.fill(CLEAN + 0x1000, HDR, 0);
    rig.mem.write(CLEAN + 0x1000 + HDR, out);
    const before = backend.sent;
    const tx = rig.post(1, [{ addr: CLEAN + 0x1000, len: HDR + out.length }], []);
    rig.kick(1);
    done.length = 0;
    rig.reap(1, (t, len) => done.push([t, len]));
    expect(done).toEqual([[tx, 0]]);
    expect(backend.sent).toBe(before + 1);
    expect(backend.last).toEqual(out);
    rig.stats.verified++;
  };

  for (let i = 0; i < OPS; i++) {
    rig.op = i;
    rig.stats.ops++;
    const k = r(20);
    if (!rig.commonOp(k)) {
      switch (k) {
        case 6:
        case 7: {
          // Receive buffers: mostly big enough, sometimes tiny, sometimes readable.
          const qi = r(2) * 2;
          rig.guest(() => {
            const n = 1 + r(3);
            const w = r(3) === 0 ? rig.segs(n, 64) : rig.segs(n, HDR + 1514);
            rig.post(qi, r(8) === 0 ? rig.segs(1, 32) : [], w);
            if (r(2)) rig.kick(qi);
          });
          break;
        }
        case 8:
        case 9:
          rig.guest(() => netTx(rig, 1 + r(2) * 2, true));
          break;
        case 10:
          rig.guest(() => netTx(rig, 1 + r(2) * 2, false));
          break;
        case 11:
          rig.guest(() => netCtrl(rig, ctrl(), r(2) === 0));
          break;
        case 12:
        case 13: {
          // The network injects a frame: runts, normal, jumbo.
          const len = [r(14), 14 + r(MTU + 1), MTU + 15 + r(8000), 60][r(4)]!;
          const f = netFrame(rig, model.mac, len);
          const sink = backend.sink;
          if (sink !== undefined) rig.host("NetFrameSink.deliver", () => sink.deliver(f));
          break;
        }
        case 14:
          rig.host("link/announce", () => {
            if (r(2)) model.setLinkUp(r(4) !== 0);
            else model.announce();
          });
          backend.refuse = r(6) === 0;
          break;
        case 15:
          if (r(40) === 0) verify();
          else rig.guest(() => rig.kick(ctrl()));
          break;
        default:
          rig.guest(() => rig.reap(r(5)));
      }
    }
    rig.afterOp();
  }
  verify();
  console.log(`fuzz ${rig.name}: ${JSON.stringify({ ...rig.stats, model: model.stats })}`);
  expect(model.stats.rxFrames).toBeGreaterThan(0);
  expect(model.stats.txFrames).toBeGreaterThan(0);
  expect(model.stats.txRunt + model.stats.txGso + model.stats.txBadCsum).toBeGreaterThan(0);
  return rig;
}

// ---------------------------------------------------------------------------------------------
// virtio-console (MULTIPORT)

const PORTS = 3;
const PENDING = 512;
const MAX_TX = 4096;

class FuzzConsole implements ConsoleBackend {
  sink!: ConsoleInputSink;
  rig!: Rig;
  pause = false;
  written = 0;
  last: number[] = [];
  attach(sink: ConsoleInputSink): void {
    this.sink = sink;
  }
  write(port: number, data: Uint8Array): boolean {
    const rig = this.rig;
    rig.check(port >= 0 && port < PORTS, `write to port ${port}`);
    rig.check(data.length <= MAX_TX, `write of ${data.length} bytes`);
    rig.checkSupplied(data, false, "console write");
    this.written += data.length;
    if (port === 0) this.last.push(...data.subarray(0, 64));
    return !this.pause;
  }
  emergencyWrite(_byte: number): void {}
  portOpen(port: number, _open: boolean): void {
    this.rig.check(port >= 0 && port < PORTS, `portOpen of port ${port}`);
  }
}

const rxQueue = (port: number): number => (port === 0 ? 0 : 2 * (port + 1));
const txQueue = (port: number): number => rxQueue(port) + 1;

function consoleControl(rig: Rig, id: number, event: number, value: number, len = 8): void {
  const a = rig.addr(16);
  rig.mem.writeU32(a, id);
  rig.mem.writeU16(a + 4, event);
  rig.mem.writeU16(a + 6, value);
  rig.post(3, [{ addr: a, len }], []);
}

async function fuzzConsole(packed: boolean, seed: number): Promise<Rig> {
  const backend = new FuzzConsole();
  const model = new ConsoleDevice(backend, {
    queueSize: 16,
    maxPorts: PORTS,
    ports: [{ name: "con0" }, { name: "p1", open: false }],
    size: { cols: 80, rows: 25 },
    pendingInputBytes: PENDING,
    maxTransmitBytes: MAX_TX,
  });
  const rig = new Rig(
    `console ${packed ? "packed" : "split"}`,
    seed,
    model,
    packed,
    2 * (PORTS + 1),
  );
  backend.rig = rig;
  const r = rig.rand;
  rig.init(false);
  const verify = (): void => {
    rig.init(false);
    backend.pause = false;
    // Handshake on the control queues (§5.3.6.2), then open port 0 from the guest.
    for (let i = 0; i < 8; i++) rig.post(2, [], [{ addr: CLEAN + 0x800 + 64 * i, len: 64 }]);
    rig.kick(2);
    const ctl = (id: number, event: number, value: number, at: number): void => {
      rig.mem.writeU32(CLEAN + at, id);
      rig.mem.writeU16(CLEAN + at + 4, event);
      rig.mem.writeU16(CLEAN + at + 6, value);
      rig.post(3, [{ addr: CLEAN + at, len: 8 }], []);
      rig.kick(3);
      rig.reap(3);
    };
    ctl(0, ConsoleEvent.DEVICE_READY, 1, 0x100);
    ctl(0, ConsoleEvent.PORT_READY, 1, 0x110);
    ctl(0, ConsoleEvent.PORT_OPEN, 1, 0x120);
    expect(model.portState(0)).toMatchObject({ exists: true, ready: true, guestOpen: true });
    // Input left pending from before the reset drains first (it is bounded by PENDING).
    for (let i = 0; i < 3 && model.portState(0).pendingInput > 0; i++) {
      rig.post(0, [], [{ addr: CLEAN + 0x1000, len: PENDING }]);
      rig.kick(0);
      rig.reap(0);
    }
    expect(model.portState(0).pendingInput).toBe(0);
    rig.mem.fill(CLEAN + 0x1000, 64, 0);
    const rx = rig.post(0, [], [{ addr: CLEAN + 0x1000, len: 64 }]);
    rig.kick(0);
    const marker = new Uint8Array(Array.from({ length: 1 + r(40) }, () => r(256)));
    expect(rig.host("input", () => model.input(0, marker))).toBe(marker.length);
    const done: [number, number][] = [];
    rig.reap(0, (t, len) => done.push([t, len]));
    expect(done).toEqual([[rx, marker.length]]);
    expect(rig.mem.slice(CLEAN + 0x1000, marker.length)).toEqual(marker);
    const text = new Uint8Array(Array.from({ length: 1 + r(60) }, () => r(256)));
    rig.mem.write(CLEAN + 0x2000, text);
    backend.last = [];
    const tx = rig.post(1, [{ addr: CLEAN + 0x2000, len: text.length }], []);
    rig.kick(1);
    done.length = 0;
    rig.reap(1, (t, len) => done.push([t, len]));
    expect(done).toEqual([[tx, 0]]);
    expect(new Uint8Array(backend.last)).toEqual(text);
    rig.stats.verified++;
  };

  for (let i = 0; i < OPS; i++) {
    rig.op = i;
    rig.stats.ops++;
    const k = r(22);
    if (!rig.commonOp(k)) {
      const port = r(PORTS);
      switch (k) {
        case 6:
        case 7: {
          // Receive buffers on a port or the control receive queue (sometimes readable).
          const qi = r(4) === 0 ? 2 : rxQueue(port);
          rig.guest(() => {
            rig.post(qi, r(8) === 0 ? rig.segs(1, 32) : [], rig.segs(1 + r(2), 256));
            if (r(2)) rig.kick(qi);
          });
          break;
        }
        case 8:
        case 9:
          rig.guest(() => {
            const segs = rig.segs(1 + r(3), 200);
            for (const s of segs) rig.fill(s.addr, Math.min(s.len, 16));
            rig.post(txQueue(port), segs, r(8) === 0 ? rig.segs(1, 16) : []);
            if (r(2)) rig.kick(txQueue(port));
          });
          break;
        case 10:
        case 11:
          // Well-formed handshake messages, in or out of order.
          rig.guest(() => {
            const ev = [ConsoleEvent.DEVICE_READY, ConsoleEvent.PORT_READY, ConsoleEvent.PORT_OPEN];
            consoleControl(rig, port, ev[r(3)]!, r(4) === 0 ? 0 : 1);
            if (r(2)) rig.kick(3);
          });
          break;
        case 12:
          // Hostile control messages: random ids, events, values and lengths.
          rig.guest(() => {
            const id = r(2) ? u32(r) : r(PORTS + 2);
            consoleControl(rig, id, r(2) ? r(12) : r(0x10000), r(0x10000), r(3) ? 8 : r(16));
            rig.kick(3);
          });
          break;
        case 13:
        case 14: {
          // Host input, up to twice the pending buffer.
          const data = new Uint8Array(r(3) === 0 ? r(2 * PENDING) : r(32));
          for (let b = 0; b < data.length; b++) data[b] = r(256);
          if (model.portState(port).exists) rig.host("input", () => model.input(port, data));
          break;
        }
        case 15:
          rig.host("host port control", () => {
            const p = 1 + r(PORTS - 1);
            const s = model.portState(p);
            const c = r(4);
            if (c === 0 && !s.exists) model.addPort(p, { name: `p${p}`, console: r(2) === 0 });
            else if (c === 1 && s.exists) model.removePort(p);
            else if (c === 2 && model.portState(port).exists) model.setHostOpen(port, r(2) === 0);
            else model.resize(r(0x10000), r(0x10000));
          });
          break;
        case 16:
          backend.pause = r(5) === 0;
          if (!backend.pause) rig.host("resumeOutput", () => model.resumeOutput(port));
          break;
        case 17:
          rig.guest(() => rig.t.writeConfig(ConsoleConfig.EMERG_WR, 4, u32(r)));
          break;
        case 18:
          if (r(40) === 0) verify();
          else rig.guest(() => rig.kick(r(2) ? 3 : 2));
          break;
        default:
          rig.guest(() => rig.reap(r(2 * (PORTS + 1))));
      }
    }
    rig.afterOp();
    // Bounded: the control outbox and every pending input buffer.
    rig.check(model.controlPending <= 8 * PORTS + 16, `${model.controlPending} control messages`);
    for (let p = 0; p < PORTS; p++) {
      rig.check(model.portState(p).pendingInput <= PENDING, `port ${p} pending input`);
    }
  }
  verify();
  console.log(`fuzz ${rig.name}: ${JSON.stringify({ ...rig.stats, model: model.stats })}`);
  expect(model.stats.txBytes).toBeGreaterThan(0);
  expect(model.stats.rxBytes).toBeGreaterThan(0);
  expect(model.stats.malformed).toBeGreaterThan(0);
  return rig;
}

// ---------------------------------------------------------------------------------------------
// virtio-rng

const MAX_REQ = 4096;

/** Byte i of the stream is (i * 13 + 5) & 0xff; checks every buffer it fills. */
class FuzzSource implements EntropySource {
  at = 0;
  rig!: Rig;
  fill(buf: Uint8Array): void {
    this.rig.check(buf.length <= MAX_REQ, `fill of ${buf.length} bytes`);
    this.rig.checkSupplied(buf, true, "entropy fill");
    for (let i = 0; i < buf.length; i++) buf[i] = (this.at++ * 13 + 5) & 0xff;
  }
}

async function fuzzRng(packed: boolean, seed: number): Promise<Rig> {
  const source = new FuzzSource();
  const model = new RngDevice({ queueSize: 16, source, maxRequestBytes: MAX_REQ });
  const rig = new Rig(`rng ${packed ? "packed" : "split"}`, seed, model, packed, 1);
  source.rig = rig;
  const r = rig.rand;
  rig.init(false);
  const verify = (): void => {
    rig.init(false);
    const n = 1 + r(200);
    rig.mem.fill(CLEAN, n, 0);
    const start = source.at;
    const t = rig.post(0, [], [{ addr: CLEAN, len: n }]);
    rig.kick(0);
    const done: [number, number][] = [];
    rig.reap(0, (tok, len) => done.push([tok, len]));
    expect(done).toEqual([[t, n]]);
    const want = Array.from({ length: n }, (_, i) => ((start + i) * 13 + 5) & 0xff);
    expect(rig.mem.slice(CLEAN, n)).toEqual(new Uint8Array(want));
    rig.stats.verified++;
  };
  for (let i = 0; i < OPS; i++) {
    rig.op = i;
    rig.stats.ops++;
    const k = r(12);
    if (!rig.commonOp(k)) {
      switch (k) {
        case 6:
        case 7:
          rig.guest(() => rig.post(0, [], rig.segs(1 + r(3), 256)));
          break;
        case 8:
          rig.guest(() => rig.post(0, rig.segs(1 + r(2), 64), rig.segs(r(2), 64)));
          break;
        case 9:
          if (r(40) === 0) verify();
          else rig.guest(() => rig.kick(0));
          break;
        default:
          rig.guest(() => rig.reap(0));
      }
    }
    rig.afterOp();
  }
  verify();
  console.log(`fuzz ${rig.name}: ${JSON.stringify({ ...rig.stats, model: model.stats })}`);
  expect(model.stats.bytes).toBeGreaterThan(0);
  expect(model.stats.malformed).toBeGreaterThan(0);
  return rig;
}

// ---------------------------------------------------------------------------------------------

const models: [string, (packed: boolean, seed: number) => Promise<Rig>][] = [
  ["virtio-blk", fuzzBlk],
  ["virtio-net", fuzzNet],
  ["virtio-console with MULTIPORT", fuzzConsole],
  ["virtio-rng", fuzzRng],
];

describe("fuzzing the device models with a hostile guest", () => {
  models.forEach(([name, run], m) => {
    for (const packed of [false, true]) {
      const ring = packed ? "packed" : "split";
      it(`${name} on ${ring} rings survives ${OPS.toLocaleString("en")} hostile operations and serves a well-formed request after every reset`, async () => {
        const seed = (BASE_SEED + (2 * m + (packed ? 1 : 0)) * 7919) >>> 0;
        console.log(`fuzz ${name} ${ring}: seed ${seed} (replay with FUZZ_SEED=${BASE_SEED})`);
        const heap0 = heapAfterGc();
        const t0 = performance.now();
        const rig = await run(packed, seed);
        const ms = performance.now() - t0;
        const heap1 = heapAfterGc();
        console.log(
          `fuzz ${name} ${ring}: ${Math.round((OPS / ms) * 1000)} ops/s` +
            (heap0 === undefined ? "" : `, heap ${heap0} → ${heap1}`),
        );
        // The run exercised the happy path, the hostile paths and recovery.
        expect(rig.stats.verified).toBeGreaterThan(0);
        expect(rig.stats.reaped).toBeGreaterThan(OPS / 50);
        expect(rig.stats.descMutations + rig.stats.scribbles).toBeGreaterThan(0);
        expect(rig.stats.needsReset).toBeGreaterThan(0);
        expect(rig.stats.deviceResets).toBeGreaterThan(1);
        expect(rig.device.core.lastFault).toBeInstanceOf(VirtioError);
      }, 300_000);
    }
  });
});
