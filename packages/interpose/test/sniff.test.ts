import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Switch, VethPair } from "@virtio-ts/backend-net";
import type { NetBackend } from "@virtio-ts/devices";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { type CaptureDirection, type FrameRecorder, sniff } from "../src/index.js";
import { PcapngWriter, readPcapng } from "../src/node.js";

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "vts-sniff-"));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

const MAC_A = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0a];
const MAC_B = [0x52, 0x54, 0x00, 0x00, 0x00, 0x0b];
const IP_A = [10, 0, 0, 1];
const IP_B = [10, 0, 0, 2];
const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

function checksum(bytes: Uint8Array, start: number, end: number): number {
  let sum = 0;
  for (let i = start; i < end; i += 2) sum += (bytes[i]! << 8) | (bytes[i + 1] ?? 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function arp(op: 1 | 2, sha: number[], spa: number[], tha: number[], tpa: number[], dst: number[]) {
  const f = new Uint8Array(60); // minimum Ethernet frame without FCS (padded)
  f.set(dst, 0);
  f.set(sha, 6);
  f.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, op], 12);
  f.set(sha, 22);
  f.set(spa, 28);
  f.set(tha, 32);
  f.set(tpa, 38);
  return f;
}

const PING_PAYLOAD = new TextEncoder().encode("virtio-ts sniff test payload 32b");

function icmpEcho(type: 0 | 8, src: number[], dst: number[], sip: number[], dip: number[]) {
  const f = new Uint8Array(14 + 20 + 8 + PING_PAYLOAD.length);
  f.set(dst, 0);
  f.set(src, 6);
  f.set([0x08, 0x00], 12);
  const ip = 14;
  f.set([0x45, 0, 0, 20 + 8 + PING_PAYLOAD.length, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0], ip);
  f.set(sip, ip + 12);
  f.set(dip, ip + 16);
  const ipSum = checksum(f, ip, ip + 20);
  f[ip + 10] = ipSum >>> 8;
  f[ip + 11] = ipSum & 0xff;
  const icmp = ip + 20;
  f.set([type, 0, 0, 0, 0x00, 0x2a, 0x00, 0x01], icmp);
  f.set(PING_PAYLOAD, icmp + 8);
  const icmpSum = checksum(f, icmp, f.length);
  f[icmp + 2] = icmpSum >>> 8;
  f[icmp + 3] = icmpSum & 0xff;
  return f;
}

/** A minimal host B: answers ARP for IP_B and ICMP echo requests, from inside `deliver`. */
function responder(port: NetBackend): void {
  port.attach({
    deliver(f) {
      if (f[12] === 0x08 && f[13] === 0x06 && f[21] === 1) {
        port.transmit(
          arp(
            2,
            MAC_B,
            IP_B,
            [...f.subarray(22, 28)],
            [...f.subarray(28, 32)],
            [...f.subarray(6, 12)],
          ),
        );
      } else if (f[12] === 0x08 && f[13] === 0x00 && f[23] === 1 && f[34] === 8) {
        port.transmit(icmpEcho(0, MAC_B, [...f.subarray(6, 12)], IP_B, [...f.subarray(26, 30)]));
      }
      return true;
    },
  });
}

function tshark(args: string[]): string {
  try {
    return execFileSync("tshark", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") {
      throw new Error(
        "tshark is required by this test and was not found on PATH: install the Debian package `tshark`",
      );
    }
    throw e;
  }
}

function memoryRecorder(): FrameRecorder & { frames: [number, CaptureDirection, Uint8Array][] } {
  const frames: [number, CaptureDirection, Uint8Array][] = [];
  return {
    frames,
    record(iface, f, d) {
      frames.push([iface, d, f.slice()]);
      return frames.length;
    },
    retract(token) {
      if (token !== frames.length) return false;
      frames.pop();
      return true;
    },
  };
}

describe("sniff", () => {
  it("captures ARP and ICMP echo through two switch ports in a file tshark decodes", async () => {
    const path = join(dir, "sw.pcapng");
    let t = 1_700_000_000_000;
    const pcap = new PcapngWriter(path, {
      interfaces: ["vm-a", "vm-b"],
      now: () => (t += 1),
      flushIntervalMs: 0,
    });
    const sw = new Switch();
    const a = sniff(sw.createPort({ name: "a" }), pcap, { iface: 0 });
    const b = sniff(sw.createPort({ name: "b" }), pcap, { iface: 1 });
    const gotA: Uint8Array[] = [];
    a.attach({ deliver: (f) => gotA.push(f.slice()) > 0 });
    responder(b);

    expect(a.transmit(arp(1, MAC_A, IP_A, [0, 0, 0, 0, 0, 0], IP_B, BROADCAST))).toBe(true);
    expect(a.transmit(icmpEcho(8, MAC_A, MAC_B, IP_A, IP_B))).toBe(true);
    await pcap.close();
    expect(gotA.map((f) => f.length)).toEqual([60, 74]);
    expect(pcap.stats).toMatchObject({ records: 8, dropped: 0 });

    const out = tshark([
      "-r",
      path,
      "-T",
      "fields",
      "-E",
      "separator=|",
      "-e",
      "frame.interface_name",
      "-e",
      "frame.len",
      "-e",
      "eth.src",
      "-e",
      "eth.dst",
      "-e",
      "_ws.col.Protocol",
      "-e",
      "frame.packet_flags_direction",
      "-e",
      "_ws.col.Info",
    ]);
    const rows = out
      .trim()
      .split("\n")
      .map((l) => l.split("|"));
    const a_ = "52:54:00:00:00:0a";
    const b_ = "52:54:00:00:00:0b";
    const bc = "ff:ff:ff:ff:ff:ff";
    // Each frame is recorded where it leaves a guest, then where it reaches the other guest.
    expect(rows.map((r) => r.slice(0, 6))).toEqual([
      ["vm-a", "60", a_, bc, "ARP", "0x00000002"],
      ["vm-b", "60", a_, bc, "ARP", "0x00000001"],
      ["vm-b", "60", b_, a_, "ARP", "0x00000002"],
      ["vm-a", "60", b_, a_, "ARP", "0x00000001"],
      ["vm-a", "74", a_, b_, "ICMP", "0x00000002"],
      ["vm-b", "74", a_, b_, "ICMP", "0x00000001"],
      ["vm-b", "74", b_, a_, "ICMP", "0x00000002"],
      ["vm-a", "74", b_, a_, "ICMP", "0x00000001"],
    ]);
    expect(rows[0]![6]).toContain("Who has 10.0.0.2? Tell 10.0.0.1");
    expect(rows[2]![6]).toContain("10.0.0.2 is at 52:54:00:00:00:0b");
    expect(rows[4]![6]).toContain("Echo (ping) request");
    expect(rows[6]![6]).toContain("Echo (ping) reply");
    // With validation on, tshark finds the IPv4 and ICMP checksums good (status 1) on all four.
    const sums = tshark([
      "-r",
      path,
      "-o",
      "ip.check_checksum:TRUE",
      "-Y",
      "icmp",
      "-T",
      "fields",
      "-e",
      "ip.checksum.status",
      "-e",
      "icmp.checksum.status",
    ]);
    expect(sums.trim().split("\n")).toEqual(["1\t1", "1\t1", "1\t1", "1\t1"]);
  });

  it("records the exact bytes in both directions, with the guest's view of direction", () => {
    const veth = new VethPair();
    const rec = memoryRecorder();
    const tapped = sniff(veth.a, rec);
    tapped.attach({ deliver: () => true });
    veth.b.attach({ deliver: () => true });
    const out = icmpEcho(8, MAC_A, MAC_B, IP_A, IP_B);
    const back = icmpEcho(0, MAC_B, MAC_A, IP_B, IP_A);
    expect(tapped.transmit(out)).toBe(true);
    expect(veth.b.transmit(back)).toBe(true);
    expect(rec.frames.map(([i, d]) => [i, d])).toEqual([
      [0, "outbound"],
      [0, "inbound"],
    ]);
    expect(rec.frames[0]![2]).toEqual(out);
    expect(rec.frames[1]![2]).toEqual(back);
  });

  it("retracts a refused delivery so the retry is recorded once", () => {
    const veth = new VethPair();
    const rec = memoryRecorder();
    const tapped = sniff(veth.a, rec);
    let room = false;
    const got: number[] = [];
    tapped.attach({ deliver: (f) => room && got.push(f.length) > 0 });
    veth.b.attach({ deliver: () => true });
    veth.b.transmit(new Uint8Array(64));
    expect(rec.frames).toHaveLength(0); // refused: queued in veth, not recorded
    room = true;
    tapped.rxReady?.();
    expect(got).toEqual([64]);
    expect(rec.frames.map(([, d, f]) => [d, f.length])).toEqual([["inbound", 64]]);
  });

  it("passes frames through when the capture drops records", async () => {
    const pcap = new PcapngWriter(join(dir, "full.pcapng"), {
      bufferBytes: 2048,
      snaplen: 1514,
      flushIntervalMs: 0,
    });
    const veth = new VethPair({ queueFrames: 4096, queueBytes: 1 << 24 });
    const tapped = sniff(veth.a, pcap);
    let delivered = 0;
    veth.b.attach({ deliver: () => ++delivered > 0 });
    for (let i = 0; i < 500; i++) expect(tapped.transmit(new Uint8Array(1000))).toBe(true);
    expect(delivered).toBe(500);
    expect(pcap.stats.dropped).toBeGreaterThan(0);
    expect(pcap.stats.records + pcap.stats.dropped).toBe(500);
    await pcap.close();
    expect(readPcapng(readFileSync(join(dir, "full.pcapng"))).packets).toHaveLength(
      pcap.stats.records,
    );
  });

  it("rejects a recorder without record/retract and a bad interface index", () => {
    const veth = new VethPair();
    expect(() => sniff(veth.a, {} as FrameRecorder)).toThrow(/recorder/);
    expect(() => sniff(veth.a, memoryRecorder(), { iface: -1 })).toThrow(RangeError);
    const pcap = new PcapngWriter(join(dir, "if.pcapng"), {
      interfaces: ["only"],
      flushIntervalMs: 0,
    });
    expect(() => sniff(veth.a, pcap, { iface: 1 })).toThrow(/options\.iface/);
    expect(() => pcap.record(1, new Uint8Array(60), "inbound")).toThrow(/iface/);
  });
});
