/**
 * "any virtio-vsock driver": checks a third-party socket driver (VIRTIO 1.3 §5.10) against our
 * VsockDevice, behind a recording register bus and a model wrapper that reads every packet the
 * driver sends, with a host-side listener the suite controls.
 * @module
 */
import { VsockDevice, type VsockStream } from "@virtio-ts/devices";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { VsockHdr, VsockOp, VsockQueue } from "@virtio-ts/spec";
import type { DriverTransport } from "@virtio-ts/transport";
import {
  type ContractCheck,
  type ContractSuite,
  type ContractTransport,
  ContractViolation,
  expectEqual,
  expectThat,
} from "./contract.js";
import type { DriverEnv } from "./driver-env.js";
import { type BusEvent, checkInit, joinFeatureWords } from "./init-order.js";
import { attachDriver, type DriverSide, driverSide } from "./rig-link.js";
import { TapModel } from "./tap.js";
import { MAX_TURNS, macrotask } from "./wait.js";

/** Guest memory and device access the suite gives a socket driver under test. */
export type VsockDriverEnv = DriverEnv;

/**
 * How the "any virtio-vsock driver" suite reaches a third-party socket driver.
 *
 * Implementer contract: `attach` is called once per check with a fresh, reset device; it
 * initialises the device (§3.1.1, §5.10.5) through `transport` and returns when the driver is
 * ready. `exchange(port, data)` opens a stream connection to host (CID 2) port `port`, sends
 * `data`, shuts down its sending side, and resolves with every byte received until the host's
 * end of stream; the connection is then closed. The suite runs the device and calls `interrupt`
 * whenever the device's interrupt line is asserted; the driver must not wait for anything else.
 */
export interface VsockDriverAdapter {
  /** Initialise the device behind `transport`. */
  attach(
    transport: DriverTransport,
    memory: GuestMemory,
    env: VsockDriverEnv,
  ): Promise<void> | void;
  /** One exchange with a host port (see the contract). */
  exchange(port: number, data: Uint8Array): Promise<Uint8Array>;
  /** The interrupt handler: take the interrupt and process the queues. */
  interrupt(): void;
}

const MEM_SIZE = 0x800000;
const REGION = { base: 0x100000, size: 0x700000 } as const;
const CID = 0x4242;
const PORT = 1234;

/** A packet the driver sent, as the device was about to read it. */
interface SentPacket {
  readonly srcCid: number;
  readonly srcCidHigh: number;
  readonly op: number;
  readonly bufAlloc: number;
  readonly len: number;
}

interface RigOptions {
  /** `buf_alloc` of the host's sockets. */
  readonly bufferBytes?: number;
  /** The host reads nothing until this many turns have passed. */
  readonly pauseTurns?: number;
}

class VsockDriverRig {
  readonly memory = createGuestMemory({ size: MEM_SIZE });
  readonly device: VsockDevice;
  readonly tap: TapModel;
  readonly side: DriverSide;
  readonly events: BusEvent[] = [];
  readonly accepted = [0, 0];
  readonly sent: SentPacket[] = [];
  /** Chains with a writable descriptor on the transmit queue, or a readable one elsewhere. */
  wrongDirection = 0;
  /** Host streams accepted on the port. */
  readonly streams: VsockStream[] = [];
  turns = 0;

  constructor(
    readonly adapter: VsockDriverAdapter,
    readonly kind: ContractTransport,
    o: RigOptions,
  ) {
    this.device = new VsockDevice({ guestCid: CID, bufferBytes: o.bufferBytes ?? 262144 });
    // The host side: collect until the guest's end of stream, then answer with the bytes
    // transformed, and end.
    this.device.listen(PORT, (s) => {
      this.streams.push(s);
      const parts: Uint8Array[] = [];
      if ((o.pauseTurns ?? 0) > 0) {
        s.pause();
        const until = this.turns + o.pauseTurns!;
        const wake = (): void => {
          if (this.turns >= until) s.resume();
          else void macrotask().then(wake);
        };
        wake();
      }
      s.on("data", (d) => parts.push(d));
      s.on("end", () => {
        const all = concat(parts);
        s.end(all.map((b) => b ^ 0x5a));
      });
    });
    this.tap = new TapModel(this.device, {
      onPop: (index, chain, ctx) => {
        if (index === VsockQueue.TX) {
          if (chain.readableCount < chain.count) this.wrongDirection++;
          if (chain.readableCount === 0 || chain.lens[0]! < VsockHdr.SIZE) return;
          const h = ctx.memory.slice(chain.addrs[0]!, VsockHdr.SIZE).slice();
          const v = new DataView(h.buffer);
          this.sent.push({
            srcCid: v.getUint32(VsockHdr.SRC_CID, true),
            srcCidHigh: v.getUint32(VsockHdr.SRC_CID + 4, true),
            op: v.getUint16(VsockHdr.OP, true),
            bufAlloc: v.getUint32(VsockHdr.BUF_ALLOC, true),
            len: v.getUint32(VsockHdr.LEN, true),
          });
          // Recorded: now let the device take it as from the right CID, so a driver with a
          // wrong source CID still gets through the other checks.
          v.setUint32(VsockHdr.SRC_CID, CID, true);
          v.setUint32(VsockHdr.SRC_CID + 4, 0, true);
          ctx.memory.write(chain.addrs[0]!, h);
        } else if (chain.readableCount > 0) {
          this.wrongDirection++;
        }
      },
    });
    this.side = driverSide(this.tap, this.memory, kind, this.events, this.accepted);
  }

  get offered(): bigint {
    return this.side.offeredFeatures();
  }

  get acceptedFeatures(): bigint {
    return joinFeatureWords(this.accepted);
  }

  /** Run the device and the driver's interrupt handler until `p` settles (bounded). */
  async settle<T>(p: Promise<T>, what: string, turns = MAX_TURNS * 5): Promise<T> {
    let done = false;
    const tracked = p.finally(() => {
      done = true;
    });
    tracked.catch(() => {});
    for (let i = 0; i < turns && !done; i++) {
      this.turns++;
      if (this.side.interruptPending()) this.adapter.interrupt();
      await macrotask();
    }
    if (!done) {
      throw new ContractViolation(`${what}: the driver's promise`, "settled", "still pending");
    }
    return tracked;
  }

  /** Run `n` turns. */
  async run(n: number): Promise<void> {
    for (let i = 0; i < n; i++) {
      this.turns++;
      if (this.side.interruptPending()) this.adapter.interrupt();
      await macrotask();
    }
  }

  /** `exchange(PORT, data)`, settled; checks the host got `data` and the driver the answer. */
  async exchange(data: Uint8Array, what: string): Promise<void> {
    let got: Uint8Array;
    try {
      got = await this.settle(this.adapter.exchange(PORT, data), what);
    } catch (e) {
      if (e instanceof ContractViolation) throw e;
      throw new ContractViolation(what, "resolves", e instanceof Error ? e.message : String(e));
    }
    const host = this.streams.at(-1);
    expectThat(`${what}: a connection to the host port`, host !== undefined, "one", "none");
    expectEqual(`${what}: bytes the host received`, host!.bytesRead, data.length);
    expectEqual(
      `${what}: bytes the driver returned`,
      got,
      data.map((b) => b ^ 0x5a),
    );
  }
}

function concat(parts: readonly Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function bytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (seed + i * 11 + (i >> 9)) & 0xff;
  return b;
}

async function rig(
  adapter: VsockDriverAdapter,
  kind: ContractTransport,
  o: RigOptions = {},
): Promise<VsockDriverRig> {
  const r = new VsockDriverRig(adapter, kind, o);
  await attachDriver(r.side, kind, REGION, (t, env) => adapter.attach(t, r.memory, env));
  return r;
}

const checks: ContractCheck<VsockDriverAdapter>[] = [
  {
    name: "initialises the device in the order of §3.1.1",
    spec: "§3.1.1, §5.10.5",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.exchange(bytes(100, 1), "an exchange of 100 bytes");
      checkInit(r.events);
    },
  },
  {
    name: "accepts only offered features",
    spec: "§2.2.1, §3.1.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      expectEqual("features accepted but not offered", r.acceptedFeatures & ~r.offered, 0n);
    },
  },
  {
    name: "exchanges a stream byte-exact both ways, reading until the host's end of stream",
    spec: "§5.10.6.2, §5.10.6.5",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.exchange(bytes(40_000, 2), "an exchange of 40000 bytes");
      await r.exchange(bytes(1, 3), "a second exchange of 1 byte");
    },
  },
  {
    name: "uses guest_cid as the source CID of every packet, upper 32 bits zero",
    spec: "§5.10.6.4.1, §5.10.6",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.exchange(bytes(500, 4), "an exchange of 500 bytes");
      expectThat("packets the driver sent", r.sent.length > 0, "some", 0);
      const bad = r.sent.find((p) => p.srcCid !== CID || p.srcCidHigh !== 0);
      expectThat(
        "src_cid of the driver's packets",
        bad === undefined,
        `0x${CID.toString(16)} (upper bits 0)`,
        bad === undefined ? "" : `0x${bad.srcCidHigh.toString(16)}:${bad.srcCid.toString(16)}`,
      );
    },
  },
  {
    name: "sends RW payload only within the host's free buffer space",
    spec: "§5.10.6.3.1",
    async run({ adapter, transport }) {
      // The host's socket buffer holds 4096 bytes and it reads nothing for a while.
      const r = await rig(adapter, transport, { bufferBytes: 4096, pauseTurns: 30 });
      const data = bytes(32_768, 5);
      let failure: unknown;
      try {
        await r.exchange(data, "an exchange of 32768 bytes through a 4096-byte host buffer");
      } catch (e) {
        failure = e;
      }
      expectEqual(
        "RW packets past the host's credit (the device resets the connection for them)",
        r.device.stats.creditViolations,
        0,
      );
      if (failure !== undefined) throw failure;
    },
  },
  {
    name: "puts a valid buf_alloc in every packet of a connection",
    spec: "§5.10.6.3.1",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.exchange(bytes(3000, 6), "an exchange of 3000 bytes");
      const zero = r.sent.filter((p) => p.op !== VsockOp.RST && p.bufAlloc === 0);
      expectEqual("packets with buf_alloc 0", zero.length, 0);
    },
  },
  {
    name: "closes the connection after an exchange (clean disconnect)",
    spec: "§5.10.6.5",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.exchange(bytes(10, 7), "an exchange of 10 bytes");
      for (let i = 0; i < 50 && r.device.connectionCount > 0; i++) await r.run(1);
      expectEqual("connections the host still holds", r.device.connectionCount, 0);
    },
  },
  {
    name: "makes only device-readable buffers available on the transmit queue and device-writable ones elsewhere",
    spec: "§5.10.6.4",
    async run({ adapter, transport }) {
      const r = await rig(adapter, transport);
      await r.exchange(bytes(5000, 8), "an exchange of 5000 bytes");
      expectEqual("chains in the wrong direction", r.wrongDirection, 0);
    },
  },
];

/**
 * The "any virtio-vsock driver" suite (VIRTIO 1.3 §5.10): §3.1.1 initialisation order, only
 * offered features accepted, streams exchanged byte-exact both ways until the host's end of
 * stream, `guest_cid` as source CID, RW only within the host's credit (the host's buffer small
 * and unread for a while), a valid `buf_alloc` in every packet, a clean disconnect, and
 * read-only transmit / write-only receive and event buffers. The device is our VsockDevice.
 */
export const vsockDriverSuite: ContractSuite<VsockDriverAdapter> = {
  name: "any virtio-vsock driver",
  checks,
};
