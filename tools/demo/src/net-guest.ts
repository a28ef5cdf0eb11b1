// Guest B of the demo's cross-process part, run as `node dist/net-guest.js <port>` by
// net-demo.ts: a NetDriver -> MMIO -> NetDevice guest whose NIC is plugged into one end of a
// VethPair, the other end connected to a StreamTunnel dialled to 127.0.0.1:<port> (the parent's
// StreamTunnelServer, plugged into its switch). It answers ARP and ping for 10.0.0.2, prints
// "ready" once it can, and when the tunnel closes prints "stats <json>" (its NIC's counters and
// pid) and exits.
import { VethPair } from "@virtio-ts/backend-net";
import { StreamTunnel } from "@virtio-ts/backend-net/node";
import { createNetGuest, IP_B, MAC_B, serveGuest } from "./net-demo.js";

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write("usage: node net-guest.js <tcp port of the parent's tunnel server>\n");
  process.exit(2);
}
const { a: nicEnd, b: tunnelEnd } = new VethPair();
const guest = createNetGuest(nicEnd, MAC_B);
const tunnel = await StreamTunnel.dial({ host: "127.0.0.1", port });
tunnel.connect(tunnelEnd);
const stop = new AbortController();
const serving = serveGuest(guest, MAC_B, IP_B, stop.signal);
process.stdout.write("ready\n");
await tunnel.closed;
stop.abort();
await serving;
const stats = JSON.stringify({ ...guest.counters(), pid: process.pid });
process.stdout.write(`stats ${stats}\n`, () => process.exit(0));
