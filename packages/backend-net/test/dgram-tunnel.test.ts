import { createSocket } from "node:dgram";
import { afterEach, describe, expect, it, vi } from "vitest";
import { Switch } from "../src/index.js";
import { DgramTunnel } from "../src/node.js";
import { BROADCAST, frame, RecordingSink } from "./helpers/frames.js";
import { freeUdpPort } from "./helpers/ports.js";

const A = "02:00:00:00:00:0a";
const B = "02:00:00:00:00:0b";
const cleanup: (() => unknown)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function tunnelPair() {
  const pa = await freeUdpPort();
  const pb = await freeUdpPort();
  const ta = await DgramTunnel.bind({
    local: { host: "127.0.0.1", port: pa },
    remote: { host: "127.0.0.1", port: pb },
  });
  const tb = await DgramTunnel.bind({
    local: { host: "127.0.0.1", port: pb },
    remote: { host: "127.0.0.1", port: pa },
  });
  cleanup.push(
    () => ta.close(),
    () => tb.close(),
  );
  return { ta, tb };
}

describe("DgramTunnel", () => {
  it("carries one frame per datagram both ways between two switches", async () => {
    const { ta, tb } = await tunnelPair();
    const [swa, swb] = [new Switch(), new Switch()];
    const [da, db] = [swa.createPort(), swb.createPort()];
    const [sa, sb] = [new RecordingSink(), new RecordingSink()];
    da.attach(sa);
    db.attach(sb);
    ta.connect(swa.createPort());
    tb.connect(swb.createPort());
    da.transmit(frame(BROADCAST, A, 1, 1514));
    await vi.waitFor(() => expect(sb.tags).toEqual([1]));
    expect(sb.frames[0]!.length).toBe(1514);
    db.transmit(frame(A, B, 2));
    await vi.waitFor(() => expect(sa.tags).toEqual([2]));
    expect(ta.stats).toMatchObject({ framesOut: 1, bytesOut: 1514, framesIn: 1, bytesIn: 60 });
  });

  it("drops and counts datagrams too short to be Ethernet frames, and keeps working", async () => {
    const raw = createSocket("udp4");
    await new Promise<void>((r) => raw.bind(0, "127.0.0.1", () => r()));
    cleanup.push(() => new Promise<void>((r) => raw.close(() => r())));
    const t = await DgramTunnel.bind({
      local: { host: "127.0.0.1", port: 0 },
      remote: { host: "127.0.0.1", port: raw.address().port },
    });
    cleanup.push(() => t.close());
    const sw = new Switch();
    const dev = sw.createPort();
    const sink = new RecordingSink();
    dev.attach(sink);
    t.connect(sw.createPort());
    raw.send(new Uint8Array(5), t.address.port, "127.0.0.1");
    raw.send(frame(BROADCAST, B, 7), t.address.port, "127.0.0.1");
    await vi.waitFor(() => expect(sink.tags).toEqual([7]));
    expect(t.stats.badSize).toBe(1);
  });

  it("drops frames beyond maxSendQueue instead of queueing without bound", async () => {
    const port = await freeUdpPort();
    const t = await DgramTunnel.bind({
      local: { host: "127.0.0.1", port: 0 },
      remote: { host: "127.0.0.1", port },
      maxSendQueue: 1,
    });
    cleanup.push(() => t.close());
    const sw = new Switch();
    const dev = sw.createPort();
    t.connect(sw.createPort());
    for (let i = 0; i < 50; i++) dev.transmit(frame(BROADCAST, A, i));
    // Every frame is accounted for: sent, or dropped because the send queue was full.
    expect(t.stats.framesOut + t.stats.sendQueueFull).toBe(50);
    expect(t.socket.getSendQueueCount()).toBeLessThanOrEqual(1);
  });

  it("validates its options, naming the bad one", async () => {
    await expect(
      DgramTunnel.bind({
        local: { host: "localhost", port: 0 },
        remote: { host: "127.0.0.1", port: 1 },
      }),
    ).rejects.toThrow(/options\.local\.host/);
    await expect(
      DgramTunnel.bind({ local: { host: "::1", port: 0 }, remote: { host: "127.0.0.1", port: 1 } }),
    ).rejects.toThrow(RangeError);
    await expect(
      DgramTunnel.bind({
        local: { host: "127.0.0.1", port: 0 },
        remote: { host: "127.0.0.1", port: 0 },
      }),
    ).rejects.toThrow(/options\.remote\.port/);
  });
});
