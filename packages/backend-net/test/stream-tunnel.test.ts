import { mkdtemp, rm } from "node:fs/promises";
import { connect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  encodeLengthPrefixed,
  LengthPrefixedDecoder,
  Switch,
  type SwitchPort,
  TunnelError,
} from "../src/index.js";
import { StreamTunnel, StreamTunnelServer } from "../src/node.js";
import { BROADCAST, frame, RecordingSink } from "./helpers/frames.js";

const A = "02:00:00:00:00:0a";
const B = "02:00:00:00:00:0b";

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

function framed(f: Uint8Array): Uint8Array {
  const out = new Uint8Array(f.length + 4);
  encodeLengthPrefixed(f, out);
  return out;
}

function rawClient(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: "127.0.0.1", port }, () => resolve(s));
    s.once("error", reject);
    cleanup.push(() => s.destroy());
  });
}

/** A switch with a recording device port and a server whose connections each get a port. */
async function switchServer(maxConnections?: number) {
  const sw = new Switch();
  const device = sw.createPort({ name: "device" });
  const sink = new RecordingSink();
  device.attach(sink);
  const tunnels: StreamTunnel[] = [];
  const tunnelPorts: SwitchPort[] = [];
  const server = await StreamTunnelServer.listen(
    { host: "127.0.0.1", port: 0 },
    {
      ...(maxConnections === undefined ? {} : { maxConnections }),
      maxFrameSize: 1518,
      onConnection(tunnel) {
        const port = sw.createPort({ name: `tunnel${tunnels.length}`, queueFrames: 8 });
        tunnel.connect(port);
        void tunnel.closed.then(() => port.close());
        tunnels.push(tunnel);
        tunnelPorts.push(port);
      },
    },
  );
  cleanup.push(() => server.close());
  const { port } = server.address as { port: number };
  return { sw, device, sink, server, port, tunnels, tunnelPorts };
}

describe("StreamTunnel", () => {
  it("carries frames both ways between a dialled tunnel and a server, through two switches", async () => {
    const s = await switchServer();
    const sw2 = new Switch();
    const dev2 = sw2.createPort();
    const sink2 = new RecordingSink();
    dev2.attach(sink2);
    const client = await StreamTunnel.dial({ host: "127.0.0.1", port: s.port });
    cleanup.push(() => client.socket.destroy());
    client.connect(sw2.createPort());
    dev2.transmit(frame(BROADCAST, B, 1));
    await vi.waitFor(() => expect(s.sink.tags).toEqual([1]));
    s.device.transmit(frame(B, A, 2)); // B was learned on the tunnel port
    await vi.waitFor(() => expect(sink2.tags).toEqual([2]));
    expect(s.sw.lookup(B)).toBe(s.tunnelPorts[0]);
    expect(client.stats).toMatchObject({ framesOut: 1, bytesOut: 60, framesIn: 1, bytesIn: 60 });
  });

  it("reassembles frames a peer writes one byte per write", async () => {
    const s = await switchServer();
    const raw = await rawClient(s.port);
    raw.setNoDelay(true);
    const bytes = Uint8Array.of(
      ...framed(frame(BROADCAST, B, 1)),
      ...framed(frame(BROADCAST, B, 2, 200)),
    );
    for (const b of bytes) raw.write(Uint8Array.of(b));
    await vi.waitFor(() => expect(s.sink.tags).toEqual([1, 2]));
    expect(s.sink.frames.map((f) => f.length)).toEqual([60, 200]);
  });

  it("closes only the connection that sent a zero length, with a bad-length error, while the switch keeps forwarding others", async () => {
    const s = await switchServer();
    const good = await rawClient(s.port);
    const bad = await rawClient(s.port);
    await vi.waitFor(() => expect(s.tunnels.length).toBe(2));
    const badClosed = new Promise((r) => bad.once("close", r));
    bad.write(Uint8Array.of(...framed(frame(BROADCAST, A, 1)), 0, 0, 0, 0));
    const err = await s.tunnels[1]!.closed;
    expect(err).toBeInstanceOf(TunnelError);
    expect([err?.code, err?.length]).toEqual(["bad-length", 0]);
    await badClosed;
    expect(s.sink.tags).toEqual([1]); // the frame before the bad header got through
    good.write(framed(frame(BROADCAST, B, 2)));
    await vi.waitFor(() => expect(s.sink.tags).toEqual([1, 2]));
    expect(s.server.tunnels.size).toBe(1);
    expect(s.sw.ports.map((p) => p.name)).toEqual(["device", "tunnel0"]);
  });

  it("closes a connection announcing a frame above maxFrameSize", async () => {
    const s = await switchServer();
    const bad = await rawClient(s.port);
    await vi.waitFor(() => expect(s.tunnels.length).toBe(1));
    bad.write(Uint8Array.of(0, 0, 0x05, 0xef)); // 1519 > 1518
    const err = await s.tunnels[0]!.closed;
    expect([err?.code, err?.length, err?.maxFrameSize]).toEqual(["bad-length", 1519, 1518]);
  });

  it("rejects connections beyond maxConnections and counts them", async () => {
    const s = await switchServer(1);
    await rawClient(s.port);
    const second = await rawClient(s.port);
    await new Promise((r) => second.once("close", r));
    expect(s.server.stats).toMatchObject({ accepted: 1, rejected: 1, evicted: 0 });
  });

  it("works over a unix socket", async () => {
    const dir = await mkdtemp(join(tmpdir(), "virtio-ts-net-"));
    cleanup.push(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, "sock");
    const sw = new Switch();
    const dev = sw.createPort();
    const sink = new RecordingSink();
    dev.attach(sink);
    const server = await StreamTunnelServer.listen(
      { path },
      { onConnection: (t) => t.connect(sw.createPort()) },
    );
    cleanup.push(() => server.close());
    const client = await StreamTunnel.dial({ path });
    cleanup.push(() => client.socket.destroy());
    const far = new Switch();
    const farDev = far.createPort();
    client.connect(far.createPort());
    farDev.transmit(frame(BROADCAST, B, 3));
    await vi.waitFor(() => expect(sink.tags).toEqual([3]));
  });

  it("refuses deliveries while the socket is backed up, so the port queue fills to its cap and counts drops, then drains everything queued", async () => {
    const s = await switchServer();
    const raw = await rawClient(s.port);
    raw.pause(); // the peer stops reading: kernel buffers fill, then socket.write returns false
    await vi.waitFor(() => expect(s.tunnels.length).toBe(1));
    const tunnel = s.tunnels[0]!;
    const port = s.tunnelPorts[0]!;
    const big = frame(BROADCAST, A, 0, 1518);
    let sent = 0;
    while (tunnel.stats.backpressure === 0 && sent < 100_000) {
      s.device.transmit(big);
      sent++;
    }
    expect(tunnel.stats.backpressure).toBe(1);
    const written = tunnel.stats.framesOut;
    for (let i = 0; i < 20; i++) s.device.transmit(big);
    // Synchronous so far: no drain can have run. The queue (cap 8) holds 8, 12 were dropped.
    expect([port.queuedFrames, port.stats.drops.queueFull, tunnel.stats.framesOut]).toEqual([
      8,
      12,
      written,
    ]);
    let received = 0;
    const decoder = new LengthPrefixedDecoder(1518, () => received++);
    raw.on("data", (c: Buffer) => decoder.push(c));
    raw.resume();
    await vi.waitFor(() => expect(received).toBe(written + 8), { timeout: 30_000 });
    expect(port.queuedFrames).toBe(0);
    expect(tunnel.stats.framesOut).toBe(written + 8);
  });

  it("detaches from its port with no error when the peer hangs up", async () => {
    const s = await switchServer();
    const raw = await rawClient(s.port);
    await vi.waitFor(() => expect(s.tunnels.length).toBe(1));
    const t = s.tunnels[0]!;
    raw.destroy();
    await t.closed;
    expect(t.error).toBeUndefined();
    expect(s.tunnelPorts[0]!.closed).toBe(true); // the onConnection hook closed it
  });

  it("rejects dialling a port nobody listens on with a socket TunnelError", async () => {
    const s = await switchServer();
    await s.server.close();
    const err = await StreamTunnel.dial({ host: "127.0.0.1", port: s.port }).catch((e) => e);
    expect([err instanceof TunnelError, err.code]).toEqual([true, "socket"]);
  });

  it("validates host API arguments", async () => {
    const s = await switchServer();
    const client = await StreamTunnel.dial({ host: "127.0.0.1", port: s.port });
    cleanup.push(() => client.socket.destroy());
    expect(() => client.connect({} as never)).toThrow(/port must be a NetBackend/);
    expect(() => StreamTunnel.dial({ host: "127.0.0.1", port: 70000 })).toThrow(/address\.port/);
    await expect(
      StreamTunnelServer.listen({ host: "127.0.0.1", port: 0 }, {} as never),
    ).rejects.toThrow(/options\.onConnection/);
  });
});
