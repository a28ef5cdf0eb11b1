// NbdDisk against servers that stall or cut replies short: every call settles, in bounded
// time, with a typed error. The servers are raw peers on real sockets (nbd-raw.ts).
import { BackendError } from "@virtio-ts/devices";
import { afterEach, describe, expect, it } from "vitest";
import { NbdDisk, type NbdError } from "../src/node.js";
import {
  be,
  cat,
  fakeGo,
  fakeServer,
  IHAVEOPT,
  NBDMAGIC,
  OPT_REPLY_MAGIC,
  type RawPeer,
  readRequest,
  SIMPLE_REPLY_MAGIC,
} from "./nbd-raw.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function hostile(script: (p: RawPeer) => Promise<void>): Promise<number> {
  const peers: RawPeer[] = [];
  const f = await fakeServer(async (p) => {
    peers.push(p);
    await script(p);
  });
  cleanups.push(async () => {
    for (const p of peers) p.socket.destroy();
    await new Promise<void>((r) => f.server.close(() => r()));
  });
  return f.port;
}

/** Settle `p` or fail the test after `ms`: a hang must show as a failure, not a test timeout. */
async function within<T>(ms: number, p: Promise<T>): Promise<PromiseSettledResult<T>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise<"hang">((r) => {
    timer = setTimeout(() => r("hang"), ms);
  });
  const settled = Promise.allSettled([p]).then(([r]) => r!);
  const r = await Promise.race([settled, hang]);
  clearTimeout(timer);
  if (r === "hang") throw new Error(`did not settle within ${ms} ms`);
  return r;
}

function reason(r: PromiseSettledResult<unknown>): { code: string; cause?: NbdError } {
  expect(r.status).toBe("rejected");
  const e = (r as PromiseRejectedResult).reason;
  expect(e).toBeInstanceOf(BackendError);
  return e as { code: string; cause?: NbdError };
}

describe("NbdDisk when the server misbehaves in time", () => {
  it("a READ reply cut short in its data rejects that read with BackendError io (NbdError truncated)", async () => {
    const port = await hostile(async (p) => {
      await fakeGo(p, 1n << 20n);
      const r = await readRequest(p);
      const f = await readRequest(p);
      // The header and 100 of 4096 data bytes, then the connection goes away.
      p.socket.write(cat(be([4, SIMPLE_REPLY_MAGIC], [4, 0], [8, r.cookie]), new Uint8Array(100)));
      await new Promise((res) => setTimeout(res, 20));
      void f;
      p.socket.destroy();
    });
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "");
    cleanups.push(() => disk.close());
    const read = disk.read(0, [new Uint8Array(4096)]);
    const flush = disk.flush();
    const r = reason(await within(5000, read));
    expect([r.code, r.cause?.code]).toEqual(["io", "truncated"]);
    expect(reason(await within(5000, flush)).code).toBe("io");
    expect(disk.inFlight).toBe(0);
  });

  it("handshakeTimeoutMs is a total deadline: a server trickling unknown NBD_REP_INFO every 50 ms cannot hold connect", async () => {
    const port = await hostile(async (p) => {
      p.socket.write(be([8, NBDMAGIC], [8, IHAVEOPT], [2, 3]));
      await p.reader.read(4 + 16 + 8); // client flags, NBD_OPT_GO header and data for ""
      // proto.md "NBD_REP_INFO": the client MUST ignore unknown information types; each one is
      // progress, so an idle timer would be reset for ever.
      const unknownInfo = be([8, OPT_REPLY_MAGIC], [4, 7], [4, 3], [4, 2], [2, 0x7777]);
      while (!p.socket.destroyed) {
        p.socket.write(unknownInfo);
        await new Promise((r) => setTimeout(r, 50));
      }
    });
    const t0 = performance.now();
    const r = reason(
      await within(
        5000,
        NbdDisk.connect({ host: "127.0.0.1", port }, "", { handshakeTimeoutMs: 400 }),
      ),
    );
    const took = performance.now() - t0;
    expect([r.code, r.cause?.code, r.cause?.value]).toEqual(["io", "timeout", 400]);
    expect(took).toBeGreaterThanOrEqual(390);
    expect(took).toBeLessThan(3000);
  });

  it("requestTimeoutMs fails what a silent server never answers with NbdError timeout, and close settles", async () => {
    let closed: Promise<void> | undefined;
    const port = await hostile(async (p) => {
      closed = p.closed;
      await fakeGo(p, 1n << 20n);
      for (;;) await readRequest(p); // reads everything, answers nothing
    });
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "", { requestTimeoutMs: 300 });
    const t0 = performance.now();
    const all = [disk.read(0, [new Uint8Array(512)]), disk.write(8, [new Uint8Array(512)])];
    const results = await within(5000, Promise.allSettled(all));
    const took = performance.now() - t0;
    expect(results.status).toBe("fulfilled");
    for (const r of (results as PromiseFulfilledResult<PromiseSettledResult<void>[]>).value) {
      const e = reason(r);
      expect([e.code, e.cause?.code, e.cause?.value]).toEqual(["io", "timeout", 300]);
    }
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(3000);
    // The connection is dropped (a late reply could not be matched) and later calls fail fast.
    await within(5000, closed!);
    expect(reason(await within(1000, disk.read(0, [new Uint8Array(512)]))).code).toBe("io");
    expect((await within(1000, disk.close())).status).toBe("fulfilled");
  });

  it("requestTimeoutMs counts from each request: replies 150 ms apart never trip a 400 ms timeout", async () => {
    const port = await hostile(async (p) => {
      await fakeGo(p, 1n << 20n);
      for (;;) {
        const r = await readRequest(p);
        if (r.type === 2) return;
        await new Promise((res) => setTimeout(res, 150));
        p.socket.write(
          cat(be([4, SIMPLE_REPLY_MAGIC], [4, 0], [8, r.cookie]), new Uint8Array(r.length)),
        );
      }
    });
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "", { requestTimeoutMs: 400 });
    const t0 = performance.now();
    for (let i = 0; i < 5; i++) await disk.read(i, [new Uint8Array(512)]);
    expect(performance.now() - t0).toBeGreaterThan(700); // longer than the timeout in total
    await disk.close();
  });

  it("close settles after closeTimeoutMs when a silent server never answers, rejecting the rest with BackendError closed", async () => {
    const port = await hostile(async (p) => {
      await fakeGo(p, 1n << 20n);
      for (;;) await readRequest(p);
    });
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "", { closeTimeoutMs: 300 });
    const read = disk.read(0, [new Uint8Array(512)]);
    await new Promise((r) => setTimeout(r, 50)); // the request is on the wire
    const t0 = performance.now();
    expect((await within(5000, disk.close())).status).toBe("fulfilled");
    const took = performance.now() - t0;
    expect(took).toBeGreaterThanOrEqual(290);
    expect(took).toBeLessThan(3000);
    expect(reason(await within(1000, read)).code).toBe("closed");
  });

  it("bad timeout options are RangeErrors naming them", async () => {
    for (const name of ["handshakeTimeoutMs", "requestTimeoutMs", "closeTimeoutMs"] as const) {
      await expect(
        NbdDisk.connect({ host: "127.0.0.1", port: 9 }, "", { [name]: -1 }),
      ).rejects.toThrow(new RegExp(`options\\.${name}`));
    }
  });
});
