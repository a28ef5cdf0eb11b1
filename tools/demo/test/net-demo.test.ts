// Part 3 of the demo, run programmatically. The cross-process half spawns `node` on the built
// dist/net-guest.js, so the tool (and the packages it imports) is built first, incrementally.
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { beforeAll, describe, expect, it } from "vitest";
import { type NetDemoResult, type NicCounters, runNetDemo } from "../src/net-demo.js";

const hex = (s: string) =>
  Uint8Array.from(s.replace(/\s+/g, "").match(/../g)!, (b) => Number.parseInt(b, 16));

/** RFC 1071 sum written out again here, so the test does not trust the demo's own. */
function onesComplementSum(b: Uint8Array, start: number, end: number): number {
  let s = 0;
  for (let i = start; i < end; i += 2) s += (b[i]! << 8) + (i + 1 < end ? b[i + 1]! : 0);
  while (s > 0xffff) s = (s & 0xffff) + (s >>> 16);
  return s;
}

const ARP_REQUEST = hex(`
  ffffffffffff 02000000000a 0806
  0001 0800 06 04 0001 02000000000a 0a000001 000000000000 0a000002`);
const ARP_REPLY = hex(`
  02000000000a 02000000000b 0806
  0001 0800 06 04 0002 02000000000b 0a000002 02000000000a 0a000001`);
const PING_DATA = Uint8Array.from({ length: 56 }, (_, i) => i);
// Ethernet + IPv4 header (len 84, id 1, DF, TTL 64, ICMP, checksum 0x26a6) + ICMP header.
const ECHO_REQUEST_HEAD = hex(`
  02000000000b 02000000000a 0800
  4500 0054 0001 4000 4001 26a6 0a000001 0a000002
  08 00 8a77 7674 0001`);
const ECHO_REPLY_HEAD = hex(`
  02000000000a 02000000000b 0800
  4500 0054 0001 4000 4001 26a6 0a000002 0a000001
  00 00 9277 7674 0001`);

function checkFrames(frames: Uint8Array[]): void {
  expect(frames).toHaveLength(4);
  const [arpReq, arpRep, echoReq, echoRep] = frames as [
    Uint8Array,
    Uint8Array,
    Uint8Array,
    Uint8Array,
  ];
  expect(arpReq).toEqual(ARP_REQUEST);
  expect(arpRep).toEqual(ARP_REPLY);
  for (const [f, head] of [
    [echoReq, ECHO_REQUEST_HEAD],
    [echoRep, ECHO_REPLY_HEAD],
  ] as const) {
    expect(f.length).toBe(98);
    expect(f.subarray(0, 42)).toEqual(head);
    expect(f.subarray(42)).toEqual(PING_DATA);
    expect(onesComplementSum(f, 14, 34)).toBe(0xffff);
    expect(onesComplementSum(f, 34, 98)).toBe(0xffff);
  }
}

/** Each interrupt costs exactly one InterruptStatus read and one InterruptACK write. */
function checkInterruptExits(c: NicCounters): void {
  expect(c.byRegister.InterruptStatus).toBe(c.interrupts);
  expect(c.byRegister.InterruptACK).toBe(c.interrupts);
  expect(c.exits).toBe(c.byRegister.QueueNotify! + 2 * c.interrupts);
}

describe("the virtio-net demo", () => {
  let result: NetDemoResult;
  const lines: string[] = [];

  beforeAll(() => {
    const tsc = fileURLToPath(new URL("../../../node_modules/typescript/bin/tsc", import.meta.url));
    const tool = fileURLToPath(new URL("..", import.meta.url));
    execFileSync(process.execPath, [tsc, "-b", tool], { stdio: "inherit" });
    return runNetDemo({ log: (l) => lines.push(l) }).then((r) => {
      result = r;
    });
  });

  it("resolves B with ARP and gets its echo back, byte for byte, when both guests share a switch", () => {
    checkFrames(result.local.frames);
  });

  it("learns both guests' MACs on their own ports and floods only the broadcast", () => {
    expect(result.local.macTable).toEqual([
      { mac: "02:00:00:00:00:0a", port: "guest-a" },
      { mac: "02:00:00:00:00:0b", port: "guest-b" },
    ]);
    expect(result.local.switchCounts).toEqual({ flooded: 1, forwarded: 3 });
  });

  it("costs each NIC two frames each way, four kicks and an InterruptStatus read plus an InterruptACK write per interrupt", () => {
    const { a, b } = result.local;
    // A kicks for its two transmits and for two receive-buffer refills; B the same. A takes
    // one interrupt per reply (its transmit completion is reaped with it); B one per request
    // plus one for the last transmit completion.
    expect(a).toEqual({
      txFrames: 2,
      rxFrames: 2,
      exits: 8,
      interrupts: 2,
      byRegister: { QueueNotify: 4, InterruptStatus: 2, InterruptACK: 2 },
    });
    expect(b).toEqual({
      txFrames: 2,
      rxFrames: 2,
      exits: 10,
      interrupts: 3,
      byRegister: { QueueNotify: 4, InterruptStatus: 3, InterruptACK: 3 },
    });
  });

  it("carries the same four frames to a guest in another process through the stream tunnel", () => {
    const r = result.remote;
    checkFrames(r.frames);
    expect(r.childPid).not.toBe(process.pid);
    expect(r.childPid).toBeGreaterThan(0);
    expect(r.macTable).toEqual([
      { mac: "02:00:00:00:00:0a", port: "guest-a" },
      { mac: "02:00:00:00:00:0b", port: "tunnel" },
    ]);
    // The request pair went out on the tunnel, the reply pair came in: 42 + 98 bytes each way.
    expect([r.tunnel.framesOut, r.tunnel.bytesOut, r.tunnel.framesIn, r.tunnel.bytesIn]).toEqual([
      2, 140, 2, 140,
    ]);
    expect([r.tunnel.refused, r.tunnel.notConnected, r.tunnel.backpressure]).toEqual([0, 0, 0]);
  });

  it("counts two frames each way and four kicks on both NICs across processes", () => {
    for (const c of [result.remote.a, result.remote.b]) {
      expect([c.txFrames, c.rxFrames, c.byRegister.QueueNotify]).toEqual([2, 2, 4]);
      // How many completions share an interrupt depends on socket timing: 2 to 4.
      expect(c.interrupts).toBeGreaterThanOrEqual(2);
      expect(c.interrupts).toBeLessThanOrEqual(4);
      checkInterruptExits(c);
    }
    checkInterruptExits(result.local.a);
  });

  it("prints each frame on one line and says the ping crossed processes", () => {
    const frameLines = lines.filter((l) => /^ {2}A (->|<-) {2}/.test(l));
    expect(frameLines).toHaveLength(8);
    expect(frameLines[0]).toContain(
      "02:00:00:00:00:0a > ff:ff:ff:ff:ff:ff  0x0806  ARP request  who-has 10.0.0.2 tell 10.0.0.1",
    );
    expect(frameLines[3]).toContain(
      "0x0800  ICMP echo reply   10.0.0.2 > 10.0.0.1 id 0x7674 seq 1",
    );
    expect(lines).toContain(
      `  the ping crossed processes: pid ${process.pid} (A, switch) <-> pid ${result.remote.childPid} (B), 2 frames out / 2 in on the tunnel`,
    );
  });
});
