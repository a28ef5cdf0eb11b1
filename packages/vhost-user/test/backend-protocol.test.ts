// The back-end's protocol extensions, each against our own front-end (the ones QEMU 7.2 sends
// are also exercised by real guests in tools/interop): packed and split rings, in-flight
// tracking across a back-end restart, CONFIGURE_MEM_SLOTS, STATUS, SET_CONFIG, RESET_DEVICE and
// the back-end request channel.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { BlkConfig, BlkStatus, DeviceId, Feature, featureMask } from "@virtio-ts/spec";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  createSharedMemory,
  FileSeal,
  loadNative,
  VhostUserProtocolFeature as PF,
  type SharedGuestMemory,
  type VhostUserBackendError,
  VhostUserBackendRequest,
  VhostUserBlkBackend,
  VhostUserConnection,
  VhostUserDriverTransport,
  type VhostUserError,
  type VhostUserMessage,
} from "../src/index.js";
import { HoldDisk, pattern, RawBlk, sharedMemory, TEST_PROTOCOL, until } from "./raw-blk.js";

let dir: string;
const cleanups: (() => unknown)[] = [];
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "vu-proto-"));
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
async function serve(
  model: BlkDevice,
  closes: (VhostUserError | undefined)[] = [],
): Promise<VhostUserBlkBackend> {
  const b = new VhostUserBlkBackend(model, join(dir, `s${n++}.sock`), {
    log: () => {},
    onConnectionClose: (e) => closes.push(e),
  });
  await b.listening;
  cleanups.push(() => b.close());
  return b;
}

function shared(): SharedGuestMemory {
  const m = sharedMemory();
  cleanups.push(() => m.close());
  return m;
}

function blkOver(t: VhostUserDriverTransport, mem: SharedGuestMemory): BlkDriver {
  const blk = new BlkDriver(t, mem.memory, new SlabAllocator(0x100000, 4096, 128), {
    ringBase: 0x10000,
    queueSize: 16,
  });
  t.onInterrupt(() => blk.onInterrupt());
  return blk;
}

describe("rings", () => {
  it("serves a packed ring (VIRTIO 1.3 §2.8) and GET_VRING_BASE returns both positions with their wrap counters", async () => {
    const disk = MemoryDisk.ofSize(1 << 20);
    const b = await serve(new BlkDevice(disk, { queueSize: 16 }));
    const mem = shared();
    const t = await VhostUserDriverTransport.connect(b.path, {
      deviceId: DeviceId.BLOCK,
      memory: mem,
    });
    cleanups.push(() => t.close());
    const blk = blkOver(t, mem);
    expect(t.features & featureMask(Feature.RING_PACKED)).not.toBe(0n);
    // 20 requests on a 16-entry ring: the positions wrap once.
    for (let i = 0; i < 10; i++) await blk.write(i, pattern(512, i));
    for (let i = 0; i < 10; i++) expect(await blk.read(i, 512)).toEqual(pattern(512, i));
    const base = (await t.stop()).get(0)!;
    // 20 descriptors made available and used: position 4 after one wrap (counter 0).
    expect(base & 0x7fff).toBe(20 % 16);
    expect((base >>> 15) & 1).toBe(0);
    expect((base >>> 16) & 0x7fff).toBe(20 % 16);
    expect(base >>> 31).toBe(0);
  });

  it("serves a split ring when the driver does not take RING_PACKED, GET_VRING_BASE returning the avail index", async () => {
    const disk = MemoryDisk.ofSize(1 << 20);
    const b = await serve(new BlkDevice(disk, { queueSize: 16 }));
    const mem = shared();
    const t = await VhostUserDriverTransport.connect(b.path, {
      deviceId: DeviceId.BLOCK,
      memory: mem,
      hiddenFeatures: featureMask(Feature.RING_PACKED),
    });
    cleanups.push(() => t.close());
    const blk = blkOver(t, mem);
    expect(t.features & featureMask(Feature.RING_PACKED)).toBe(0n);
    await blk.write(3, pattern(1024, 3));
    expect(await blk.read(3, 1024)).toEqual(pattern(1024, 3));
    expect(await t.stop()).toEqual(new Map([[0, 2]]));
  });

  it("accepts SET_OWNER and an unchanged SET_FEATURES again while a ring runs (QEMU repeats them per queue pair), refuses changed features", async () => {
    const disk = new HoldDisk(1 << 20);
    const closes: (VhostUserError | undefined)[] = [];
    const b = await serve(new BlkDevice(disk, { queueSize: 16 }), closes);
    const raw = new RawBlk(b.path, shared());
    cleanups.push(() => raw.close());
    await raw.handshake();
    await raw.startRing();
    raw.write(0, 0, pattern(512, 1));
    await until(() => raw.reap().size === 1, 5000, "the first write");
    await raw.fe.setOwner();
    await raw.handshake();
    raw.write(1, 1, pattern(512, 2));
    await until(() => disk.writes === 2, 5000, "the second write");
    await expect(raw.fe.setFeatures(featureMask(Feature.VERSION_1))).rejects.toThrow(/peer/);
    await until(() => closes.length === 1, 5000, "the close");
    expect((closes[0] as VhostUserBackendError).reason).toBe("bad-state");
    expect(closes[0]?.message).toContain("SET_FEATURES changing the features while a ring runs");
  });
});

describe("in-flight tracking (INFLIGHT_SHMFD)", () => {
  it("hands out a sealed memfd sized per queue, and refuses SET_INFLIGHT_FD for an area too small", async () => {
    const closes: (VhostUserError | undefined)[] = [];
    const b = await serve(new BlkDevice(MemoryDisk.ofSize(1 << 20), { queueSize: 16 }), closes);
    const raw = new RawBlk(b.path, shared());
    cleanups.push(() => raw.close());
    await raw.handshake();
    const { fd, inflight } = await raw.fe.getInflightFd(1, 16);
    try {
      // 16-byte header + 16 entries of 16 bytes, rounded to 64 (libvhost-user's size).
      expect(inflight).toEqual({ mmapSize: 320n, mmapOffset: 0n, numQueues: 1, queueSize: 16 });
      const seals = loadNative().getSeals(fd);
      expect(seals & (FileSeal.SHRINK | FileSeal.GROW | FileSeal.SEAL)).toBe(
        FileSeal.SHRINK | FileSeal.GROW | FileSeal.SEAL,
      );
      await expect(raw.fe.setInflightFd(fd, { ...inflight, mmapSize: 100n })).rejects.toThrow(
        /peer/,
      );
      await until(() => closes.length === 1, 5000, "the close");
      expect((closes[0] as VhostUserBackendError).reason).toBe("bad-value");
      expect(closes[0]?.message).toContain(
        "SET_INFLIGHT_FD: 100 bytes at offset 0 cannot hold 1 queues of 16",
      );
    } finally {
      loadNative().closeFd(fd);
    }
  });

  it("a restarted back-end serves again exactly the writes the dead one had taken and not completed, though they completed out of order", async () => {
    const mem = shared();
    // The first back-end takes four writes: it completes the first and the third, and never
    // the second and fourth (its disk holds them); then it "dies". QEMU keeps the inflight fd.
    const disk1 = new HoldDisk(1 << 20);
    disk1.hold = true;
    const b1 = await serve(new BlkDevice(disk1, { queueSize: 16 }));
    const fe1 = new RawBlk(b1.path, mem);
    await fe1.handshake();
    const { fd, inflight } = await fe1.fe.getInflightFd(1, 16);
    cleanups.push(() => loadNative().closeFd(fd));
    await fe1.fe.setInflightFd(fd, inflight);
    await fe1.startRing();
    for (let i = 0; i < 4; i++) fe1.write(i, 10 + i, pattern(512, 10 + i));
    await until(() => disk1.held.length === 4, 5000, "four writes held");
    disk1.held[0]!();
    disk1.held[2]!();
    await until(() => fe1.usedIdx() === 2, 5000, "writes 0 and 2 used");
    const driverQueue = fe1.queue;
    fe1.close();
    await b1.close();

    // The new back-end, a new disk over the same bytes, on the same socket path.
    const disk2 = new HoldDisk(1 << 20);
    disk2.bytes.set(disk1.bytes);
    const b2 = await serve(new BlkDevice(disk2, { queueSize: 16 }));
    const fe2 = new RawBlk(b2.path, mem, driverQueue); // the guest's ring lives on
    cleanups.push(() => fe2.close());
    await fe2.handshake();
    await fe2.fe.setInflightFd(fd, inflight);
    // After a crash QEMU restores last_avail_idx from used.idx (2): that is write 2, already
    // done, while write 1 lies before it. Only the in-flight area knows better.
    await fe2.startRing(fe2.usedIdx());
    await until(() => fe2.usedIdx() === 4, 5000, "the two writes served again");
    expect([...fe2.reap()]).toEqual([
      [0, BlkStatus.OK],
      [2, BlkStatus.OK],
      [1, BlkStatus.OK],
      [3, BlkStatus.OK],
    ]);
    expect(disk2.writes).toBe(2);
    for (const s of [10, 11, 12, 13]) {
      expect(disk2.bytes.subarray(s * 512, s * 512 + 512)).toEqual(pattern(512, s));
    }
    // A new request after the resubmitted ones is served as usual.
    fe2.write(4, 14, pattern(512, 14));
    await until(() => fe2.usedIdx() === 5, 5000, "a new write");
    expect(disk2.bytes.subarray(14 * 512, 15 * 512)).toEqual(pattern(512, 14));
    for (const release of disk1.held.splice(0)) release();
  });
});

describe("memory slots, status, configuration, reset", () => {
  it("maps regions one by one with ADD_MEM_REG, keeps a region sent twice, and REM_MEM_REG removes it", async () => {
    const closes: (VhostUserError | undefined)[] = [];
    const b = await serve(new BlkDevice(MemoryDisk.ofSize(1 << 20), { queueSize: 16 }), closes);
    const raw = new RawBlk(b.path, shared());
    cleanups.push(() => raw.close());
    await raw.handshake();
    expect(await raw.fe.getMaxMemSlots()).toBe(32n);
    const extra = createSharedMemory({ size: 1 << 20, guestBase: 16 << 20 });
    cleanups.push(() => extra.close());
    const before = b.stats.mappedBytes;
    await raw.fe.addMemReg(raw.mem.regions[0]!);
    await raw.fe.addMemReg(extra.regions[0]!);
    await raw.fe.addMemReg(extra.regions[0]!);
    expect(b.stats.mappedBytes - before).toBe(3 << 20);
    await raw.fe.remMemReg(extra.regions[0]!);
    expect(b.stats.requests).toMatchObject({ ADD_MEM_REG: 3, REM_MEM_REG: 1 });
    // The table still serves ring addresses in the remaining region.
    await raw.fe.setVringNum(0, 16);
    await raw.fe.setVringBase(0, 0);
    raw.write(0, 5, pattern(512, 5));
    await raw.fe.setVringAddr({
      index: 0,
      flags: 0,
      desc: raw.mem.userAddress(0x10000, 1)!,
      avail: raw.mem.userAddress(0x11000, 1)!,
      used: raw.mem.userAddress(0x12000, 1)!,
      log: 0n,
    });
    await raw.fe.setVringKick(0, raw.kick.fd);
    await raw.fe.setVringCall(0, raw.call.fd);
    await raw.fe.setVringEnable(0, true);
    await until(() => raw.usedIdx() === 1, 5000, "the write");
    await expect(raw.fe.remMemReg(extra.regions[0]!)).rejects.toThrow(/peer/);
    await until(() => closes.length === 1, 5000, "the close");
    expect((closes[0] as VhostUserBackendError).reason).toBe("bad-region");
    expect(closes[0]?.message).toContain("REM_MEM_REG: no region");
  });

  it("records SET_STATUS and answers it with GET_STATUS; refuses STATUS messages unless negotiated", async () => {
    const closes: (VhostUserError | undefined)[] = [];
    const b = await serve(new BlkDevice(MemoryDisk.ofSize(1 << 20)), closes);
    const raw = new RawBlk(b.path, shared());
    cleanups.push(() => raw.close());
    await raw.handshake();
    expect(await raw.fe.getStatus()).toBe(0);
    await raw.fe.setStatus(0x0b);
    expect(await raw.fe.getStatus()).toBe(0x0b);
    const other = new RawBlk(b.path, shared());
    cleanups.push(() => other.close());
    await other.handshake(0n, 1n << BigInt(PF.REPLY_ACK));
    await expect(other.fe.getStatus()).rejects.toThrow();
    await until(() => closes.length === 1, 5000, "the close");
    expect(closes[0]?.message).toContain(
      "GET_STATUS without VHOST_USER_PROTOCOL_F_STATUS negotiated",
    );
  });

  it("SET_CONFIG writes through the model (flag 0) and refuses the live-migration flag", async () => {
    const b = await serve(new BlkDevice(MemoryDisk.ofSize(1 << 20)));
    const raw = new RawBlk(b.path, shared());
    cleanups.push(() => raw.close());
    await raw.handshake();
    // virtio-blk has no field its driver may write here (no CONFIG_WCE): accepted, ignored.
    await raw.fe.setConfig(BlkConfig.CAPACITY, new Uint8Array(8).fill(9));
    const cap = await raw.fe.getConfig(BlkConfig.CAPACITY, 8);
    expect(new DataView(cap.buffer, cap.byteOffset).getBigUint64(0, true)).toBe(2048n);
    await expect(raw.fe.setConfig(0, new Uint8Array(4), 1)).rejects.toThrow(/status 1/);
  });

  it("RESET_DEVICE stops the rings and forgets the features, keeping the session owned", async () => {
    const disk = new HoldDisk(1 << 20);
    const b = await serve(new BlkDevice(disk, { queueSize: 16 }));
    const raw = new RawBlk(b.path, shared());
    cleanups.push(() => raw.close());
    await raw.handshake();
    await raw.startRing();
    raw.write(0, 0, pattern(512, 0));
    await until(() => raw.usedIdx() === 1, 5000, "the write");
    await raw.fe.resetDevice();
    // Owned still: vring messages are accepted without a new SET_OWNER.
    await raw.fe.setVringNum(0, 16);
    expect(b.connections).toBe(1);
    expect(b.stats.requests.RESET_DEVICE).toBe(1);
  });
});

describe("the back-end request channel (BACKEND_REQ)", () => {
  it("sends CONFIG_CHANGE_MSG when the disk grows, and GET_CONFIG then reads the new capacity", async () => {
    const disk = new HoldDisk(4 << 20, 2048);
    const device = new BlkDevice(disk, { queueSize: 16 });
    const b = await serve(device);
    const mem = shared();
    const t = await VhostUserDriverTransport.connect(b.path, {
      deviceId: DeviceId.BLOCK,
      memory: mem,
      protocolFeatures: TEST_PROTOCOL | (1n << BigInt(PF.MQ)),
    });
    cleanups.push(() => t.close());
    const blk = blkOver(t, mem);
    await blk.write(0, pattern(512, 1));
    const [ours, theirs] = loadNative().socketPair();
    const got: VhostUserMessage[] = [];
    const channel = new VhostUserConnection(ours!, {
      onMessage: (m) => got.push(m),
      onClose: () => {},
    });
    cleanups.push(() => channel.close());
    await t.frontend.setBackendReqFd(theirs!);
    loadNative().closeFd(theirs!);
    disk.capacity = 8192;
    expect(device.updateCapacity()).toBe(8192);
    await until(() => got.length === 1, 5000, "CONFIG_CHANGE_MSG");
    expect(got[0]!.request).toBe(VhostUserBackendRequest.CONFIG_CHANGE_MSG);
    expect(got[0]!.size).toBe(0);
    const cap = await t.frontend.getConfig(BlkConfig.CAPACITY, 8);
    expect(new DataView(cap.buffer, cap.byteOffset).getBigUint64(0, true)).toBe(8192n);
  });
});
