// NbdDisk <-> NbdServer in one process, and both against hostile raw peers.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BackendError, type BlockBackend } from "@virtio-ts/devices";
import { afterEach, describe, expect, it } from "vitest";
import { MemoryDisk } from "../src/index.js";
import { NbdDisk, NbdError, NbdServer } from "../src/node.js";
import {
  be,
  cat,
  fakeGo,
  fakeServer,
  goData,
  greet,
  IHAVEOPT,
  NBDMAGIC,
  OPT_REPLY_MAGIC,
  opt,
  rawConnect,
  rawGo,
  readOptReply,
  readReply,
  readRequest,
  request,
  SIMPLE_REPLY_MAGIC,
  view,
} from "./nbd-raw.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function serve(
  exports: Record<string, BlockBackend>,
  extra: { maxInFlight?: number } = {},
): Promise<{ server: NbdServer; port: number; errors: Error[] }> {
  const errors: Error[] = [];
  const server = new NbdServer({ exports, onConnectionError: (e) => errors.push(e), ...extra });
  const a = await server.listen({ host: "127.0.0.1", port: 0 });
  cleanups.push(() => server.close());
  return { server, port: typeof a === "string" ? 0 : a.port, errors };
}

async function open(port: number, name: string): Promise<NbdDisk> {
  const d = await NbdDisk.connect({ host: "127.0.0.1", port }, name);
  cleanups.push(() => d.close());
  return d;
}

function pattern(len: number, seed: number): Uint8Array {
  const b = new Uint8Array(len);
  for (let i = 0; i < len; i++) b[i] = (i * 7 + seed + (i >> 12)) & 0xff;
  return b;
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}

/** A back-end whose operations wait until the test releases them, to force reply order. */
class GatedDisk extends MemoryDisk {
  readonly gates: (() => void)[] = [];
  override async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    await new Promise<void>((r) => this.gates.push(r));
    return super.read(sector, iovecs);
  }
}

describe("NbdDisk against NbdServer in one process", () => {
  it("carries reads, writes, flush, discard and writeZeroes to a MemoryDisk", async () => {
    const mem = MemoryDisk.ofSize(64 * 1024, { blockSize: 4096 });
    mem.bytes.fill(0x99);
    const { port } = await serve({ d: mem });
    const disk = await open(port, "d");
    expect([disk.capacity, disk.blockSize, disk.readOnly]).toEqual([128, 4096, false]);
    expect(disk.info.blockSizes).toEqual({
      minimum: 512,
      preferred: 4096,
      maximumPayload: 1 << 25,
    });
    const data = pattern(3 * 512, 1);
    await disk.write(5, [data.subarray(0, 100), data.subarray(100)]);
    expect(mem.bytes.subarray(5 * 512, 8 * 512)).toEqual(data);
    const shared = new Uint8Array(new SharedArrayBuffer(3 * 512));
    await disk.read(5, [shared.subarray(0, 512), shared.subarray(512)]);
    expect(new Uint8Array(shared)).toEqual(data);
    await disk.flush();
    await disk.writeZeroes(20, 2, false);
    await disk.discard(30, 1);
    expect([
      mem.bytes[20 * 512 - 1],
      mem.bytes[20 * 512],
      mem.bytes[22 * 512 - 1],
      mem.bytes[22 * 512],
    ]).toEqual([0x99, 0, 0, 0x99]);
    expect(mem.bytes[30 * 512]).toBe(0); // MemoryDisk zeroes discarded sectors
  });

  it("splits a 33 MiB write and read at the 32 MiB maximum payload (proto.md Size constraints)", async () => {
    const mem = MemoryDisk.ofSize(34 * 1024 * 1024);
    const { port } = await serve({ big: mem });
    const disk = await open(port, "big");
    const data = pattern(33 * 1024 * 1024, 5);
    await disk.write(2, [data]);
    // Buffer.equals: a deep toEqual over 33 MiB would take minutes.
    expect(bytesEqual(mem.bytes.subarray(1024, 1024 + data.length), data)).toBe(true);
    expect([mem.bytes[1023], mem.bytes[1024 + data.length]]).toEqual([0, 0]);
    const back = new Uint8Array(data.length);
    await disk.read(2, [back.subarray(0, 1 << 20), back.subarray(1 << 20)]);
    expect(bytesEqual(back, data)).toBe(true);
  });

  it("matches out-of-order replies to their requests by cookie", async () => {
    const mem = new GatedDisk(pattern(4096, 0));
    const { port } = await serve({ g: mem });
    const disk = await open(port, "g");
    const a = new Uint8Array(512);
    const b = new Uint8Array(512);
    const order: string[] = [];
    const pa = disk.read(0, [a]).then(() => order.push("a"));
    const pb = disk.read(7, [b]).then(() => order.push("b"));
    while (mem.gates.length < 2) await new Promise((r) => setImmediate(r));
    mem.gates[1]!(); // the second request completes first
    await pb;
    mem.gates[0]!();
    await pa;
    expect(order).toEqual(["b", "a"]);
    expect([a, b]).toEqual([pattern(4096, 0).subarray(0, 512), pattern(4096, 0).subarray(3584)]);
  });

  it("a back-end failure fails only that request with NBD_EIO; the next one succeeds", async () => {
    const mem = MemoryDisk.ofSize(4096);
    let fail = true;
    const flaky: BlockBackend = {
      capacity: mem.capacity,
      blockSize: 512,
      readOnly: false,
      read: (s, v) =>
        fail ? Promise.reject(new BackendError("io", "disk on fire")) : mem.read(s, v),
      write: (s, v) => mem.write(s, v),
      flush: () => mem.flush(),
      discard: (s, c) => mem.discard(s, c),
      writeZeroes: (s, c, u) => mem.writeZeroes(s, c, u),
    };
    const { port } = await serve({ f: flaky });
    const disk = await open(port, "f");
    await expect(disk.read(0, [new Uint8Array(512)])).rejects.toMatchObject({
      name: "BackendError",
      code: "io",
      message: expect.stringContaining("NBD_EIO"),
    });
    fail = false;
    await disk.write(1, [new Uint8Array(512).fill(3)]);
    const b = new Uint8Array(512);
    await disk.read(1, [b]);
    expect(b[0]).toBe(3);
  });

  it("a read-only export sets NBD_FLAG_READ_ONLY, so NbdDisk is readOnly", async () => {
    const { port } = await serve({ ro: MemoryDisk.ofSize(4096, { readOnly: true }) });
    const disk = await open(port, "ro");
    expect([disk.readOnly, disk.info.transmissionFlags & 2]).toEqual([true, 2]);
    await expect(disk.writeZeroes(0, 1, false)).rejects.toMatchObject({ code: "read-only" });
  });

  it("close waits for requests in flight, sends NBD_CMD_DISC, and later calls reject as closed", async () => {
    const mem = new GatedDisk(new Uint8Array(4096));
    const { server, port } = await serve({ g: mem });
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "g");
    const r = disk.read(0, [new Uint8Array(512)]);
    while (mem.gates.length < 1) await new Promise((res) => setImmediate(res));
    const closing = disk.close();
    mem.gates[0]!();
    await r;
    await closing;
    await expect(disk.flush()).rejects.toMatchObject({ code: "closed" });
    while (server.connectionCount > 0) await new Promise((res) => setImmediate(res));
    expect(server.connectionCount).toBe(0);
  });

  it("works over a unix socket as well as TCP", async () => {
    const dir = await mkdtemp(join(tmpdir(), "virtio-ts-nbd-unix-"));
    cleanups.push(() => rm(dir, { recursive: true, force: true }));
    const path = join(dir, "nbd.sock");
    const mem = MemoryDisk.ofSize(4096);
    const server = new NbdServer({ exports: { "": mem } });
    expect(await server.listen({ path })).toBe(path);
    cleanups.push(() => server.close());
    const disk = await NbdDisk.connect({ path }, ""); // the default export
    cleanups.push(() => disk.close());
    await disk.write(7, [new Uint8Array(512).fill(0x61)]);
    expect([mem.bytes[7 * 512 - 1], mem.bytes[7 * 512], mem.bytes[4095]]).toEqual([0, 0x61, 0x61]);
  });

  it("bad host arguments are TypeError / RangeError naming the argument", async () => {
    await expect(NbdDisk.connect({ host: "127.0.0.1", port: 70000 }, "x")).rejects.toThrow(
      new RangeError("address.port must be an integer in 1..65535, got 70000"),
    );
    await expect(NbdDisk.connect({ path: "" }, "x")).rejects.toThrow(TypeError);
    await expect(NbdDisk.connect({ path: "/nonexistent/sock" }, "x".repeat(4097))).rejects.toThrow(
      /exportName must be at most 4096/,
    );
    expect(() => new NbdServer({ exports: {}, maxInFlight: 0 })).toThrow(/options\.maxInFlight/);
    expect(() => new NbdServer({ exports: {}, maxBufferedBytes: 1024 })).toThrow(
      /options\.maxBufferedBytes/,
    );
    expect(() => new NbdServer(null as never)).toThrow(TypeError);
  });

  it("nothing listening is BackendError not-found", async () => {
    await expect(NbdDisk.connect({ path: "/nonexistent/nbd.sock" }, "")).rejects.toMatchObject({
      name: "BackendError",
      code: "not-found",
    });
  });
});

describe("NbdServer option haggling (proto.md Fixed newstyle negotiation, Option types)", () => {
  it("greets with NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE | NO_ZEROES", async () => {
    const { port } = await serve({ a: MemoryDisk.ofSize(512) });
    const p = await rawConnect(port);
    const g = view(await p.reader.read(18));
    expect([g.getBigUint64(0), g.getBigUint64(8), g.getUint16(16)]).toEqual([
      NBDMAGIC,
      IHAVEOPT,
      3,
    ]);
    p.socket.destroy();
  });

  it("NBD_OPT_LIST answers one NBD_REP_SERVER per export then NBD_REP_ACK", async () => {
    const { port } = await serve({ a: MemoryDisk.ofSize(512), bb: MemoryDisk.ofSize(512) });
    const p = await rawConnect(port);
    await greet(p);
    p.socket.write(opt(3));
    const names: string[] = [];
    for (;;) {
      const r = await readOptReply(p);
      expect([r.magic, r.option]).toEqual([OPT_REPLY_MAGIC, 3]);
      if (r.type === 1) break;
      expect(r.type).toBe(2);
      names.push(new TextDecoder().decode(r.data.subarray(4, 4 + view(r.data).getUint32(0))));
    }
    expect(names).toEqual(["a", "bb"]);
    p.socket.write(opt(3, new Uint8Array(1))); // data with LIST: NBD_REP_ERR_INVALID
    expect((await readOptReply(p)).type).toBe(0x80000003);
    p.socket.destroy();
  });

  it("NBD_OPT_INFO describes an export, an unknown option gets NBD_REP_ERR_UNSUP, then NBD_OPT_GO enters transmission", async () => {
    const { port } = await serve({ a: MemoryDisk.ofSize(8192, { readOnly: true }) });
    const p = await rawConnect(port);
    await greet(p);
    p.socket.write(opt(6, goData("a", [3])));
    const infos = new Map<number, DataView>();
    for (;;) {
      const r = await readOptReply(p);
      if (r.type === 1) break;
      expect(r.type).toBe(3);
      infos.set(view(r.data).getUint16(0), view(r.data));
    }
    expect(Number(infos.get(0)!.getBigUint64(2))).toBe(8192);
    // HAS_FLAGS | READ_ONLY | SEND_FLUSH | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN
    expect(infos.get(0)!.getUint16(10)).toBe(1 | 2 | 4 | 32 | 64 | 256);
    expect([infos.get(3)!.getUint32(2), infos.get(3)!.getUint32(10)]).toEqual([512, 1 << 25]);
    p.socket.write(opt(8)); // NBD_OPT_STRUCTURED_REPLY: not supported here
    const unsup = await readOptReply(p);
    expect([unsup.option, unsup.type]).toEqual([8, 0x80000001]);
    p.socket.write(opt(7, goData("nope")));
    expect((await readOptReply(p)).type).toBe(0x80000006); // NBD_REP_ERR_UNKNOWN
    p.socket.write(opt(7, cat(be([4, 100]), new Uint8Array(4)))); // name longer than the data
    expect((await readOptReply(p)).type).toBe(0x80000003); // NBD_REP_ERR_INVALID
    p.socket.write(opt(7, goData("a")));
    let last = await readOptReply(p);
    while (last.type !== 1) last = await readOptReply(p);
    p.socket.write(request(0, 42, 512, 512));
    const rep = await readReply(p);
    expect([rep.magic, rep.error, rep.cookie]).toEqual([SIMPLE_REPLY_MAGIC, 0, 42n]);
    expect((await p.reader.read(512)).every((b) => b === 0)).toBe(true);
    p.socket.destroy();
  });

  it("NBD_OPT_EXPORT_NAME answers size and flags, with the 124 zero bytes only without NO_ZEROES", async () => {
    const { port } = await serve({ e: MemoryDisk.ofSize(4096) });
    for (const clientFlags of [1, 3]) {
      const p = await rawConnect(port);
      await greet(p, clientFlags);
      p.socket.write(opt(1, new TextEncoder().encode("e")));
      const r = view(await p.reader.read(10 + (clientFlags === 1 ? 124 : 0)));
      expect([Number(r.getBigUint64(0)), r.getUint16(8) & 1]).toEqual([4096, 1]);
      p.socket.write(request(3, 1, 0, 0)); // FLUSH: the next bytes are its reply
      expect((await readReply(p)).cookie).toBe(1n);
      p.socket.destroy();
    }
  });

  it("NBD_OPT_EXPORT_NAME for an unknown export terminates the session", async () => {
    const { port, errors } = await serve({ e: MemoryDisk.ofSize(4096) });
    const p = await rawConnect(port);
    await greet(p);
    p.socket.write(opt(1, new TextEncoder().encode("zzz")));
    await p.closed;
    expect(errors.map((e) => (e as NbdError).code)).toEqual(["refused"]);
  });

  it("NBD_OPT_ABORT is acknowledged with NBD_REP_ACK and the connection ends", async () => {
    const { port, errors } = await serve({ e: MemoryDisk.ofSize(4096) });
    const p = await rawConnect(port);
    await greet(p);
    p.socket.write(opt(2));
    const r = await readOptReply(p);
    expect([r.option, r.type]).toEqual([2, 1]);
    await p.closed;
    expect(errors).toEqual([]);
  });
});

describe("NbdServer request checks (proto.md Error values)", () => {
  it("answers bad requests with NBD_EINVAL / NBD_ENOSPC / NBD_EPERM and keeps the connection", async () => {
    const mem = MemoryDisk.ofSize(4096);
    const { port } = await serve({ rw: mem, ro: MemoryDisk.ofSize(4096, { readOnly: true }) });
    const p = await rawConnect(port);
    expect(await rawGo(p, "rw")).toBe(4096);
    const cases: [Uint8Array, number][] = [
      [request(0, 1, 4096, 512), 22], // read past the end: EINVAL
      [cat(request(1, 2, 3584, 1024), new Uint8Array(1024)), 28], // write past the end: ENOSPC
      [request(6, 3, 4096, 512), 28], // write zeroes past the end: ENOSPC
      [request(4, 4, 0, 8192), 22], // trim past the end: EINVAL
      [request(0, 5, 100, 512), 22], // unaligned to the 512-byte minimum block: EINVAL
      [request(5, 6, 0, 512), 22], // NBD_CMD_CACHE, not advertised: EINVAL
      [request(0, 7, 0, 512, 1), 22], // FUA was not advertised: EINVAL
      [request(3, 8, 512, 0), 22], // FLUSH offset MUST be zero: EINVAL
      [request(0, 9, 0, (1 << 25) + 512), 22], // read above the maximum payload: EINVAL
      [request(0, 10, 2 ** 60, 512), 22], // offset beyond 2^53: EINVAL
    ];
    for (const [bytes, expected] of cases) {
      p.socket.write(bytes);
      const r = await readReply(p);
      expect([r.cookie, r.error]).toEqual([BigInt(view(bytes).getBigUint64(8)), expected]);
    }
    expect(mem.bytes.every((b) => b === 0)).toBe(true);
    p.socket.write(request(0, 99, 0, 512));
    expect(await readReply(p)).toEqual({ magic: SIMPLE_REPLY_MAGIC, error: 0, cookie: 99n });
    p.socket.destroy();
    const q = await rawConnect(port);
    await rawGo(q, "ro");
    q.socket.write(cat(request(1, 1, 0, 512), new Uint8Array(512)));
    expect((await readReply(q)).error).toBe(1); // NBD_EPERM
    q.socket.write(request(4, 2, 0, 512));
    expect((await readReply(q)).error).toBe(1);
    q.socket.destroy();
  });

  it("NBD_CMD_DISC lets requests in flight finish, replies to them, then closes", async () => {
    const mem = new GatedDisk(pattern(4096, 9));
    const { port } = await serve({ g: mem });
    const p = await rawConnect(port);
    await rawGo(p, "g");
    p.socket.write(cat(request(0, 5, 0, 512), request(2, 6, 0, 0)));
    while (mem.gates.length < 1) await new Promise((r) => setImmediate(r));
    mem.gates[0]!();
    const r = await readReply(p);
    expect([r.cookie, r.error]).toEqual([5n, 0]);
    expect(await p.reader.read(512)).toEqual(pattern(4096, 9).subarray(0, 512));
    await p.closed;
    expect(p.reader.buffered).toBe(0); // no reply to DISC
  });
});

describe("NbdServer against a hostile client closes only that connection", () => {
  async function expectClosedWith(
    port: number,
    errors: Error[],
    code: string,
    act: (p: Awaited<ReturnType<typeof rawConnect>>) => Promise<void>,
  ): Promise<void> {
    const good = await open(port, "d");
    const p = await rawConnect(port);
    await act(p);
    await p.closed;
    while (errors.length === 0) await new Promise((r) => setImmediate(r));
    expect(errors[0]).toBeInstanceOf(NbdError);
    expect((errors[0] as NbdError).code).toBe(code);
    // Another client, connected before, is still served.
    const b = new Uint8Array(512);
    await good.read(0, [b]);
    expect(b[0]).toBe(0x42);
  }

  const disk = () => new MemoryDisk(new Uint8Array(4096).fill(0x42));

  it("a bad request magic (NBD_REQUEST_MAGIC expected)", async () => {
    const { port, errors } = await serve({ d: disk() });
    await expectClosedWith(port, errors, "bad-magic", async (p) => {
      await rawGo(p, "d");
      p.socket.write(be([4, 0x12345678], [2, 0], [2, 0], [8, 1], [8, 0], [4, 512]));
    });
  });

  it("a WRITE announcing more than the 32 MiB maximum payload", async () => {
    const { port, errors } = await serve({ d: disk() });
    await expectClosedWith(port, errors, "too-long", async (p) => {
      await rawGo(p, "d");
      p.socket.write(request(1, 1, 0, 0xffffffff));
    });
    expect((errors[0] as NbdError).value).toBe(0xffffffff);
  });

  it("an option longer than 64 KiB", async () => {
    const { port, errors } = await serve({ d: disk() });
    await expectClosedWith(port, errors, "too-long", async (p) => {
      await greet(p);
      p.socket.write(be([8, IHAVEOPT], [4, 7], [4, 0x7fffffff]));
    });
  });

  it("a bad option magic (IHAVEOPT expected)", async () => {
    const { port, errors } = await serve({ d: disk() });
    await expectClosedWith(port, errors, "bad-magic", async (p) => {
      await greet(p);
      p.socket.write(be([8, 0x1122334455667788n], [4, 7], [4, 0]));
    });
  });

  it("unknown client flags (proto.md Client flags: the server MUST drop the connection)", async () => {
    const { port, errors } = await serve({ d: disk() });
    await expectClosedWith(port, errors, "protocol", async (p) => {
      await greet(p, 0x80000001);
    });
  });

  it("a handshake truncated in the middle of an option", async () => {
    const { port, errors } = await serve({ d: disk() });
    await expectClosedWith(port, errors, "truncated", async (p) => {
      await greet(p);
      p.socket.end(be([8, IHAVEOPT], [4, 7], [4, 100], [4, 1]));
    });
  });

  it("a write whose payload never fully arrives", async () => {
    const { port, errors } = await serve({ d: disk() });
    await expectClosedWith(port, errors, "truncated", async (p) => {
      await rawGo(p, "d");
      p.socket.end(cat(request(1, 1, 0, 4096), new Uint8Array(100)));
    });
  });
});

describe("NbdDisk against a hostile server", () => {
  async function hostile(script: Parameters<typeof fakeServer>[0]): Promise<number> {
    const f = await fakeServer(script);
    cleanups.push(() => new Promise<void>((r) => f.server.close(() => r())));
    return f.port;
  }

  async function causeOf(p: Promise<unknown>): Promise<{ code: string; cause: NbdError }> {
    try {
      await p;
    } catch (e) {
      expect(e).toBeInstanceOf(BackendError);
      return e as { code: string; cause: NbdError };
    }
    throw new Error("expected a rejection");
  }

  it("a greeting without NBDMAGIC is BackendError io caused by NbdError bad-magic", async () => {
    const port = await hostile(async (p) => {
      p.socket.write(be([8, 0x0102030405060708n], [8, IHAVEOPT], [2, 3]));
    });
    const e = await causeOf(NbdDisk.connect({ host: "127.0.0.1", port }, ""));
    expect([e.code, e.cause.code, e.cause.value]).toEqual(["io", "bad-magic", 0x0102030405060708n]);
  });

  it("an oldstyle server (no IHAVEOPT) is refused with a clear message", async () => {
    const port = await hostile(async (p) => {
      p.socket.write(be([8, NBDMAGIC], [8, 0x00420281861253n], [8, 4096], [4, 1]));
    });
    await expect(NbdDisk.connect({ host: "127.0.0.1", port }, "")).rejects.toThrow(/oldstyle/);
  });

  it("a handshake truncated by the server is NbdError truncated, and the client closes the socket", async () => {
    let closed: Promise<void> | undefined;
    const port = await hostile(async (p) => {
      closed = p.closed;
      p.socket.end(be([8, NBDMAGIC], [4, 0x49484156]));
    });
    const e = await causeOf(NbdDisk.connect({ host: "127.0.0.1", port }, ""));
    expect([e.code, e.cause.code]).toEqual(["io", "truncated"]);
    await closed;
  });

  it("an option reply longer than 64 KiB is NbdError too-long, without allocating it", async () => {
    const port = await hostile(async (p) => {
      p.socket.write(be([8, NBDMAGIC], [8, IHAVEOPT], [2, 3]));
      await p.reader.read(4 + 16 + 8); // client flags, option header, GO data for ""
      p.socket.write(be([8, OPT_REPLY_MAGIC], [4, 7], [4, 3], [4, 0xfffffff0]));
    });
    const e = await causeOf(NbdDisk.connect({ host: "127.0.0.1", port }, ""));
    expect([e.cause.code, e.cause.value]).toEqual(["too-long", 0xfffffff0]);
  });

  it("an export size that is not a multiple of 512 is BackendError bad-size, after NBD_CMD_DISC", async () => {
    let disc: Promise<{ type: number }> | undefined;
    const port = await hostile(async (p) => {
      await fakeGo(p, 1000n);
      disc = readRequest(p);
    });
    await expect(NbdDisk.connect({ host: "127.0.0.1", port }, "")).rejects.toMatchObject({
      code: "bad-size",
      message: expect.stringContaining("1000 bytes"),
    });
    while (!disc) await new Promise((r) => setImmediate(r));
    expect((await disc).type).toBe(2);
  });

  it("NBD_REP_ERR_POLICY is BackendError permission naming the reply", async () => {
    const port = await hostile(async (p) => {
      p.socket.write(be([8, NBDMAGIC], [8, IHAVEOPT], [2, 3]));
      await p.reader.read(4 + 16 + 8); // client flags, option header, GO data for ""
      const msg = new TextEncoder().encode("go away");
      p.socket.write(cat(be([8, OPT_REPLY_MAGIC], [4, 7], [4, 0x80000002], [4, msg.length]), msg));
    });
    await expect(NbdDisk.connect({ host: "127.0.0.1", port }, "")).rejects.toMatchObject({
      code: "permission",
      message: expect.stringMatching(/NBD_REP_ERR_POLICY \(go away\)/),
    });
  });

  it("falls back to NBD_OPT_EXPORT_NAME when NBD_OPT_GO gets NBD_REP_ERR_UNSUP", async () => {
    const port = await hostile(async (p) => {
      p.socket.write(be([8, NBDMAGIC], [8, IHAVEOPT], [2, 1])); // no NO_ZEROES
      expect(view(await p.reader.read(4)).getUint32(0)).toBe(1);
      await p.reader.read(16 + 4 + 4);
      p.socket.write(be([8, OPT_REPLY_MAGIC], [4, 7], [4, 0x80000001], [4, 0]));
      const h = view(await p.reader.read(16));
      await p.reader.read(h.getUint32(12));
      p.socket.write(cat(be([8, 8192], [2, 1 | 4]), new Uint8Array(124)));
      const r = await readRequest(p);
      p.socket.write(
        cat(be([4, SIMPLE_REPLY_MAGIC], [4, 0], [8, r.cookie]), new Uint8Array(r.length).fill(7)),
      );
      await readRequest(p); // DISC
    });
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "");
    expect([disk.capacity, disk.info.viaGo]).toEqual([16, false]);
    const b = new Uint8Array(512);
    await disk.read(3, [b]);
    expect(b[511]).toBe(7);
    await disk.close();
  });

  for (const [what, code, reply] of [
    [
      "an unknown cookie",
      "unknown-cookie",
      (c: bigint) => be([4, SIMPLE_REPLY_MAGIC], [4, 0], [8, c + 1000n]),
    ],
    ["a bad reply magic", "bad-magic", (c: bigint) => be([4, 0x668e33ef], [4, 0], [8, c])],
  ] as const) {
    it(`a reply with ${what} rejects every request in flight with BackendError io and closes`, async () => {
      let closed: Promise<void> | undefined;
      const port = await hostile(async (p) => {
        closed = p.closed;
        await fakeGo(p, 8192n);
        const r1 = await readRequest(p);
        await readRequest(p);
        await readRequest(p);
        p.socket.write(reply(r1.cookie));
      });
      const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "");
      const all = [
        disk.read(0, [new Uint8Array(512)]),
        disk.write(1, [new Uint8Array(512)]),
        disk.flush(),
      ];
      const results = await Promise.allSettled(all);
      for (const r of results) {
        expect(r.status).toBe("rejected");
        const e = (r as PromiseRejectedResult).reason as { code: string; cause: NbdError };
        expect([e.code, e.cause.code]).toEqual(["io", code]);
      }
      await closed;
      await expect(disk.read(0, [new Uint8Array(512)])).rejects.toMatchObject({ code: "io" });
      await disk.close();
    });
  }

  it("NBD_ESHUTDOWN makes the client refuse new requests and send NBD_CMD_DISC once idle", async () => {
    let disc: Promise<{ type: number }> | undefined;
    const port = await hostile(async (p) => {
      await fakeGo(p, 8192n);
      const r1 = await readRequest(p);
      const r2 = await readRequest(p);
      p.socket.write(be([4, SIMPLE_REPLY_MAGIC], [4, 108], [8, r1.cookie]));
      p.socket.write(
        cat(be([4, SIMPLE_REPLY_MAGIC], [4, 0], [8, r2.cookie]), new Uint8Array(512).fill(9)),
      );
      disc = readRequest(p);
    });
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "");
    const first = disk.flush();
    const buf = new Uint8Array(512);
    const second = disk.read(0, [buf]);
    await expect(first).rejects.toMatchObject({
      message: expect.stringContaining("NBD_ESHUTDOWN"),
    });
    await expect(disk.read(1, [new Uint8Array(512)])).rejects.toThrow(/shutting down/);
    await second; // already in flight: still answered
    expect(buf[0]).toBe(9);
    while (!disc) await new Promise((r) => setImmediate(r));
    expect((await disc).type).toBe(2);
    await disk.close();
  });

  it("an error reply fails only its request (NBD_EIO) and a server that vanishes fails the rest", async () => {
    const port = await hostile(async (p) => {
      await fakeGo(p, 8192n);
      const r = await readRequest(p);
      p.socket.write(be([4, SIMPLE_REPLY_MAGIC], [4, 5], [8, r.cookie]));
      await readRequest(p);
      p.socket.destroy();
    });
    const disk = await NbdDisk.connect({ host: "127.0.0.1", port }, "");
    await expect(disk.write(0, [new Uint8Array(512)])).rejects.toMatchObject({
      code: "io",
      message: expect.stringContaining("NBD_CMD_WRITE: NBD_EIO"),
    });
    const e = await causeOf(disk.read(0, [new Uint8Array(512)]));
    expect([e.code, e.cause.code]).toEqual(["io", "truncated"]);
    await disk.close();
  });
});
