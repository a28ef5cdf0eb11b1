// The Debian i686 kernel in v86, its own virtio_pci / virtio_blk / virtio_net / virtio_console /
// virtio-rng drivers driving our BlkDevice, NetDevice, ConsoleDevice and RngDevice, packed rings
// offered. One boot, many checks: the guest script prints `K <key> <values>` lines.
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { tsharkFields } from "@virtio-ts/interop";
import { sniff } from "@virtio-ts/interpose";
import { PcapngWriter } from "@virtio-ts/interpose/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LinuxResult } from "../src/index.js";
import {
  assetsOrFail,
  BLK_SCRIPT,
  bootRun,
  checks,
  e2fsck,
  featureBit,
  GUEST_TEXT,
  makeImage,
  PATTERN_BLOCK,
  PCI_SCRIPT,
  pattern,
  WRITE_BLOCK,
} from "./helpers/boot.js";

const dir = mkdtempSync(join(tmpdir(), "linux-packed-"));
const image = join(dir, "disk.img");
const pcap = join(dir, "eth0.pcapng");
const PAT = pattern(1);
let r: LinuxResult;
let hvc: string[];
let k: Map<string, string[]>;

beforeAll(async () => {
  assetsOrFail();
  makeImage(image, 16 << 20, [[PATTERN_BLOCK * 4096, PAT]]);
  const capture = new PcapngWriter(pcap, { interfaces: ["guest-eth0"], flushIntervalMs: 0 });
  const script = [
    ...PCI_SCRIPT,
    ...BLK_SCRIPT,
    "ping -c 3 10.0.2.2 > /tmp/ping && echo \"K ping $(grep -c 'bytes from 10.0.2.2' /tmp/ping)\"",
    // Console both ways: say we wait, read one line the host sends.
    'exec 3<>/dev/hvc0; echo hvc-waiting >&3; read -r line <&3; echo "K hvc-in $line"',
    'echo "K rng $(head -c 64 /dev/hwrng | wc -c) $(cat /sys/class/misc/hw_random/rng_current)"',
    // Reset: unbind virtio-pci from the blk function and bind it again; the disk serves again.
    "for p in /sys/bus/pci/devices/*; do [ $(cat $p/device) = 0x1042 ] && b=$(basename $p); done",
    'echo $b > /sys/bus/pci/drivers/virtio-pci/unbind; echo "K unbound $(ls /sys/block | grep -c vda)"',
    "echo $b > /sys/bus/pci/drivers/virtio-pci/bind; sleep 1",
    `echo "K after-reset $(dd if=/dev/vda bs=4096 skip=${PATTERN_BLOCK} count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"`,
  ].join("\n");
  ({ r, hvc } = await bootRun({
    disk: image,
    command: script,
    wrapNet: (port) => sniff(port, capture),
    onConsole: (line, send) => {
      if (line === "hvc-waiting") send("from-the-host\n");
    },
  }));
  await capture.close();
}, 300_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("Linux in v86 on virtio-ts devices over virtio-pci (packed rings offered)", () => {
  it("boots, runs the script and exits 0", () => {
    expect(r.end, r.lastLines.join("\n")).toBe("exit");
    expect(r.exitCode).toBe(0);
    k = checks(r.output);
  });

  it("binds virtio_pci to all four functions with the modern IDs 0x1af4:0x1040+ID and each virtio driver to its device", () => {
    const devs = (k.get("dev") ?? []).map((l) => l.split(" "));
    const byId = new Map(devs.map((d) => [d[0], d]));
    expect([...byId.keys()].sort()).toEqual(["0x0001", "0x0002", "0x0003", "0x0004"]);
    expect(byId.get("0x0002")?.slice(1, 4)).toEqual(["0x1af4:0x1042", "virtio_blk", "virtio-pci"]);
    expect(byId.get("0x0001")?.slice(1, 4)).toEqual(["0x1af4:0x1041", "virtio_net", "virtio-pci"]);
    expect(byId.get("0x0003")?.slice(1, 4)).toEqual([
      "0x1af4:0x1043",
      "virtio_console",
      "virtio-pci",
    ]);
    expect(byId.get("0x0004")?.slice(1, 4)).toEqual(["0x1af4:0x1044", "virtio_rng", "virtio-pci"]);
  });

  it("negotiates VERSION_1, RING_PACKED, EVENT_IDX and INDIRECT_DESC (sysfs features)", () => {
    for (const d of (k.get("dev") ?? []).map((l) => l.split(" "))) {
      const f = d[4]!;
      expect(featureBit(f, 32), `VERSION_1 on ${d[0]}`).toBe(true);
      expect(featureBit(f, 34), `RING_PACKED on ${d[0]}`).toBe(true);
      expect(featureBit(f, 29), `EVENT_IDX on ${d[0]}`).toBe(true);
      expect(featureBit(f, 28), `INDIRECT_DESC on ${d[0]}`).toBe(true);
    }
  });

  it("reads the host's pattern and writes the guest's bytes into the image file", () => {
    expect(k.get("pattern")).toEqual([createHash("md5").update(PAT).digest("hex")]);
    expect(k.get("wrote")).toEqual(["ok"]);
    const img = readFileSync(image);
    expect(
      img.subarray(WRITE_BLOCK * 4096, WRITE_BLOCK * 4096 + GUEST_TEXT.length).toString(),
    ).toBe(GUEST_TEXT);
    expect(img.subarray(PATTERN_BLOCK * 4096, PATTERN_BLOCK * 4096 + 4096).equals(PAT)).toBe(true);
  });

  it("makes an ext2 file system the host's e2fsck -fn finds clean", () => {
    expect(k.get("mkfs")).toEqual(["ok"]);
    expect(k.get("reread")).toEqual(["hello 5000"]);
    const fsck = e2fsck(image);
    expect(fsck.status, fsck.out).toBe(0);
  });

  it("pings 10.0.2.2 through the switch; tshark reads the echo requests and replies from our pcapng", async () => {
    expect(k.get("ping")).toEqual(["3"]);
    const rows = await tsharkFields(pcap, {
      filter: "icmp",
      fields: ["icmp.type", "ip.src", "ip.dst"],
    });
    expect(
      rows.filter((x) => x[0] === "8" && x[1] === "10.0.2.15" && x[2] === "10.0.2.2"),
    ).toHaveLength(3);
    expect(
      rows.filter((x) => x[0] === "0" && x[1] === "10.0.2.2" && x[2] === "10.0.2.15"),
    ).toHaveLength(3);
  });

  it("negotiates mergeable receive buffers and checksum offload on the NIC", () => {
    const net = (k.get("dev") ?? []).map((l) => l.split(" ")).find((d) => d[0] === "0x0001")!;
    expect(featureBit(net[4]!, 15), "VIRTIO_NET_F_MRG_RXBUF").toBe(true);
    expect(featureBit(net[4]!, 0), "VIRTIO_NET_F_CSUM").toBe(true);
    expect(featureBit(net[4]!, 1), "VIRTIO_NET_F_GUEST_CSUM").toBe(true);
  });

  it("carries console text both ways on /dev/hvc0", () => {
    expect(hvc).toContain("hvc-waiting");
    expect(k.get("hvc-in")).toEqual(["from-the-host"]);
  });

  it("delivers entropy from RngDevice through /dev/hwrng with virtio_rng as the current source", () => {
    expect(k.get("rng")).toEqual(["64 virtio_rng.0"]);
    expect(r.devices.find((d) => d.name === "rng")!.requests).toBeGreaterThan(0);
  });

  it("serves the disk again after the guest unbinds and rebinds virtio-pci (a device reset)", () => {
    expect(k.get("unbound")).toEqual(["0"]);
    expect(k.get("after-reset")).toEqual([createHash("md5").update(PAT).digest("hex")]);
  });

  it("counts traps and interrupts per device, and blk requests cost about two traps and one interrupt", () => {
    const blk = r.devices.find((d) => d.name === "blk")!;
    expect(blk.commandRequests).toBeGreaterThan(10);
    expect(blk.commandInterrupts).toBeGreaterThan(0);
    expect(blk.trapCounts.notify).toBeGreaterThan(0);
    expect(blk.trapCounts.isr).toBeGreaterThan(0);
    for (const d of r.devices) expect(d.traps, d.name).toBeGreaterThan(50);
  });
});
