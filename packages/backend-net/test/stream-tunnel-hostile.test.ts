// StreamTunnelServer against peers that hold slots, stall or cut frames short, over real TCP
// sockets: slots are won back, deadlines close the silent, a cut frame is reported.
import { connect, type Socket } from "node:net";
import { afterEach, describe, expect, it, vi } from "vitest";
import { encodeLengthPrefixed, Switch, TunnelError } from "../src/index.js";
import {
  type StreamTunnel,
  StreamTunnelServer,
  type StreamTunnelServerOptions,
} from "../src/node.js";
import { BROADCAST, frame, RecordingSink } from "./helpers/frames.js";

const A = "02:00:00:00:00:0a";

const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

function framed(f: Uint8Array): Uint8Array {
  const out = new Uint8Array(f.length + 4);
  encodeLengthPrefixed(f, out);
  return out;
}

interface Peer {
  readonly socket: Socket;
  /** Resolves when the server closed (or reset) the connection. */
  readonly closed: Promise<void>;
}

function peer(port: number): Promise<Peer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: "127.0.0.1", port }, () => resolve({ socket, closed }));
    const closed = new Promise<void>((r) => socket.once("close", () => r()));
    socket.once("error", reject);
    socket.on("error", () => {});
    // Read (and drop) what the switch floods here: a socket with unread data never sees the
    // server's FIN.
    socket.resume();
    cleanup.push(() => socket.destroy());
  });
}

async function server(options: Omit<StreamTunnelServerOptions, "onConnection">) {
  const sw = new Switch();
  const device = sw.createPort({ name: "device" });
  const sink = new RecordingSink();
  device.attach(sink);
  const tunnels: StreamTunnel[] = [];
  const srv = await StreamTunnelServer.listen(
    { host: "127.0.0.1", port: 0 },
    {
      ...options,
      maxFrameSize: 1518,
      onConnection(tunnel) {
        const port = sw.createPort();
        tunnel.connect(port);
        void tunnel.closed.then(() => port.close());
        tunnels.push(tunnel);
      },
    },
  );
  cleanup.push(() => srv.close());
  return { sw, sink, srv, tunnels, port: (srv.address as { port: number }).port };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("StreamTunnelServer against peers that hold slots", () => {
  it("16 silent peers cannot lock a real peer out: once silent evictIdleAfterMs the idlest gives up its slot", async () => {
    const s = await server({ evictIdleAfterMs: 400 });
    const silent = [];
    for (let i = 0; i < 16; i++) silent.push(await peer(s.port)); // the default 16 slots
    await vi.waitFor(() => expect(s.srv.tunnels.size).toBe(16));
    // Too early: the silent ones have not been silent long enough, so the newcomer is refused.
    const early = await peer(s.port);
    await early.closed;
    expect(s.srv.stats).toMatchObject({ rejected: 1, evicted: 0 });
    await sleep(450);
    const t0 = performance.now();
    const real = await peer(s.port);
    real.socket.write(framed(frame(BROADCAST, A, 7)));
    await vi.waitFor(() => expect(s.sink.tags).toEqual([7]), { timeout: 2000, interval: 5 });
    const servedMs = performance.now() - t0;
    expect(servedMs).toBeLessThan(500);
    await silent[0]!.closed; // the first to connect was the idlest
    expect(s.tunnels[0]!.error).toMatchObject({ name: "TunnelError", code: "evicted" });
    expect(s.srv.stats).toMatchObject({ accepted: 17, rejected: 1, evicted: 1 });
    expect(s.srv.tunnels.size).toBe(16);
  });

  it("a peer that sends frames is never the one evicted", async () => {
    const s = await server({ maxConnections: 2, evictIdleAfterMs: 200 });
    const talker = await peer(s.port);
    const silent = await peer(s.port);
    await vi.waitFor(() => expect(s.tunnels.length).toBe(2));
    const keepTalking = setInterval(() => talker.socket.write(framed(frame(BROADCAST, A, 1))), 50);
    cleanup.push(() => clearInterval(keepTalking));
    await sleep(300);
    await peer(s.port);
    await silent.closed;
    expect(s.tunnels[1]!.error?.code).toBe("evicted");
    expect(s.tunnels[0]!.error).toBeUndefined();
    expect(talker.socket.destroyed).toBe(false);
  });

  it("handshakeTimeoutMs closes a peer that never completes a frame (a partial one does not count) and reports the partial frame", async () => {
    const s = await server({ handshakeTimeoutMs: 300 });
    const mute = await peer(s.port);
    const partial = await peer(s.port);
    const good = await peer(s.port);
    await vi.waitFor(() => expect(s.tunnels.length).toBe(3));
    partial.socket.write(framed(frame(BROADCAST, A, 3)).subarray(0, 40));
    good.socket.write(framed(frame(BROADCAST, A, 4)));
    const t0 = performance.now();
    await Promise.all([mute.closed, partial.closed, s.tunnels[0]!.closed, s.tunnels[1]!.closed]);
    expect(performance.now() - t0).toBeLessThan(300 + 1000);
    expect(s.tunnels[0]!.error?.code).toBe("timeout");
    expect(s.tunnels[1]!.error?.code).toBe("timeout");
    expect(s.tunnels[1]!.stats.partialFrameBytes).toBe(40);
    expect(s.srv.stats).toMatchObject({ handshakeTimeouts: 2, partialFrames: 1 });
    expect(good.socket.destroyed).toBe(false);
    expect(s.sink.tags).toEqual([4]);
  });

  it("idleTimeoutMs closes a tunnel that has sent nothing for that long", async () => {
    const s = await server({ idleTimeoutMs: 300 });
    const p = await peer(s.port);
    p.socket.write(framed(frame(BROADCAST, A, 5)));
    await p.closed;
    expect(s.tunnels[0]!.error).toMatchObject({ code: "timeout" });
    expect(s.srv.stats.idleTimeouts).toBe(1);
    expect(s.sink.tags).toEqual([5]);
  });

  it("a connection that ends in the middle of a frame resolves closed with a partial-frame TunnelError counting the bytes", async () => {
    const s = await server({});
    const p = await peer(s.port);
    const whole = framed(frame(BROADCAST, A, 6, 100));
    p.socket.end(Uint8Array.of(...framed(frame(BROADCAST, A, 9)), ...whole.subarray(0, 54)));
    await vi.waitFor(() => expect(s.tunnels.length).toBe(1));
    const err = await s.tunnels[0]!.closed;
    expect(err).toBeInstanceOf(TunnelError);
    expect([err?.code, err?.length]).toEqual(["partial-frame", 54]);
    expect(s.tunnels[0]!.stats.partialFrameBytes).toBe(54);
    expect(s.sink.tags).toEqual([9]); // the complete frame before it got through
    await vi.waitFor(() => expect(s.srv.stats.partialFrames).toBe(1));
  });

  it("bad limit options are RangeErrors naming them", async () => {
    for (const name of ["evictIdleAfterMs", "handshakeTimeoutMs", "idleTimeoutMs"] as const) {
      await expect(
        StreamTunnelServer.listen(
          { host: "127.0.0.1", port: 0 },
          { onConnection() {}, [name]: -1 },
        ),
      ).rejects.toThrow(new RegExp(`options\\.${name}`));
    }
  });
});
