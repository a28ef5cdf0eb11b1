import { describe, expect, it } from "vitest";
import { FrameRing } from "../src/frame-ring.js";
import { Switch } from "../src/index.js";
import { BROADCAST, frame, RecordingSink } from "./helpers/frames.js";

const A = "02:00:00:00:00:0a";
const B = "02:00:00:00:00:0b";
const C = "02:00:00:00:00:0c";

function fixture(options: ConstructorParameters<typeof Switch>[0] = {}) {
  let clock = 0;
  const sw = new Switch({ now: () => clock, ...options });
  const ports = [0, 1, 2].map((i) => sw.createPort({ name: `p${i}` }));
  const sinks = ports.map((p) => {
    const s = new RecordingSink();
    p.attach(s);
    return s;
  });
  return {
    sw,
    ports,
    sinks,
    advance(ms: number) {
      clock += ms;
    },
  };
}

describe("Switch learning and forwarding", () => {
  it("floods a frame for an unknown destination to every other port and never back to the ingress port", () => {
    const { ports, sinks, sw } = fixture();
    expect(ports[0]!.transmit(frame(B, A, 1))).toBe(true);
    expect(sinks.map((s) => s.tags)).toEqual([[], [1], [1]]);
    expect(sw.stats.flooded).toBe(1);
  });

  it("learns the source port and forwards known unicast to that one port only", () => {
    const { ports, sinks, sw } = fixture();
    ports[1]!.transmit(frame(BROADCAST, B, 1)); // learn B on p1
    expect(sw.lookup(B)).toBe(ports[1]);
    ports[0]!.transmit(frame(B, A, 2));
    expect(sinks.map((s) => s.tags)).toEqual([[1], [2], [1]]);
    expect(sw.stats.forwarded).toBe(1);
    expect(sw.macTable().map((e) => [e.mac, e.port.name])).toEqual([
      [B, "p1"],
      [A, "p0"],
    ]);
  });

  it("floods broadcast and multicast even when the group address was seen as a source", () => {
    const { ports, sinks, sw } = fixture();
    ports[1]!.transmit(frame(A, "01:00:5e:00:00:01", 1)); // multicast source: never learned
    expect(sw.lookup("01:00:5e:00:00:01")).toBeUndefined();
    ports[0]!.transmit(frame("01:00:5e:00:00:01", A, 2));
    ports[0]!.transmit(frame(BROADCAST, A, 3));
    expect(sinks[1]!.tags).toEqual([2, 3]);
    expect(sinks[2]!.tags).toEqual([1, 2, 3]);
  });

  it("drops a unicast frame whose destination was learned on the ingress port and counts it as sameSegment", () => {
    const { ports, sinks } = fixture();
    ports[0]!.transmit(frame(BROADCAST, B, 1));
    ports[0]!.transmit(frame(B, A, 2));
    expect(sinks.map((s) => s.tags)).toEqual([[], [1], [1]]);
    expect(ports[0]!.stats.drops.sameSegment).toBe(1);
  });

  it("moves an address to the port it was last seen on", () => {
    const { ports, sinks, sw } = fixture();
    ports[1]!.transmit(frame(BROADCAST, B, 1));
    ports[2]!.transmit(frame(BROADCAST, B, 2));
    expect(sw.lookup(B)).toBe(ports[2]);
    ports[0]!.transmit(frame(B, A, 3));
    expect(sinks[2]!.tags).toEqual([1, 3]);
  });

  it("forgets an address after the aging time (fake clock) and floods again", () => {
    const { ports, sinks, sw, advance } = fixture({ agingTimeMs: 1000 });
    ports[1]!.transmit(frame(BROADCAST, B, 1));
    advance(1000);
    expect(sw.lookup(B)).toBe(ports[1]); // exactly the aging time: still known
    ports[0]!.transmit(frame(B, A, 2));
    expect(sinks[2]!.tags).toEqual([1]);
    advance(1);
    ports[0]!.transmit(frame(B, A, 3));
    expect(sinks[2]!.tags).toEqual([1, 3]); // flooded
    expect(sw.lookup(B)).toBeUndefined();
    expect(sw.stats.aged).toBe(1);
  });

  it("keeps an address alive while it keeps sending", () => {
    const { ports, sw, advance } = fixture({ agingTimeMs: 1000 });
    for (let i = 0; i < 5; i++) {
      ports[1]!.transmit(frame(BROADCAST, B, i));
      advance(900);
    }
    expect(sw.lookup(B)).toBe(ports[1]);
    expect(sw.stats.aged).toBe(0);
  });

  it("bounds the MAC table and evicts the least recently seen address", () => {
    const { ports, sw, advance } = fixture({ maxMacEntries: 2, agingTimeMs: 8000 });
    ports[0]!.transmit(frame(BROADCAST, A));
    advance(1000);
    ports[1]!.transmit(frame(BROADCAST, B));
    advance(1000);
    ports[0]!.transmit(frame(BROADCAST, A)); // A refreshed, now B is the oldest
    ports[2]!.transmit(frame(BROADCAST, C));
    expect(sw.macTable().map((e) => e.mac)).toEqual([A, C]);
    expect(sw.stats.evicted).toBe(1);
    expect(sw.stats.learned).toBe(3);
  });

  it("survives a flood of random source addresses with a table that never exceeds its bound", () => {
    const { ports, sw } = fixture({ maxMacEntries: 64 });
    const f = frame(BROADCAST, A);
    for (let i = 0; i < 10_000; i++) {
      f[9] = i >> 16;
      f[10] = (i >> 8) & 0xff;
      f[11] = i & 0xff;
      ports[0]!.transmit(f);
    }
    expect(sw.macTable().length).toBe(64);
    expect(sw.stats.evicted).toBe(10_000 - 64);
  });

  it("drops runts and oversize frames at ingress, counts them and returns false", () => {
    const { ports, sinks } = fixture({ maxFrameSize: 1518 });
    expect(ports[0]!.transmit(new Uint8Array(13))).toBe(false);
    expect(ports[0]!.transmit(frame(BROADCAST, A, 0, 1519))).toBe(false);
    expect(ports[0]!.transmit(frame(BROADCAST, A, 7, 14))).toBe(true);
    expect(ports[0]!.transmit(frame(BROADCAST, A, 0, 1518))).toBe(true);
    expect(ports[0]!.stats.drops).toMatchObject({ runt: 1, oversize: 1 });
    expect(ports[0]!.stats).toMatchObject({ rxFrames: 2, rxBytes: 14 + 1518 });
    expect(sinks[1]!.frames.map((f) => f.length)).toEqual([14, 1518]);
    expect(ports[1]!.stats).toMatchObject({ txFrames: 2, txBytes: 14 + 1518 });
  });

  it("counts frames for a port with no device attached as down", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const b = sw.createPort();
    a.transmit(frame(BROADCAST, A));
    expect(b.stats.drops.down).toBe(1);
    expect(b.queuedFrames).toBe(0);
  });

  it("stops forwarding to a closed port and forgets its addresses", () => {
    const { ports, sinks, sw } = fixture();
    ports[1]!.transmit(frame(BROADCAST, B, 1));
    ports[1]!.close();
    expect(sw.ports.map((p) => p.name)).toEqual(["p0", "p2"]);
    expect(sw.lookup(B)).toBeUndefined();
    ports[0]!.transmit(frame(B, A, 2));
    expect(sinks[1]!.tags).toEqual([]);
    expect(sinks[2]!.tags).toEqual([1, 2]);
    expect(ports[1]!.transmit(frame(BROADCAST, B))).toBe(false);
  });

  it("keeps flooding to the other ports when one device's deliver throws", () => {
    const sw = new Switch();
    const ports = [sw.createPort(), sw.createPort(), sw.createPort()];
    const good = new RecordingSink();
    ports[1]!.attach({
      deliver() {
        throw new Error("buggy device");
      },
    });
    ports[2]!.attach(good);
    expect(ports[0]!.transmit(frame(BROADCAST, A, 5))).toBe(true);
    expect(good.tags).toEqual([5]);
    expect(ports[1]!.stats.drops.sinkError).toBe(1);
  });

  it("bounds re-entrant forwarding when devices echo broadcasts back from inside deliver", () => {
    const sw = new Switch({ maxForwardDepth: 4 });
    const a = sw.createPort();
    const b = sw.createPort();
    let echoes = 0;
    b.attach({
      deliver(f) {
        echoes++;
        b.transmit(f.slice());
        return true;
      },
    });
    a.attach({
      deliver(f) {
        a.transmit(f.slice());
        return true;
      },
    });
    a.transmit(frame(BROADCAST, A));
    expect(echoes).toBe(2);
    expect(a.stats.drops.loop + b.stats.drops.loop).toBe(1);
  });

  it("rejects bad options with errors naming them", () => {
    expect(() => new Switch({ agingTimeMs: 0 })).toThrow(/options\.agingTimeMs/);
    expect(() => new Switch({ maxMacEntries: 0 })).toThrow(RangeError);
    expect(() => new Switch({ maxFrameSize: 13 })).toThrow(/options\.maxFrameSize/);
    expect(() => new Switch().createPort({ queueFrames: -1 })).toThrow(/options\.queueFrames/);
    expect(() => new Switch().lookup("nope")).toThrow(/mac/);
    expect(() => new Switch().createPort().attach({} as never)).toThrow(TypeError);
  });
});

describe("Switch port receive queue", () => {
  it("holds refused frames up to queueFrames, drops and counts the rest, and flushes in order on rxReady", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const slow = sw.createPort({ queueFrames: 4 });
    const sink = new RecordingSink();
    sink.accept = false;
    slow.attach(sink);
    for (let i = 0; i < 10; i++) a.transmit(frame(BROADCAST, A, i));
    expect(slow.queuedFrames).toBe(4);
    expect(slow.queuedBytes).toBe(240);
    expect(slow.stats.drops.queueFull).toBe(6);
    sink.accept = true;
    slow.rxReady();
    expect(sink.tags).toEqual([0, 1, 2, 3]);
    expect(slow.queuedFrames).toBe(0);
    expect(slow.stats.txFrames).toBe(4);
  });

  it("bounds the queue by bytes as well as frames", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const slow = sw.createPort({ queueFrames: 100, queueBytes: 200 });
    slow.attach({ deliver: () => false });
    for (let i = 0; i < 5; i++) a.transmit(frame(BROADCAST, A, i));
    expect(slow.queuedFrames).toBe(3);
    expect(slow.stats.drops.queueFull).toBe(2);
  });

  it("queues a copy, so the sender may reuse its buffer at once", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const b = sw.createPort();
    const sink = new RecordingSink();
    sink.accept = false;
    b.attach(sink);
    const f = frame(BROADCAST, A, 1);
    a.transmit(f);
    f.fill(0xee);
    sink.accept = true;
    b.rxReady();
    expect(sink.tags).toEqual([1]);
  });

  it("keeps frame order: new frames wait behind queued ones even when the device has room", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const b = sw.createPort();
    let room = 0;
    const got: number[] = [];
    b.attach({
      deliver(f) {
        if (room === 0) return false;
        room--;
        got.push(f[14]!);
        return true;
      },
    });
    a.transmit(frame(BROADCAST, A, 1));
    room = 5;
    a.transmit(frame(BROADCAST, A, 2)); // 1 is still queued: 2 must not overtake it
    expect(got).toEqual([]);
    b.rxReady();
    expect(got).toEqual([1, 2]);
  });

  it("stops flushing at the first refusal and resumes on the next rxReady", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const b = sw.createPort();
    let room = 0;
    const got: number[] = [];
    b.attach({
      deliver(f) {
        if (room === 0) return false;
        room--;
        got.push(f[14]!);
        return true;
      },
    });
    for (let i = 0; i < 5; i++) a.transmit(frame(BROADCAST, A, i));
    room = 2;
    b.rxReady();
    expect([got, b.queuedFrames]).toEqual([[0, 1], 3]);
    room = 10;
    b.rxReady();
    expect([got, b.queuedFrames]).toEqual([[0, 1, 2, 3, 4], 0]);
  });

  it("drops queued frames when the device detaches and counts them as down", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const b = sw.createPort();
    b.attach({ deliver: () => false });
    a.transmit(frame(BROADCAST, A));
    a.transmit(frame(BROADCAST, A));
    b.detach();
    expect([b.queuedFrames, b.stats.drops.down]).toEqual([0, 2]);
  });

  it("does not deliver a frame twice when the device calls rxReady from inside deliver", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const b = sw.createPort();
    let room = false;
    const got: number[] = [];
    b.attach({
      deliver(f) {
        if (!room) return false;
        got.push(f[14]!);
        b.rxReady(); // re-entrant: must not start a second flush
        return true;
      },
    });
    for (let i = 0; i < 3; i++) a.transmit(frame(BROADCAST, A, i));
    room = true;
    b.rxReady();
    expect(got).toEqual([0, 1, 2]);
    expect(b.stats.txFrames).toBe(3);
  });

  it("stops flushing when the device detaches from inside deliver and counts the rest as down", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const b = sw.createPort();
    let room = false;
    const got: number[] = [];
    b.attach({
      deliver(f) {
        if (!room) return false;
        got.push(f[14]!);
        b.detach();
        return true;
      },
    });
    for (let i = 0; i < 4; i++) a.transmit(frame(BROADCAST, A, i));
    room = true;
    b.rxReady();
    expect(got).toEqual([0]);
    expect([b.queuedFrames, b.stats.drops.down, b.stats.txFrames]).toEqual([0, 3, 1]);
  });

  it("delivers queued frames when a new sink attaches", () => {
    const sw = new Switch();
    const a = sw.createPort();
    const b = sw.createPort();
    b.attach({ deliver: () => false });
    a.transmit(frame(BROADCAST, A, 9));
    const sink = new RecordingSink();
    b.attach(sink);
    expect(sink.tags).toEqual([9]);
  });
});

describe("FrameRing", () => {
  it("wraps to the start of its arena when the oldest frame has left room there", () => {
    const ring = new FrameRing(8, 250);
    const f = (tag: number) => new Uint8Array(100).fill(tag);
    expect([ring.push(f(1)), ring.push(f(2)), ring.push(f(3))]).toEqual([true, true, false]);
    ring.shift();
    expect(ring.push(f(3))).toBe(true); // goes to offset 0
    expect(ring.push(f(4))).toBe(false); // [200, 250) and [100, 100) are too small
    expect([ring.peek()![0], ring.length, ring.bytes]).toEqual([2, 2, 200]);
    ring.shift();
    expect(ring.peek()![0]).toBe(3);
    expect(ring.push(f(4))).toBe(true); // after frame 3, before the end
    ring.shift();
    expect(ring.peek()![0]).toBe(4);
    expect(ring.clear()).toBe(1);
    expect(ring.peek()).toBeUndefined();
  });

  it("never holds more than maxFrames frames or maxBytes bytes under random push/shift", () => {
    const ring = new FrameRing(16, 4000);
    const model: number[] = [];
    let seed = 7;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    for (let i = 0; i < 5000; i++) {
      if (rnd() % 3 !== 0) {
        const len = 1 + (rnd() % 600);
        const f = new Uint8Array(len).fill(i & 0xff);
        if (ring.push(f)) model.push(i & 0xff, len);
      } else if (model.length > 0) {
        const head = ring.peek()!;
        expect([head[0], head.length, head[head.length - 1]]).toEqual([
          model[0],
          model[1],
          model[0],
        ]);
        ring.shift();
        model.splice(0, 2);
      }
      expect(ring.length).toBe(model.length / 2);
      expect(ring.length).toBeLessThanOrEqual(16);
      expect(ring.bytes).toBeLessThanOrEqual(4000);
    }
  });
});
