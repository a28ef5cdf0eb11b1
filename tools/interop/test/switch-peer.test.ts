import { createSocket } from "node:dgram";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Switch } from "@virtio-ts/backend-net";
import { DgramTunnel, StreamTunnelServer } from "@virtio-ts/backend-net/node";
import { sniff } from "@virtio-ts/interpose";
import { PcapngWriter } from "@virtio-ts/interpose/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  createTsNic,
  explainGuest,
  type GuestMachine,
  type KernelInfo,
  macText,
  Responder,
  requireTools,
  runGuest,
  tsharkFields,
} from "../src/index.js";

const GUEST_MAC = "52:54:00:12:34:56";
const TS_MAC = new Uint8Array([0x52, 0x54, 0x00, 0x00, 0x00, 0x02]);
const TS_IP = [10, 0, 2, 2];

/** A hang guard: the test may first wait for other suites' guests (one runs at a time). */
const BOOT_TEST_TIMEOUT = 240_000;

let kernel: KernelInfo;
const dir = mkdtempSync(join(tmpdir(), "interop-switch-"));

beforeAll(() => {
  kernel = requireTools(["qemu-system-x86_64", "tshark"]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** A UDP port nobody is bound to right now (bound and released). */
async function freeUdpPort(): Promise<number> {
  const s = createSocket("udp4");
  await new Promise<void>((resolve) => s.bind(0, "127.0.0.1", resolve));
  const port = s.address().port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** What QEMU's netdev connects to: the switch port its frames enter by, and a closer. */
interface Peer {
  readonly netdev: string;
  close(): Promise<void>;
}

/** `-netdev stream`: QEMU dials our StreamTunnelServer; the connection gets a switch port. */
async function streamPeer(sw: Switch): Promise<Peer> {
  const server = await StreamTunnelServer.listen(
    { host: "127.0.0.1", port: 0 },
    {
      onConnection(tunnel) {
        const port = sw.createPort({ name: "qemu" });
        tunnel.connect(port);
        void tunnel.closed.then(() => port.close());
      },
    },
  );
  const { port } = server.address as { port: number };
  return {
    netdev: `stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`,
    close: () => server.close(),
  };
}

/** `-netdev dgram`: one UDP datagram per frame between QEMU's port and our DgramTunnel's. */
async function dgramPeer(sw: Switch): Promise<Peer> {
  const qemuPort = await freeUdpPort();
  const tunnel = await DgramTunnel.bind({
    local: { host: "127.0.0.1", port: 0 },
    remote: { host: "127.0.0.1", port: qemuPort },
  });
  const port = sw.createPort({ name: "qemu" });
  tunnel.connect(port);
  return {
    netdev:
      `dgram,id=n0,local.type=inet,local.host=127.0.0.1,local.port=${qemuPort},` +
      `remote.type=inet,remote.host=127.0.0.1,remote.port=${tunnel.address.port}`,
    close: async () => {
      await tunnel.close();
      port.close();
    },
  };
}

const FIELDS = [
  "eth.src",
  "eth.dst",
  "ip.src",
  "ip.dst",
  "ip.len",
  "icmp.type",
  "icmp.ident",
  "icmp.seq",
  "icmp.checksum",
];

interface IcmpRow {
  ethSrc: string;
  ethDst: string;
  ipSrc: string;
  ipDst: string;
  ipLen: number;
  type: number;
  ident: number;
  seq: number;
  checksum: number;
}

async function icmpRows(file: string): Promise<IcmpRow[]> {
  const rows = await tsharkFields(file, { filter: "icmp", fields: FIELDS });
  return rows.map((r) => ({
    ethSrc: r[0]!,
    ethDst: r[1]!,
    ipSrc: r[2]!,
    ipDst: r[3]!,
    ipLen: Number(r[4]),
    type: Number(r[5]),
    // tshark prints BASE_DEC_HEX fields as "1234" or "0x04d2"; Number reads both.
    ident: Number(r[6]),
    seq: Number(r[7]),
    checksum: Number(r[8]),
  }));
}

const cases: readonly {
  name: string;
  machine: GuestMachine;
  nic: string;
  modules: string[];
  peer: (sw: Switch) => Promise<Peer>;
}[] = [
  {
    name: "-netdev stream (TCP) into a StreamTunnelServer, virtio-net-pci on pc",
    machine: "pc",
    nic: `virtio-net-pci,netdev=n0,mac=${GUEST_MAC},romfile=`,
    modules: ["virtio_pci", "virtio_net"],
    peer: streamPeer,
  },
  {
    name: "-netdev dgram (UDP) into a DgramTunnel, virtio-net-device on microvm",
    machine: "microvm",
    nic: `virtio-net-device,netdev=n0,mac=${GUEST_MAC}`,
    modules: ["virtio_mmio", "virtio_net"],
    peer: dgramPeer,
  },
];

describe.each(cases)("a QEMU Linux guest joins our Switch over $name", (c) => {
  it(
    "pings the TS guest (NetDriver ↔ NetDevice on another port) 3 times, and both captures agree",
    async () => {
      const tag = c.machine;
      const ourPcap = join(dir, `ts-${tag}.pcapng`);
      const qemuPcap = join(dir, `qemu-${tag}.pcap`);
      const sw = new Switch();
      const capture = new PcapngWriter(ourPcap, { interfaces: ["ts-nic"], flushIntervalMs: 0 });
      const responder = new Responder(TS_MAC, TS_IP, { record: true });
      const replyFailures: string[] = [];
      const nic = createTsNic(sniff(sw.createPort({ name: "ts-nic" }), capture), {
        mac: TS_MAC,
        onFrame(frame, n) {
          const reply = responder.handle(frame);
          if (reply !== undefined && !n.driver.trySend(reply)) replyFailures.push(macText(frame));
        },
      });
      const peer = await c.peer(sw);
      let result: Awaited<ReturnType<typeof runGuest>>;
      try {
        result = await runGuest({
          machine: c.machine,
          kernel,
          modules: c.modules,
          args: [
            "-netdev",
            peer.netdev,
            "-device",
            c.nic,
            "-object",
            `filter-dump,id=f0,netdev=n0,file=${qemuPcap}`,
          ],
          script: [
            "ip addr add 10.0.2.15/24 dev eth0",
            "ip link set eth0 up",
            'echo "mac=$(cat /sys/class/net/eth0/address)"',
            "ping -c 3 -i 0.2 -W 5 10.0.2.2",
            "",
          ].join("\n"),
          timeoutMs: 90_000,
        });
      } finally {
        await peer.close();
        nic.close();
        await capture.close();
      }
      const why = explainGuest(result);
      console.info(
        `[interop] ${c.machine} ping over ${c.name}: ${Math.round(result.durationMs)} ms`,
      );

      // The Linux side: its NIC has the MAC we gave QEMU and every ping was answered.
      expect(result.timedOut, why).toBe(false);
      expect(result.output, why).toContain(`mac=${GUEST_MAC}\n`);
      expect(result.output, why).toContain(
        "3 packets transmitted, 3 packets received, 0% packet loss",
      );
      expect(result.guestExit, why).toBe(0);
      expect(replyFailures).toEqual([]);

      // The TS side: the guest resolved 10.0.2.2, then sent three echo requests of 56 bytes.
      expect(responder.arps).toContainEqual({
        srcMac: GUEST_MAC,
        senderIp: "10.0.2.15",
        targetIp: "10.0.2.2",
      });
      expect(responder.echoes).toHaveLength(3);
      const [first] = responder.echoes;
      expect(responder.echoes).toEqual(
        [0, 1, 2].map((i) => ({
          srcMac: GUEST_MAC,
          srcIp: "10.0.2.15",
          id: first!.id,
          seq: first!.seq + i,
          payloadLength: 56,
        })),
      );
      expect(nic.model.stats.txFrames).toBeGreaterThanOrEqual(4); // 1 ARP reply + 3 echo replies
      expect(nic.model.stats.txBackendDrops).toBe(0);

      // Both captures (ours from sniff(), QEMU's from filter-dump) hold the same 6 ICMP frames.
      expect(statSync(qemuPcap).size).toBeGreaterThan(24);
      const ours = await icmpRows(ourPcap);
      const theirs = await icmpRows(qemuPcap);
      const tsMac = macText(TS_MAC);
      const expected = responder.echoes.flatMap((e) => [
        {
          ethSrc: GUEST_MAC,
          ethDst: tsMac,
          ipSrc: "10.0.2.15",
          ipDst: "10.0.2.2",
          type: 8,
          seq: e.seq,
        },
        {
          ethSrc: tsMac,
          ethDst: GUEST_MAC,
          ipSrc: "10.0.2.2",
          ipDst: "10.0.2.15",
          type: 0,
          seq: e.seq,
        },
      ]);
      expect(
        ours.map(({ ethSrc, ethDst, ipSrc, ipDst, type, seq }) => ({
          ethSrc,
          ethDst,
          ipSrc,
          ipDst,
          type,
          seq,
        })),
      ).toEqual(expected);
      for (const row of ours) {
        expect(row.ident).toBe(first!.id);
        expect(row.ipLen).toBe(20 + 8 + 56);
      }
      expect(theirs).toEqual(ours);
    },
    BOOT_TEST_TIMEOUT,
  );
});
