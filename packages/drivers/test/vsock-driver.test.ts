// VsockDriver (guest) against VsockDevice (host) over virtio-mmio in one thread: connections
// both ways, data both ways with credit-based flow control, half-close and close, refusal,
// transport reset, and a device that breaks the protocol.
import { VsockDevice, type VsockDeviceOptions, type VsockStream } from "@virtio-ts/devices";
import { createGuestMemory } from "@virtio-ts/memory";
import { DeviceId, Feature, featureMask, VsockHdr, VsockOp } from "@virtio-ts/spec";
import { type DeviceContext, type DeviceModel, InThreadMmio } from "@virtio-ts/transport";
import { DescriptorChain } from "@virtio-ts/virtqueue";
import { describe, expect, it } from "vitest";
import {
  SlabAllocator,
  VsockConnectionError,
  VsockDriver,
  type VsockDriverOptions,
} from "../src/index.js";

const GUEST_CID = 42;

function setup(
  device: Partial<VsockDeviceOptions> = {},
  driver: Partial<VsockDriverOptions> = {},
): { dev: VsockDevice; drv: VsockDriver; vm: InThreadMmio } {
  const memory = createGuestMemory({ size: 8 << 20 });
  const dev = new VsockDevice({ guestCid: GUEST_CID, queueSize: 64, ...device });
  const vm = new InThreadMmio(dev, { memory });
  const drv = new VsockDriver(vm.transport, memory, new SlabAllocator(0x100000, 4096, 512), {
    ringBase: 0x10000,
    queueSize: 64,
    ...driver,
  });
  vm.line.handler = () => drv.onInterrupt();
  return { dev, drv, vm };
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed + i * 7 + (i >> 8)) & 0xff;
  return b;
}

/** Everything a host stream receives until `end`. */
function collect(s: VsockStream): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  return new Promise((resolve, reject) => {
    s.on("data", (d) => parts.push(d));
    s.on("end", () => {
      const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        out.set(p, at);
        at += p.length;
      }
      resolve(out);
    });
    s.on("error", reject);
  });
}

describe("VsockDriver ↔ VsockDevice (VIRTIO 1.3 §5.10)", () => {
  it("reads guest_cid, negotiates streams, and a guest connection to a host port carries data both ways", async () => {
    const { dev, drv } = setup();
    expect(drv.guestCid).toBe(GUEST_CID);
    expect(drv.features & featureMask(Feature.VERSION_1)).not.toBe(0n);
    const accepted: VsockStream[] = [];
    dev.listen(1234, (s) => {
      accepted.push(s);
      s.on("data", (d) => s.write(d.map((x) => x ^ 0xff)));
    });
    const c = await drv.connect(1234);
    expect(c.remoteCid).toBe(2);
    expect(accepted[0]!.remotePort).toBe(c.localPort);
    await c.write(new TextEncoder().encode("ping"));
    expect(await c.read()).toEqual(new TextEncoder().encode("ping").map((x) => x ^ 0xff));
    expect(dev.stats.connections).toBe(1);
  });

  it("moves 1 MiB each way through a 64 KiB buffer: the sender waits for credit, nothing is lost or reordered", async () => {
    const { dev, drv } = setup({ bufferBytes: 65536 }, { bufferBytes: 65536 });
    const up = bytes(1 << 20, 3);
    const down = bytes(1 << 20, 5);
    let host!: VsockStream;
    const got = new Promise<Uint8Array>((resolve) => {
      dev.listen(7, (s) => {
        host = s;
        resolve(collect(s));
        // The host writes 1 MiB at once: it is held until the guest grants credit.
        s.write(down);
        s.end();
      });
    });
    const c = await drv.connect(7);
    const writing = c.write(up).then(() => c.end());
    const parts: Uint8Array[] = [];
    for (let d = await c.read(); d !== null; d = await c.read()) parts.push(d);
    await writing;
    const fromHost = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      fromHost.set(p, at);
      at += p.length;
    }
    // Compared as Buffers (a deep equality of 1 MiB arrays is slow).
    expect(Buffer.from(fromHost).equals(Buffer.from(down))).toBe(true);
    expect(Buffer.from(await got).equals(Buffer.from(up))).toBe(true);
    expect(host.bytesRead).toBe(1 << 20);
    expect(dev.stats.creditViolations).toBe(0);
  });

  it("a host connection to a guest listener opens, and the guest's close is answered with RST (§5.10.6.5)", async () => {
    const { dev, drv } = setup();
    const l = drv.listen(5000);
    const s = dev.connect(5000);
    const connected = new Promise<void>((r) => s.once("connect", r));
    const guest = await l.accept();
    await connected;
    expect(s.readyState).toBe("open");
    s.write("hello guest");
    expect(new TextDecoder().decode((await guest.read())!)).toBe("hello guest");
    const closed = new Promise<boolean>((r) => s.once("close", r));
    guest.close();
    expect(await closed).toBe(false);
    expect(dev.connectionCount).toBe(0);
  });

  it("refuses connections to ports nobody listens on, both ways (RST)", async () => {
    const { dev, drv } = setup();
    await expect(drv.connect(999)).rejects.toMatchObject({ code: "refused" });
    const s = dev.connect(999);
    const err = await new Promise<unknown>((r) => s.once("error", r));
    expect(err).toMatchObject({ code: "ECONNREFUSED", remotePort: 999 });
    expect(dev.stats.refused).toBe(1);
  });

  it("a transport reset fails every connection on both sides and the driver reads the new guest_cid (§5.10.6.7)", async () => {
    const { dev, drv } = setup();
    dev.listen(1, () => {});
    const c = await drv.connect(1);
    const reading = c.read();
    dev.transportReset(77);
    await expect(reading).rejects.toBeInstanceOf(VsockConnectionError);
    await expect(reading).rejects.toMatchObject({ code: "transport-reset" });
    expect(drv.stats.transportResets).toBe(1);
    expect(drv.guestCid).toBe(77);
    expect(dev.connectionCount).toBe(0);
    // The transport works again with the new CID.
    dev.listen(2, (s) => s.on("data", (d) => s.write(d)));
    const c2 = await drv.connect(2);
    await c2.write(new Uint8Array([9]));
    expect(await c2.read()).toEqual(new Uint8Array([9]));
  });
});

/** A socket device that sends whatever packet a test gives it (a hostile device). */
class ScriptedVsock implements DeviceModel {
  readonly deviceId = DeviceId.VSOCK;
  readonly features = 0n;
  readonly queueMaxSizes = [64, 64, 64];
  readonly configSize = 8;
  ctx: DeviceContext | undefined;
  readonly sent: Uint8Array[] = [];
  readonly #chain = new DescriptorChain(64);
  readConfig(offset: number): number {
    return offset === 0 ? GUEST_CID : 0;
  }
  writeConfig(): void {}
  activate(ctx: DeviceContext): void {
    this.ctx = ctx;
  }
  onQueueNotify(index: number): void {
    const q = this.ctx?.queue(index);
    if (index !== 1 || q === undefined) return;
    while (q.pop(this.#chain)) {
      const b = new Uint8Array(this.#chain.readableBytes);
      this.#chain.copyFromReadable(this.ctx!.memory, 0, b);
      this.sent.push(b);
      q.push(this.#chain.head, 0);
    }
  }
  reset(): void {}
  /** Write `packet` into the next receive buffer, claiming `usedLen` bytes. */
  deliver(packet: Uint8Array, usedLen = packet.length): void {
    const ctx = this.ctx!;
    const q = ctx.queue(0)!;
    if (!q.pop(this.#chain)) throw new Error("no receive buffer");
    this.#chain.copyToWritable(ctx.memory, 0, packet);
    q.push(this.#chain.head, usedLen);
    ctx.interrupt(0);
  }
}

function packet(o: {
  dstCid?: number;
  srcPort: number;
  dstPort: number;
  op: number;
  len?: number;
  payload?: Uint8Array;
  bufAlloc?: number;
}): Uint8Array {
  const payload = o.payload ?? new Uint8Array(0);
  const b = new Uint8Array(VsockHdr.SIZE + payload.length);
  const v = new DataView(b.buffer);
  v.setUint32(VsockHdr.SRC_CID, 2, true);
  v.setUint32(VsockHdr.DST_CID, o.dstCid ?? GUEST_CID, true);
  v.setUint32(VsockHdr.SRC_PORT, o.srcPort, true);
  v.setUint32(VsockHdr.DST_PORT, o.dstPort, true);
  v.setUint32(VsockHdr.LEN, o.len ?? payload.length, true);
  v.setUint16(VsockHdr.TYPE, 1, true);
  v.setUint16(VsockHdr.OP, o.op, true);
  v.setUint32(VsockHdr.BUF_ALLOC, o.bufAlloc ?? 65536, true);
  b.set(payload, VsockHdr.SIZE);
  return b;
}

describe("VsockDriver distrusts the device", () => {
  function scripted() {
    const memory = createGuestMemory({ size: 8 << 20 });
    const dev = new ScriptedVsock();
    const vm = new InThreadMmio(dev, { memory, delivery: "sync" });
    const drv = new VsockDriver(vm.transport, memory, new SlabAllocator(0x100000, 4096, 256), {
      ringBase: 0x10000,
      queueSize: 64,
      bufferBytes: 4096,
    });
    vm.line.handler = () => drv.onInterrupt();
    return { dev, drv };
  }

  it("drops a packet addressed to another CID (vsock-wrong-cid) and one whose len passes the used length (vsock-bad-packet)", () => {
    const { dev, drv } = scripted();
    drv.listen(80);
    dev.deliver(packet({ dstCid: 43, srcPort: 1, dstPort: 80, op: VsockOp.REQUEST }));
    expect(drv.lastFault?.code).toBe("vsock-wrong-cid");
    dev.deliver(packet({ srcPort: 1, dstPort: 80, op: VsockOp.RW, len: 100 }));
    expect(drv.lastFault?.code).toBe("vsock-bad-packet");
    expect(drv.stats.faults).toBe(2);
    expect(drv.connectionCount).toBe(0);
  });

  it("resets a connection the device floods past the credit it was given (vsock-credit), and answers a packet for no connection with RST", async () => {
    const { dev, drv } = scripted();
    const l = drv.listen(80);
    dev.deliver(packet({ srcPort: 1, dstPort: 80, op: VsockOp.REQUEST }));
    const c = await l.accept();
    // Credit is 4096 bytes and nothing is read: 3 × 2000 passes it.
    for (let i = 0; i < 3; i++) {
      dev.deliver(
        packet({ srcPort: 1, dstPort: 80, op: VsockOp.RW, payload: new Uint8Array(2000) }),
      );
    }
    expect(drv.lastFault?.code).toBe("vsock-credit");
    // What arrived within the credit is still read, then the reset shows.
    expect(await c.read()).toHaveLength(2000);
    expect(await c.read()).toHaveLength(2000);
    await expect(c.read()).rejects.toMatchObject({ code: "reset" });
    const ops = dev.sent.map((b) => new DataView(b.buffer).getUint16(VsockHdr.OP, true));
    expect(ops).toEqual([VsockOp.RESPONSE, VsockOp.RST]);
    dev.deliver(packet({ srcPort: 9, dstPort: 99, op: VsockOp.RW, payload: new Uint8Array(1) }));
    const last = dev.sent.at(-1)!;
    expect(new DataView(last.buffer).getUint16(VsockHdr.OP, true)).toBe(VsockOp.RST);
    expect(new DataView(last.buffer).getUint32(VsockHdr.DST_PORT, true)).toBe(9);
  });
});
