// vhost-user-net with real guests (QEMU 7.2, TCG): guest A's virtio-net device is our
// unchanged NetDevice behind QEMU's `-netdev vhost-user` (2 queue pairs, mergeable receive
// buffers), on a port of our Switch; a TypeScript peer (NetDriver ↔ NetDevice) and a second
// QEMU guest B (`-netdev stream` into a StreamTunnelServer) sit on other ports. A pings the TS
// peer and B, pings again from its second CPU (so from transmit queue 1), B pings A; our
// pcapng of A's port and QEMU's own pcap of B's netdev are read back with tshark and agree.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Switch } from "@virtio-ts/backend-net";
import { StreamTunnelServer } from "@virtio-ts/backend-net/node";
import { NetDevice } from "@virtio-ts/devices";
import {
  acquireGuestSlot,
  createTsNic,
  explainGuest,
  type GuestHandle,
  type GuestResult,
  type KernelInfo,
  macText,
  Responder,
  requireTools,
  startGuest,
  tsharkFields,
} from "@virtio-ts/interop";
import { sniff } from "@virtio-ts/interpose";
import { PcapngWriter } from "@virtio-ts/interpose/node";
import { type VhostUserError, VhostUserNetBackend } from "@virtio-ts/vhost-user";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const BOOT_TEST_TIMEOUT = 420_000;
const A_MAC = "52:54:00:12:34:56";
const B_MAC = "52:54:00:12:34:57";
const TS_MAC = new Uint8Array([0x52, 0x54, 0x00, 0x00, 0x00, 0x02]);

let kernel: KernelInfo;
const dir = mkdtempSync(join(tmpdir(), "vu-net-"));
beforeAll(() => {
  kernel = requireTools(["qemu-system-x86_64", "tshark"]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const FIELDS = ["eth.src", "eth.dst", "ip.src", "ip.dst", "icmp.type", "icmp.seq", "icmp.ident"];

async function icmp(file: string): Promise<string[]> {
  const rows = await tsharkFields(file, { filter: "icmp", fields: FIELDS });
  return rows.map((r) => r.join(" "));
}

const PING_OK = "3 packets transmitted, 3 packets received, 0% packet loss";

describe("a Linux guest on our vhost-user-net back-end (NetDevice on a Switch port)", () => {
  it(
    "negotiates MRG_RXBUF and 2 queue pairs, pings a TS peer and a second QEMU guest through the switch, and both captures agree",
    async () => {
      const sw = new Switch();
      const vuPcap = join(dir, "vhost-user-port.pcapng");
      const bPcap = join(dir, "guest-b.pcap");
      const capture = new PcapngWriter(vuPcap, { interfaces: ["vhost-user"], flushIntervalMs: 0 });
      // The TS peer at 10.0.2.2.
      const responder = new Responder(TS_MAC, [10, 0, 2, 2], { record: true });
      const nic = createTsNic(sw.createPort({ name: "ts" }), {
        mac: TS_MAC,
        onFrame(frame, n) {
          const reply = responder.handle(frame);
          if (reply !== undefined) n.driver.trySend(reply);
        },
      });
      // Guest A's device: our NetDevice, served over vhost-user.
      const device = new NetDevice(sniff(sw.createPort({ name: "vhost-user" }), capture), {
        maxQueuePairs: 2,
        queueSize: 256,
      });
      const closes: (VhostUserError | undefined)[] = [];
      const sock = join(dir, "net.sock");
      const backend = new VhostUserNetBackend(device, sock, {
        onConnectionClose: (e) => closes.push(e),
      });
      await backend.listening;
      // Guest B's netdev: a stream tunnel into the switch.
      const tunnels = await StreamTunnelServer.listen(
        { host: "127.0.0.1", port: 0 },
        {
          onConnection(tunnel) {
            const port = sw.createPort({ name: "guest-b" });
            tunnel.connect(port);
            void tunnel.closed.then(() => port.close());
          },
        },
      );
      const { port: tunnelPort } = tunnels.address as { port: number };

      // Both guests run at once (they ping each other): one machine-wide slot covers the pair.
      const release = await acquireGuestSlot();
      let a: GuestHandle | undefined;
      let b: GuestHandle | undefined;
      let ra: GuestResult;
      let rb: GuestResult;
      try {
        let bReady!: () => void;
        const bIsReady = new Promise<void>((r) => {
          bReady = r;
        });
        b = await startGuest({
          machine: "pc",
          kernel,
          slotHeld: true,
          modules: ["virtio_pci", "virtio_net"],
          args: [
            "-netdev",
            `stream,id=n0,server=off,addr.type=inet,addr.host=127.0.0.1,addr.port=${tunnelPort}`,
            "-device",
            `virtio-net-pci,netdev=n0,mac=${B_MAC},romfile=`,
            "-object",
            `filter-dump,id=f0,netdev=n0,file=${bPcap}`,
          ],
          script: [
            "ip addr add 10.0.2.16/24 dev eth0",
            "ip link set eth0 up",
            "echo B-ready",
            "read -t 240 go",
            "echo B-pings-A",
            "ping -c 3 -i 0.2 -W 5 10.0.2.15",
            "echo B-done",
            "",
          ].join("\n"),
          onLine: (l) => {
            if (l === "B-ready") bReady();
            if (l === "B-done") a?.process.stdin?.write("go\n");
          },
          timeoutMs: 300_000,
        });
        await bIsReady;
        a = await startGuest({
          machine: "pc",
          kernel,
          slotHeld: true,
          sharedMemory: true,
          modules: ["virtio_pci", "virtio_net"],
          args: [
            "-smp",
            "2",
            "-chardev",
            `socket,id=c1,path=${sock}`,
            "-netdev",
            "vhost-user,id=n0,chardev=c1,queues=2",
            "-device",
            // vectors=0 (INTx): QEMU 7.2 under TCG segfaults in vhost_net_start →
            // msix_set_vector_notifiers for any vhost-user netdev with MSI-X, before the
            // back-end is asked anything past initialisation (docs/real-guest.md).
            `virtio-net-pci,netdev=n0,mq=on,vectors=0,mac=${A_MAC},romfile=`,
          ],
          script: [
            "ip addr add 10.0.2.15/24 dev eth0",
            "ip link set eth0 up",
            // Feature bits 15 (MRG_RXBUF) and 22 (MQ) in the negotiated feature string.
            'f=$(cat /sys/class/net/eth0/device/features); echo "mrg=$(echo $f | cut -c16) mq=$(echo $f | cut -c23)"',
            'echo "queues=$(ls /sys/class/net/eth0/queues | tr "\\n" " ")"',
            "echo A-pings-TS",
            "ping -c 3 -i 0.2 -W 5 10.0.2.2",
            "echo A-pings-B",
            "ping -c 3 -i 0.2 -W 5 10.0.2.16",
            // From CPU 1: virtio_net's XPS maps it to transmit queue 1 (ring 3).
            "echo A-pings-TS-from-cpu1",
            "taskset 2 ping -c 3 -i 0.2 -W 5 10.0.2.2",
            "echo A-done",
            "read -t 240 go",
            "",
          ].join("\n"),
          onLine: (l) => {
            if (l === "A-done") b?.process.stdin?.write("go\n");
          },
          timeoutMs: 300_000,
        });
        // If A ends early, let B go on rather than wait for its cue.
        void a.result.then(() => b?.process.stdin?.write("go\n"));
        [ra, rb] = await Promise.all([a.result, b.result]);
      } finally {
        a?.kill();
        b?.kill();
        release();
        await backend.close();
        await tunnels.close();
        nic.close();
        await capture.close();
      }
      const closeErrors = closes.filter((e) => e !== undefined).map((e) => e.message);
      const why = `--- guest A ---\n${explainGuest(ra, 40)}\n--- guest B ---\n${explainGuest(rb, 20)}\n--- back-end ---\n${closeErrors.join("\n")}`;
      const stats = backend.stats;
      console.info(
        `[interop] vhost-user-net: A ${Math.round(ra.durationMs)} ms, B ${Math.round(rb.durationMs)} ms; chains per ring ${JSON.stringify(stats.chainsPerRing)}; QEMU sent ${JSON.stringify(stats.requests)}`,
      );

      expect(ra.timedOut, why).toBe(false);
      expect(rb.timedOut, why).toBe(false);
      expect(ra.guestExit, why).toBe(0);
      expect(rb.guestExit, why).toBe(0);
      // Negotiated: mergeable receive buffers and multiqueue, two queue pairs in the guest.
      expect(ra.output, why).toContain("mrg=1 mq=1\n");
      expect(ra.output, why).toContain("queues=rx-0 rx-1 tx-0 tx-1 \n");
      // Every ping answered: A → TS, A → B, A → TS from CPU 1; B → A.
      const pings = (out: string, label: string): string =>
        out.slice(
          out.indexOf(label),
          out.indexOf("\n", out.indexOf("packet loss", out.indexOf(label))),
        );
      expect(pings(ra.output, "A-pings-TS\n"), why).toContain(PING_OK);
      expect(pings(ra.output, "A-pings-B\n"), why).toContain(PING_OK);
      expect(pings(ra.output, "A-pings-TS-from-cpu1"), why).toContain(PING_OK);
      expect(pings(rb.output, "B-pings-A"), why).toContain(PING_OK);
      expect(responder.echoes.filter((e) => e.srcMac === A_MAC)).toHaveLength(6);
      // Transmit queue 1 (ring 3) carried frames: the second pair runs on our back-end.
      expect(stats.chainsPerRing[3] ?? 0, why).toBeGreaterThan(0);
      expect(device.stats.txFrames).toBeGreaterThanOrEqual(12);
      // Our capture of A's port and QEMU's capture of B's netdev agree on the A↔B frames, and
      // ours holds every ICMP frame of A, as tshark decodes both.
      const ours = await icmp(vuPcap);
      const theirs = await icmp(bPcap);
      const aToB = (r: string): boolean =>
        (r.startsWith(`${A_MAC} ${B_MAC} `) || r.startsWith(`${B_MAC} ${A_MAC} `)) &&
        r.includes("10.0.2.16");
      expect(ours.filter(aToB), why).toHaveLength(12); // 3 + 3 requests, 3 + 3 replies
      expect(ours.filter(aToB)).toEqual(theirs.filter(aToB));
      const tsMac = macText(TS_MAC);
      expect(ours.filter((r) => r.includes(tsMac))).toHaveLength(12);
      expect(closeErrors).toEqual([]);
    },
    BOOT_TEST_TIMEOUT,
  );
});
