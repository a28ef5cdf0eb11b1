import { Switch, VethPair } from "@virtio-ts/backend-net";
import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";
import { describe, expect, it } from "vitest";
import { sniff } from "../src/index.js";
import {
  EncryptedLinkEnd,
  encryptedLink,
  LINK_BATCH_ENTRY_LEN,
  LINK_ETHERTYPE,
  LINK_HEADER_LEN,
  LINK_MAX_FRAMES,
  LINK_OVERHEAD,
  LINK_VERSION,
  LINK_VERSION_BATCH,
  patchBackends,
} from "../src/node.js";

const KEY = new Uint8Array(32).map((_, i) => i * 7 + 1);
const SECRET = new TextEncoder().encode("TOP-SECRET-PAYLOAD-0123456789abc");

/** A frame from 02:..:01 to 02:..:02 carrying SECRET and a counter. */
function frame(n: number, len = 60 + SECRET.length): Uint8Array {
  const f = new Uint8Array(len);
  f.set([2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00], 0);
  if (len >= 20 + SECRET.length) f.set(SECRET, 20);
  f[14] = n & 0xff;
  f[15] = (n >>> 8) & 0xff;
  return f;
}

/** A carrier that only records what it is asked to send (for handcrafting delivery orders). */
function tapeCarrier(): NetBackend & { tape: Uint8Array[] } {
  const tape: Uint8Array[] = [];
  return {
    tape,
    transmit: (f) => tape.push(f.slice()) > 0,
    attach: () => {},
    detach: () => {},
  };
}

/** A receiving end `b` over a veth pair whose other side the test drives by hand. */
function receiver(options: { replayWindow?: number } = {}) {
  const veth = new VethPair();
  const b = new EncryptedLinkEnd(veth.b, KEY, { role: "b", ...options });
  const got: Uint8Array[] = [];
  b.attach({ deliver: (f) => got.push(new Uint8Array(f)) > 0 });
  veth.a.attach({ deliver: () => true });
  const sender = new EncryptedLinkEnd(tapeCarrier(), KEY, { role: "a" });
  const tape = (sender.carrier as ReturnType<typeof tapeCarrier>).tape;
  return { b, got, inject: (f: Uint8Array) => veth.a.transmit(f), sender, tape };
}

const ids = (frames: Uint8Array[]): number[] => frames.map((f) => f[14]! | (f[15]! << 8));

function collect(end: NetBackend): Uint8Array[] {
  const got: Uint8Array[] = [];
  const sink: NetFrameSink = { deliver: (f) => got.push(new Uint8Array(f)) > 0 };
  end.attach(sink);
  return got;
}

describe("encryptedLink", () => {
  it("carries frames intact in both directions over a veth pair", () => {
    const veth = new VethPair();
    const [a, b] = encryptedLink(KEY, [veth.a, veth.b]);
    const atA = collect(a);
    const atB = collect(b);
    for (let i = 0; i < 5; i++) expect(a.transmit(frame(i))).toBe(true);
    expect(b.transmit(frame(100, 1514))).toBe(true);
    expect(a.transmit(frame(6, 14))).toBe(true);
    expect(atB).toEqual([0, 1, 2, 3, 4, 6].map((i) => frame(i, i === 6 ? 14 : undefined)));
    expect(atA).toEqual([frame(100, 1514)]);
    expect(a.stats).toMatchObject({ txFrames: 6, rxFrames: 1, tampered: 0, replayed: 0 });
    expect(b.stats).toMatchObject({ txFrames: 1, rxFrames: 6, peerSessions: 1 });
    expect(a.framesLeft).toBe(LINK_MAX_FRAMES - 6);
  });

  it("joins two switch segments so hosts on each side talk through the tunnel", () => {
    const left = new Switch();
    const right = new Switch();
    const veth = new VethPair(); // the untrusted underlay
    const [a, b] = encryptedLink(KEY, [veth.a, veth.b]);
    patchBackends(left.createPort({ name: "uplink" }), a);
    patchBackends(right.createPort({ name: "uplink" }), b);
    const h1 = left.createPort({ name: "h1" });
    const h2 = right.createPort({ name: "h2" });
    const at1 = collect(h1);
    const at2 = collect(h2);
    const bcast = frame(1);
    bcast.fill(0xff, 0, 6);
    expect(h1.transmit(bcast)).toBe(true);
    expect(at2).toEqual([bcast]);
    const reply = frame(2);
    reply.set([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2], 0); // to h1's MAC, learned by both switches
    expect(h2.transmit(reply)).toBe(true);
    expect(at1).toEqual([reply]);
  });

  it("never puts plaintext on the carrier: the payload and inner MACs are absent from carried bytes", () => {
    const veth = new VethPair();
    const carried: Uint8Array[] = [];
    const tap = sniff(veth.a, {
      record: (_i, f) => carried.push(f.slice()),
      retract: () => false,
    });
    const [a, b] = encryptedLink(KEY, [tap, veth.b]);
    collect(a);
    const atB = collect(b);
    for (let i = 0; i < 3; i++) a.transmit(frame(i));
    b.transmit(frame(9));
    expect(atB).toHaveLength(3);
    expect(carried).toHaveLength(4);
    const wire = Buffer.concat(carried);
    expect(wire.indexOf(Buffer.from(SECRET))).toBe(-1);
    expect(wire.indexOf(Buffer.from(SECRET.subarray(0, 8)))).toBe(-1);
    expect(wire.indexOf(Buffer.from(frame(0).subarray(0, 12)))).toBe(-1);
    for (const c of carried) {
      expect(c.length).toBe(frame(0).length + LINK_OVERHEAD);
      expect((c[12]! << 8) | c[13]!).toBe(LINK_ETHERTYPE);
    }
  });

  it("drops and counts a frame with one flipped bit, in the ciphertext, the tag or the header", () => {
    const r = receiver();
    r.sender.transmit(frame(0));
    const good = r.tape[0]!;
    for (const at of [LINK_HEADER_LEN + 3, good.length - 1, 30 + 3, 18]) {
      const bad = good.slice();
      bad[at]! ^= 0x10;
      r.inject(bad);
    }
    expect(r.got).toEqual([]);
    expect(r.b.stats).toMatchObject({ tampered: 4, rxFrames: 0 });
    r.inject(good); // the intact original still opens
    expect(ids(r.got)).toEqual([0]);
  });

  it("drops and counts a replayed frame", () => {
    const r = receiver();
    r.sender.transmit(frame(0));
    r.sender.transmit(frame(1));
    r.inject(r.tape[0]!);
    r.inject(r.tape[1]!);
    r.inject(r.tape[0]!);
    r.inject(r.tape[1]!);
    expect(ids(r.got)).toEqual([0, 1]);
    expect(r.b.stats).toMatchObject({ replayed: 2, rxFrames: 2 });
  });

  it("accepts out-of-order frames within the window exactly once", () => {
    const r = receiver({ replayWindow: 64 });
    for (let i = 0; i < 10; i++) r.sender.transmit(frame(i));
    for (const i of [9, 3, 0, 3, 8, 9, 1]) r.inject(r.tape[i]!);
    expect(ids(r.got)).toEqual([9, 3, 0, 8, 1]);
    expect(r.b.stats.replayed).toBe(2);
  });

  it("drops and counts frames that fall behind the replay window", () => {
    const r = receiver({ replayWindow: 32 });
    for (let i = 0; i < 40; i++) r.sender.transmit(frame(i));
    r.inject(r.tape[39]!);
    r.inject(r.tape[7]!); // 39 - 7 = 32: just outside
    r.inject(r.tape[8]!); // 31 behind: the oldest still inside
    r.inject(r.tape[0]!);
    expect(ids(r.got)).toEqual([39, 8]);
    expect(r.b.stats).toMatchObject({ tooOld: 2, replayed: 0 });
  });

  it("drops and counts short, foreign and wrong-role frames as malformed", () => {
    const r = receiver();
    r.sender.transmit(frame(0));
    const good = r.tape[0]!;
    r.inject(good.subarray(0, LINK_OVERHEAD - 1));
    const foreign = good.slice();
    foreign[13] = 0x00; // IPv4 EtherType
    r.inject(foreign);
    const ownRole = good.slice();
    ownRole[15] = 0x62; // claims to come from "b": a reflected frame
    r.inject(ownRole);
    const hugeSeq = good.slice();
    hugeSeq[26] = 1; // sequence numbers stay below 2^32
    r.inject(hugeSeq);
    expect(r.got).toEqual([]);
    expect(r.b.stats).toMatchObject({ malformed: 4, tampered: 0, rxFrames: 0 });
  });

  it("drops everything sealed with another key as tampered", () => {
    const r = receiver();
    const other = new EncryptedLinkEnd(tapeCarrier(), new Uint8Array(32).fill(9), { role: "a" });
    other.transmit(frame(0));
    r.inject((other.carrier as ReturnType<typeof tapeCarrier>).tape[0]!);
    expect(r.got).toEqual([]);
    expect(r.b.stats.tampered).toBe(1);
  });

  it("follows the peer to a new session after rekey and then refuses the old session", () => {
    const r = receiver();
    r.sender.transmit(frame(0));
    r.sender.transmit(frame(1));
    r.sender.rekey();
    r.sender.transmit(frame(2)); // sequence number 0 again, under new keys
    r.inject(r.tape[0]!);
    r.inject(r.tape[2]!);
    r.inject(r.tape[1]!); // old session, never seen, but the peer has moved on
    r.inject(r.tape[0]!);
    expect(ids(r.got)).toEqual([0, 2]);
    expect(r.b.stats).toMatchObject({ peerSessions: 2, tooOld: 2 });
    expect(r.tape[2]!.subarray(18, 26)).not.toEqual(r.tape[0]!.subarray(18, 26));
  });

  it("does not mark a frame seen when the device refused it, so the carrier's retry is delivered", () => {
    const veth = new VethPair();
    const [a, b] = encryptedLink(KEY, [veth.a, veth.b]);
    collect(a);
    let room = false;
    const got: Uint8Array[] = [];
    b.attach({ deliver: (f) => room && got.push(new Uint8Array(f)) > 0 });
    a.transmit(frame(5));
    expect(got).toEqual([]);
    room = true;
    b.rxReady();
    expect(ids(got)).toEqual([5]);
    expect(b.stats).toMatchObject({ replayed: 0, rxFrames: 1 });
  });

  it("rejects a key that is not 32 bytes with a RangeError naming key", () => {
    const veth = new VethPair();
    expect(() => encryptedLink(new Uint8Array(16), [veth.a, veth.b])).toThrow(RangeError);
    expect(() => new EncryptedLinkEnd(veth.a, new Uint8Array(31), { role: "a" })).toThrow(/key/);
    expect(() => new EncryptedLinkEnd(veth.a, KEY, { role: "a", replayWindow: 100 })).toThrow(
      /replayWindow/,
    );
    expect(() => new EncryptedLinkEnd(veth.a, KEY, { role: "c" as "a" })).toThrow(/role/);
  });

  it("refuses frames longer than maxFrameSize and counts them", () => {
    const veth = new VethPair();
    const [a] = encryptedLink(KEY, [veth.a, veth.b], { maxFrameSize: 1514 });
    expect(a.transmit(new Uint8Array(1515))).toBe(false);
    expect(a.stats).toMatchObject({ txOversize: 1, txDropped: 1, txFrames: 0 });
  });
});

describe("encryptedLink with batchBytes (one AES-GCM seal per burst)", () => {
  const tick = () => new Promise<void>((r) => queueMicrotask(r));

  it("seals a burst into one carrier frame of version 2 and delivers every frame intact, in order", async () => {
    const veth = new VethPair();
    const carried: Uint8Array[] = [];
    const tap = sniff(veth.a, { record: (_i, f) => carried.push(f.slice()), retract: () => false });
    const [a, b] = encryptedLink(KEY, [tap, veth.b], { batchBytes: 8192 });
    collect(a);
    const atB = collect(b);
    const sizes = [14, 60, 1514, 92, 300];
    for (const [i, n] of sizes.entries()) expect(a.transmit(frame(i, n))).toBe(true);
    expect(atB).toHaveLength(0); // gathered until the end of this task
    await tick();
    expect(atB).toEqual(sizes.map((n, i) => frame(i, n)));
    expect(carried).toHaveLength(1);
    expect(carried[0]![14]).toBe(LINK_VERSION_BATCH);
    const plainBytes = sizes.reduce((t, n) => t + n + LINK_BATCH_ENTRY_LEN, 0);
    expect(carried[0]!.length).toBe(plainBytes + LINK_OVERHEAD);
    expect(a.stats.txFrames).toBe(5);
    expect(b.stats.rxFrames).toBe(5);
  });

  it("starts a new carrier frame when the next frame would pass batchBytes, and seals a larger frame alone", async () => {
    const r = receiver();
    const a = new EncryptedLinkEnd(tapeCarrier(), KEY, {
      role: "a",
      batchBytes: 2000,
    });
    const tape = (a.carrier as ReturnType<typeof tapeCarrier>).tape;
    a.transmit(frame(1, 900));
    a.transmit(frame(2, 900)); // 2 × 904 fits
    a.transmit(frame(3, 900)); // would pass 2000: the first two are sealed first
    a.transmit(frame(4, 5000)); // alone, version 1, after frame 3's batch
    await tick();
    expect(tape.map((f) => f[14])).toEqual([LINK_VERSION_BATCH, LINK_VERSION_BATCH, LINK_VERSION]);
    for (const f of tape) r.inject(f);
    expect(ids(r.got)).toEqual([1, 2, 3, 4]);
  });

  it("a replayed or tampered batch is dropped whole, counted once", async () => {
    const r = receiver();
    const a = new EncryptedLinkEnd(tapeCarrier(), KEY, { role: "a", batchBytes: 4096 });
    const tape = (a.carrier as ReturnType<typeof tapeCarrier>).tape;
    for (let i = 0; i < 3; i++) a.transmit(frame(i));
    await tick();
    const sealed = tape[0]!;
    const bad = sealed.slice();
    bad[LINK_HEADER_LEN + 5]! ^= 1;
    r.inject(bad);
    r.inject(sealed);
    r.inject(sealed);
    expect(ids(r.got)).toEqual([0, 1, 2]);
    expect(r.b.stats).toMatchObject({ tampered: 1, replayed: 1, rxFrames: 3 });
  });

  it("holds the rest of a batch when the device is full and delivers it, then later frames, on rxReady", async () => {
    const veth = new VethPair();
    const [a, b] = encryptedLink(KEY, [veth.a, veth.b], { batchBytes: 8192 });
    collect(a);
    const got: number[] = [];
    let room = 2;
    b.attach({
      deliver: (f) => {
        if (room === 0) return false;
        room--;
        got.push(f[14]!);
        return true;
      },
    });
    for (let i = 0; i < 5; i++) a.transmit(frame(i));
    await tick();
    for (let i = 5; i < 7; i++) a.transmit(frame(i));
    await tick();
    expect(got).toEqual([0, 1]);
    room = 3;
    b.rxReady();
    expect(got).toEqual([0, 1, 2, 3, 4]);
    room = 10;
    b.rxReady();
    expect(got).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(b.stats.rxFrames).toBe(7);
  });

  it("refuses a bad batchBytes with a RangeError naming it", () => {
    expect(() => new EncryptedLinkEnd(tapeCarrier(), KEY, { role: "a", batchBytes: -1 })).toThrow(
      /options\.batchBytes/,
    );
  });
});
