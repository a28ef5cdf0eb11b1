import { BlkDeviceFault, BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { BlkFeature, DeviceId, DeviceStatus, Feature, featureMask } from "@virtio-ts/spec";
import { TransportError } from "@virtio-ts/transport";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import {
  createSharedMemory,
  decodeU64,
  decodeVringAddr,
  decodeVringFd,
  decodeVringState,
  encodeConfig,
  encodeU64,
  loadNative,
  type SharedGuestMemory,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VhostUserDriverTransport,
  VhostUserError,
  VhostUserFlag,
  type VhostUserMessage,
  VhostUserProtocolFeature,
  VhostUserRequest,
} from "../src/index.js";
import { type FakeBackend, outcome, pair } from "./fake-backend.js";

const R = VhostUserRequest;
const PF =
  (1n << BigInt(VhostUserProtocolFeature.REPLY_ACK)) |
  (1n << BigInt(VhostUserProtocolFeature.CONFIG)) |
  (1n << BigInt(VhostUserProtocolFeature.MQ));

beforeAll(() => {
  loadNative();
});

const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanup.splice(0)) c();
});

/** A fake vhost-user-blk back-end that answers the set-up like libvhost-user, then `nackOn`. */
function blkBackend(be: FakeBackend, opts: { nackOn?: number; offered?: bigint } = {}): void {
  be.onRequest = (m: VhostUserMessage) => {
    switch (m.request) {
      case R.GET_FEATURES:
        be.reply(
          m.request,
          encodeU64(
            opts.offered ??
              featureMask(Feature.VERSION_1) |
                featureMask(VHOST_USER_F_PROTOCOL_FEATURES) |
                featureMask(BlkFeature.FLUSH) |
                featureMask(Feature.RING_RESET),
          ),
        );
        return;
      case R.GET_PROTOCOL_FEATURES:
        be.reply(m.request, encodeU64(PF | (1n << 5n)));
        return;
      case R.GET_QUEUE_NUM:
        be.reply(m.request, encodeU64(2n));
        return;
      case R.GET_CONFIG: {
        const cfg = new Uint8Array(60);
        cfg[0] = 64; // capacity 64 sectors
        be.reply(m.request, encodeConfig({ offset: 0, flags: 0, data: cfg }));
        return;
      }
    }
    if (m.flags & VhostUserFlag.NEED_REPLY) {
      be.reply(m.request, encodeU64(m.request === opts.nackOn ? 1n : 0n));
    }
  };
}

async function setup(opts: { nackOn?: number; offered?: bigint } = {}): Promise<{
  be: FakeBackend;
  t: VhostUserDriverTransport;
  shared: SharedGuestMemory;
}> {
  const { fe, be } = pair();
  const shared = createSharedMemory({ size: 2 << 20 });
  blkBackend(be, opts);
  cleanup.push(() => {
    fe.close();
    be.conn.close();
    shared.close();
    for (const m of be.received) for (const fd of m.fds) loadNative().closeFd(fd);
  });
  const t = await VhostUserDriverTransport.connect(fe, {
    deviceId: DeviceId.BLOCK,
    memory: shared,
  });
  cleanup.push(() => t.close());
  return { be, t, shared };
}

function newBlk(t: VhostUserDriverTransport, shared: SharedGuestMemory): BlkDriver {
  const blk = new BlkDriver(t, shared.memory, new SlabAllocator(0x100000, 4096, 64), {
    ringBase: 0x10000,
    queueSize: 64,
  });
  t.onInterrupt(() => blk.onInterrupt());
  return blk;
}

describe("VhostUserDriverTransport set-up (vhost-user.rst, QEMU's order)", () => {
  it("connects with SET_OWNER, GET_FEATURES, protocol features, GET_QUEUE_NUM, GET_CONFIG, SET_MEM_TABLE", async () => {
    const { be, t } = await setup();
    expect(be.received.map((m) => m.request)).toEqual([
      R.SET_OWNER,
      R.GET_FEATURES,
      R.GET_PROTOCOL_FEATURES,
      R.SET_PROTOCOL_FEATURES,
      R.GET_QUEUE_NUM,
      R.GET_CONFIG,
      R.SET_MEM_TABLE,
    ]);
    // Only the wanted subset of the offer (not BACKEND_REQ, bit 5).
    expect(decodeU64(be.received[3]!.payload)).toBe(PF);
    expect(t.protocolFeatures).toBe(PF);
    expect(t.queueCount).toBe(2);
    expect(be.received[6]!.fds.length).toBe(1);
  });

  it("sets up queue 0 with NUM, BASE, ADDR in user addresses, KICK and CALL, and enables it at DRIVER_OK", async () => {
    const { be, t, shared } = await setup();
    const blk = newBlk(t, shared);
    await be.waitFor(14);
    expect(be.received.slice(7).map((m) => m.request)).toEqual([
      R.SET_FEATURES,
      R.SET_VRING_NUM,
      R.SET_VRING_BASE,
      R.SET_VRING_ADDR,
      R.SET_VRING_KICK,
      R.SET_VRING_CALL,
      R.SET_VRING_ENABLE,
    ]);
    const setFeatures = decodeU64(be.received[7]!.payload);
    // VERSION_1 and FLUSH accepted, RING_RESET withheld by this transport, bit 30 kept.
    expect(setFeatures).toBe(
      featureMask(Feature.VERSION_1) |
        featureMask(BlkFeature.FLUSH) |
        featureMask(VHOST_USER_F_PROTOCOL_FEATURES),
    );
    expect(blk.features).toBe(featureMask(Feature.VERSION_1) | featureMask(BlkFeature.FLUSH));
    expect(decodeVringState(be.received[8]!.payload)).toEqual({ index: 0, num: 64 });
    expect(decodeVringState(be.received[9]!.payload)).toEqual({ index: 0, num: 0 });
    const base = shared.regions[0]!.userspaceAddr;
    const addr = decodeVringAddr(be.received[10]!.payload);
    expect(addr.desc).toBe(base + 0x10000n);
    expect(addr.avail).toBe(base + 0x10000n + 64n * 16n);
    expect(addr.used - base).toBe(BigInt(Math.ceil((0x10000 + 64 * 16 + 6 + 2 * 64) / 4) * 4));
    expect(decodeVringFd(be.received[11]!.payload)).toEqual({ index: 0, noFd: false });
    expect(be.received[11]!.fds.length).toBe(1);
    expect(be.received[12]!.fds.length).toBe(1);
    expect(decodeVringState(be.received[13]!.payload)).toEqual({ index: 0, num: 1 });
    expect(t.status).toBe(
      DeviceStatus.ACKNOWLEDGE |
        DeviceStatus.DRIVER |
        DeviceStatus.FEATURES_OK |
        DeviceStatus.DRIVER_OK,
    );
  });

  it("kicks through the eventfd sent with SET_VRING_KICK", async () => {
    const { be, t, shared } = await setup();
    const blk = newBlk(t, shared);
    await be.waitFor(14);
    const kickFd = be.received[11]!.fds[0]!;
    expect(loadNative().eventfdRead(kickFd)).toBe(null);
    void outcome(blk.read(0, 512));
    // BlkDriver notifies once per task, from a microtask (its block plug).
    await Promise.resolve();
    expect(loadNative().eventfdRead(kickFd)).toBe(1n);
  });

  it("refuses a back-end without VERSION_1 with TransportError not-modern and sets FAILED", async () => {
    const { t } = await setup({
      offered: featureMask(VHOST_USER_F_PROTOCOL_FEATURES) | featureMask(BlkFeature.FLUSH),
    });
    expect(() => t.negotiate(0n)).toThrow(TransportError);
    expect(t.status & DeviceStatus.FAILED).toBe(DeviceStatus.FAILED);
  });

  it("refuses ring addresses outside the shared memory with a RangeError naming layout.desc", async () => {
    const { t, shared } = await setup();
    t.negotiate(0n);
    expect(() =>
      t.setupQueue(0, shared.memory, { size: 8, desc: 0x300000, driver: 0x1000, device: 0x2000 }),
    ).toThrow(/layout\.desc/);
    expect(() =>
      t.setupQueue(2, shared.memory, { size: 8, desc: 0, driver: 0x1000, device: 0x2000 }),
    ).toThrow(TransportError);
  });
});

describe("VhostUserDriverTransport when the back-end fails (drivers distrust devices)", () => {
  it("turns a closed connection into DEVICE_NEEDS_RESET and fails requests in flight", async () => {
    const { be, t, shared } = await setup();
    const blk = newBlk(t, shared);
    await be.waitFor(14);
    const pending = outcome(blk.read(0, 4096));
    be.conn.close(); // the back-end dies with the request in flight
    const r = await pending;
    expect(r.error).toBeInstanceOf(BlkDeviceFault);
    expect((r.error as BlkDeviceFault).code).toBe("blk-needs-reset");
    expect(t.needsReset).toBe(true);
    expect(t.closeReason).toBeInstanceOf(VhostUserError);
    expect(t.closeReason?.code).toBe("peer-closed");
  });

  it("turns a refused SET_VRING_ADDR (REPLY_ACK status 1) into DEVICE_NEEDS_RESET", async () => {
    const { be, t, shared } = await setup({ nackOn: R.SET_VRING_ADDR });
    const blk = newBlk(t, shared);
    const r = await outcome(blk.read(0, 512));
    expect((r.error as BlkDeviceFault).code).toBe("blk-needs-reset");
    expect(t.closeReason?.code).toBe("nack");
    expect(t.closeReason?.request).toBe(R.SET_VRING_ADDR);
    expect(be.conn.closed).toBe(false);
  });

  it("rejects connect when the back-end cannot give the configuration (no PROTOCOL_F_CONFIG)", async () => {
    const { fe, be } = pair();
    const shared = createSharedMemory({ size: 1 << 20 });
    cleanup.push(() => {
      be.conn.close();
      shared.close();
    });
    be.onRequest = (m) => {
      if (m.request === R.GET_FEATURES)
        be.reply(
          m.request,
          encodeU64(featureMask(Feature.VERSION_1) | featureMask(VHOST_USER_F_PROTOCOL_FEATURES)),
        );
      if (m.request === R.GET_PROTOCOL_FEATURES) be.reply(m.request, encodeU64(0n));
    };
    const r = await outcome(
      VhostUserDriverTransport.connect(fe, { deviceId: DeviceId.BLOCK, memory: shared }),
    );
    expect((r.error as VhostUserError).code).toBe("unsupported");
    expect(fe.closed).toBe(true);
  });

  it("names the bad option", async () => {
    const shared = createSharedMemory({ size: 1 << 20 });
    cleanup.push(() => shared.close());
    await expect(
      VhostUserDriverTransport.connect("/nonexistent", { deviceId: 0, memory: shared }),
    ).rejects.toThrow(/options\.deviceId/);
    await expect(
      VhostUserDriverTransport.connect("/nonexistent", {
        deviceId: 2,
        memory: shared,
        configSize: 300,
      }),
    ).rejects.toThrow(/options\.configSize/);
    expect(() => createSharedMemory({ size: 1000 })).toThrow(/options\.size/);
  });
});
