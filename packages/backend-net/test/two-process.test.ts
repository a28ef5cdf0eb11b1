// A tunnel is only QEMU-compatible if it works with a peer that is not us in the same event
// loop: these tests run the far side in a child Node process that imports the built package.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { afterEach, beforeAll, describe, expect, it, vi } from "vitest";
import { Switch } from "../src/index.js";
import { DgramTunnel, StreamTunnel } from "../src/node.js";
import { buildPackage } from "./helpers/build.js";
import { BROADCAST, frame, RecordingSink } from "./helpers/frames.js";
import { freeUdpPort } from "./helpers/ports.js";

const A = "02:00:00:00:00:0a";
const children: ChildProcess[] = [];
const cleanup: (() => unknown)[] = [];

beforeAll(() => buildPackage());
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
  for (const c of children.splice(0)) c.kill();
});

/** Start a fixture and resolve with the number it prints after `word`. */
function start(name: string, args: string[], word: string): Promise<number> {
  const script = fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
  const child = spawn(process.execPath, [script, ...args], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = "";
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      const m = new RegExp(`${word} (\\d+)`).exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.once("exit", (code) => reject(new Error(`${name} exited with ${code}`)));
  });
}

describe("tunnels between two processes on loopback", () => {
  it("a stream tunnel carries frames to an echoing child process and the switch learns the child's address", async () => {
    const port = await start("stream-echo.mjs", [], "listening");
    const sw = new Switch();
    const dev = sw.createPort({ name: "device" });
    const sink = new RecordingSink();
    dev.attach(sink);
    const tunnel = await StreamTunnel.dial({ host: "127.0.0.1", port });
    cleanup.push(() => tunnel.socket.destroy());
    const tport = sw.createPort({ name: "tunnel" });
    tunnel.connect(tport);
    for (let i = 0; i < 50; i++) dev.transmit(frame(BROADCAST, A, i, 60 + i * 29));
    await vi.waitFor(() => expect(sink.frames.length).toBe(50));
    expect(sink.tags).toEqual(Array.from({ length: 50 }, (_, i) => i));
    expect(sink.frames.map((f) => f.length)).toEqual(
      Array.from({ length: 50 }, (_, i) => 60 + i * 29),
    );
    expect([...sink.frames[0]!.subarray(0, 12)]).toEqual([
      2, 0, 0, 0, 0, 0x0a, 2, 0, 0, 0, 0, 0x99,
    ]);
    expect(sw.lookup("02:00:00:00:00:99")).toBe(tport);
    dev.transmit(frame("02:00:00:00:00:99", A, 77)); // known unicast now
    await vi.waitFor(() => expect(sink.tags.at(-1)).toBe(77));
    // 50 echoes to the device, the unicast to the tunnel, and its echo back.
    expect([sw.stats.forwarded, sw.stats.flooded]).toEqual([52, 50]);
  });

  it("a dgram tunnel carries frames to an echoing child process", async () => {
    const mine = await freeUdpPort();
    const theirs = await start("dgram-echo.mjs", [String(mine)], "bound");
    const tunnel = await DgramTunnel.bind({
      local: { host: "127.0.0.1", port: mine },
      remote: { host: "127.0.0.1", port: theirs },
    });
    cleanup.push(() => tunnel.close());
    const sw = new Switch();
    const dev = sw.createPort();
    const sink = new RecordingSink();
    dev.attach(sink);
    tunnel.connect(sw.createPort());
    dev.transmit(frame(BROADCAST, A, 1, 1514));
    await vi.waitFor(() => expect(sink.tags).toEqual([1]));
    expect([...sink.frames[0]!.subarray(6, 12)]).toEqual([2, 0, 0, 0, 0, 0x98]);
    expect(sink.frames[0]!.length).toBe(1514);
  });
});
