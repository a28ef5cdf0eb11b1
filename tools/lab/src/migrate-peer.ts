// Live migration between two processes: "suspend the VM, store its encoded state, copy it to
// the target, resume". The source process runs a guest (RawBlkGuest, its state all in guest
// RAM) on a BlkDevice whose back-end holds some requests, suspends the device with requests
// in flight and more unpopped in the ring, and sends the device state, the guest RAM and the
// disk over a unix socket. The destination process rebuilds the device from the bytes
// (restoreMmioDevice), lets the guest go on from its RAM, posts more requests, and reports what
// the guest saw, and whether the disk holds what it should.
//
//   node tools/lab/dist/migrate-peer.js destination SOCKET   (prints "listening", then a report)
//   node tools/lab/dist/migrate-peer.js source SOCKET        (prints what it sent)
import { once } from "node:events";
import { createConnection, createServer, type Socket } from "node:net";
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import { createGuestMemory } from "@virtio-ts/memory";
import { MmioReg } from "@virtio-ts/spec";
import { MmioDevice, restoreMmioDevice, saveMmioDevice } from "@virtio-ts/transport";
import { RAW_GUEST_RAM, RawBlkGuest, type RawGuestReport, writePattern } from "./raw-guest.js";
import { makeImage } from "./rigs.js";
import { HeldDisk } from "./scenarios.js";

const SECTOR = 512;
const DISK_BYTES = 1 << 20;
const QUEUE_SIZE = 256;

/** The workload: request `id` writes a sector in the upper half, or reads one in the lower. */
function plan(id: number): { write: boolean; sector: number } {
  return id % 2 === 0
    ? { write: true, sector: 1024 + id * 3 }
    : { write: false, sector: (id * 37) % 1024 };
}

/** What the source did before it sent the device away. */
export interface SourceReport {
  /** Requests the guest posted before the suspend. */
  readonly postedBefore: number;
  /** Requests completed (and reaped) before the suspend. */
  readonly completedBefore: number;
  /** Requests in the back-end when the device was suspended (saved in flight). */
  readonly inFlight: number;
  /** Requests the guest posted while the device was suspended (unpopped). */
  readonly postedWhileSuspended: number;
  /** Bytes sent: device state, guest RAM, disk. */
  readonly bytes: { readonly state: number; readonly memory: number; readonly disk: number };
}

/** What the destination saw. */
export interface DestinationReport extends RawGuestReport {
  /** Requests the guest posted after the resume. */
  readonly postedAfter: number;
  /** Written sectors holding their pattern, and unwritten ones the original image. */
  readonly diskRight: boolean;
  /**
   * Requests the restored device took at its resume kick: those in flight at the save (served
   * again), then those posted while the source was suspended.
   */
  readonly poppedAtResume: number;
}

function send(socket: Socket, parts: readonly Uint8Array[]): void {
  for (const p of parts) {
    const len = Buffer.alloc(4);
    len.writeUInt32LE(p.length);
    socket.write(len);
    socket.write(p);
  }
}

async function receive(socket: Socket, count: number): Promise<Uint8Array[]> {
  const chunks: Buffer[] = [];
  for await (const c of socket) chunks.push(c as Buffer);
  const all = Buffer.concat(chunks);
  const parts: Uint8Array[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    if (at + 4 > all.length) throw new Error(`the source sent ${i} of ${count} parts`);
    const n = all.readUInt32LE(at);
    parts.push(new Uint8Array(all.subarray(at + 4, at + 4 + n)));
    at += 4 + n;
  }
  return parts;
}

/**
 * The source: boot the guest, run `before` requests of which `completeBefore` finish, suspend
 * with the rest in the back-end, post `whileSuspended` more, send everything to `path`.
 */
export async function runSource(
  path: string,
  before = 32,
  completeBefore = 8,
  whileSuspended = 12,
): Promise<SourceReport> {
  const image = new Uint8Array(makeImage(DISK_BYTES));
  const base = image.slice();
  const disk = new HeldDisk(new MemoryDisk(image));
  const memory = createGuestMemory({ size: RAW_GUEST_RAM });
  const model = new BlkDevice(disk, { queueSize: QUEUE_SIZE });
  const mmio = new MmioDevice(model, { memory });
  const guest = RawBlkGuest.boot(memory, mmio);
  const expected = (sector: number) => base.subarray(sector * SECTOR, (sector + 1) * SECTOR);
  // The first requests complete; the rest stay in the back-end.
  for (let id = 0; id < completeBefore; id++) {
    const p = plan(id);
    guest.post(p.write, p.sector);
  }
  await model.whenIdle();
  guest.reap(expected);
  disk.hold = true;
  for (let id = completeBefore; id < before; id++) {
    const p = plan(id);
    guest.post(p.write, p.sector);
  }
  // Stop: the vCPU and the device. The guest keeps posting until its vCPU stops.
  await mmio.core.suspend();
  const inFlight = mmio.core.inFlight;
  for (let i = 0; i < whileSuspended; i++) {
    const p = plan(guest.posted);
    guest.post(p.write, p.sector);
  }
  const state = saveMmioDevice(mmio);
  const ram = new Uint8Array(RAW_GUEST_RAM);
  memory.read(0, ram);
  // The disk as the back-end has it: the held writes have not reached it.
  const diskBytes = (disk.inner as MemoryDisk).bytes.slice();
  const socket = createConnection(path);
  await once(socket, "connect");
  send(socket, [state, ram, diskBytes]);
  socket.end();
  await once(socket, "close");
  // Let go: the held requests finish into nothing (the reset dropped them).
  const abandoned = mmio.core.abandon();
  disk.release();
  await abandoned;
  return {
    postedBefore: before,
    completedBefore: completeBefore,
    inFlight,
    postedWhileSuspended: whileSuspended,
    bytes: { state: state.length, memory: ram.length, disk: diskBytes.length },
  };
}

/**
 * The destination: listen on `path`, receive one migration, resume the device and the guest,
 * post `after` more requests, and report once every request completed (or `timeoutMs`).
 * @param onListening - called once the socket listens
 */
export async function runDestination(
  path: string,
  onListening: () => void,
  after = 8,
  timeoutMs = 10_000,
): Promise<DestinationReport> {
  const server = createServer();
  server.listen(path);
  await once(server, "listening");
  onListening();
  const [socket] = (await once(server, "connection")) as [Socket];
  const [state, ram, diskBytes] = await receive(socket, 3);
  server.close();
  const base = new Uint8Array(makeImage(DISK_BYTES));
  const memory = createGuestMemory({ size: RAW_GUEST_RAM });
  memory.write(0, ram!);
  const disk = new MemoryDisk(diskBytes!);
  const model = new BlkDevice(disk, { queueSize: QUEUE_SIZE });
  const popsBefore = model.stats.requests;
  const mmio = restoreMmioDevice(state!, model, { memory });
  const poppedAtResume = model.stats.requests - popsBefore;
  const guest = new RawBlkGuest(memory, () => mmio.write(MmioReg.QUEUE_NOTIFY, 4, 0));
  const expected = (sector: number) => base.subarray(sector * SECTOR, (sector + 1) * SECTOR);
  for (let i = 0; i < after; i++) {
    const p = plan(guest.posted);
    guest.post(p.write, p.sector);
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    await model.whenIdle();
    guest.reap(expected);
    if (guest.outstanding === 0 || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 1));
  }
  // The disk: every written sector holds its pattern, every other sector the original image.
  let diskRight = true;
  const written = new Map<number, number>();
  for (let id = 0; id < guest.posted; id++) {
    const p = plan(id);
    if (p.write) written.set(p.sector, writePattern(id));
  }
  for (let s = 0; s < DISK_BYTES / SECTOR && diskRight; s++) {
    const got = disk.bytes.subarray(s * SECTOR, (s + 1) * SECTOR);
    const pattern = written.get(s);
    diskRight =
      pattern === undefined
        ? got.every((b, i) => b === base[s * SECTOR + i])
        : got.every((b) => b === pattern);
  }
  return {
    ...guest.report(),
    postedAfter: after,
    diskRight,
    poppedAtResume,
  };
}

const [role, path] = process.argv.slice(2);
if (import.meta.url.endsWith("/migrate-peer.js") && process.argv[1]?.endsWith("migrate-peer.js")) {
  if (role === "source" && path !== undefined) {
    runSource(path).then(
      (r) => console.log(`source ${JSON.stringify(r)}`),
      (e: unknown) => {
        console.error(e);
        process.exitCode = 1;
      },
    );
  } else if (role === "destination" && path !== undefined) {
    runDestination(path, () => console.log("listening")).then(
      (r) => console.log(`destination ${JSON.stringify(r)}`),
      (e: unknown) => {
        console.error(e);
        process.exitCode = 1;
      },
    );
  } else {
    console.error("usage: migrate-peer.js source|destination SOCKET");
    process.exitCode = 2;
  }
}
