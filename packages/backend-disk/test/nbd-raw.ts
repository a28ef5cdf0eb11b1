// Raw NBD peers for the hostile-input tests: they write the wire bytes themselves (never
// through NbdDisk / NbdServer), so a bug shared by our client and server cannot hide.
import { connect, createServer, type Server, type Socket } from "node:net";
import { ByteReader } from "../src/nbd-wire.js";

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;

/** Big-endian bytes from a list of [width, value] fields. */
export function be(...fields: [1 | 2 | 4 | 8, number | bigint][]): Uint8Array {
  const len = fields.reduce((n, [w]) => n + w, 0);
  const b = new Uint8Array(len);
  const v = new DataView(b.buffer);
  let at = 0;
  for (const [w, x] of fields) {
    if (w === 1) v.setUint8(at, Number(x));
    else if (w === 2) v.setUint16(at, Number(x));
    else if (w === 4) v.setUint32(at, Number(x));
    else v.setBigUint64(at, BigInt(x));
    at += w;
  }
  return b;
}

export function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

/** A raw client connection with an exact-length reader. */
export interface RawPeer {
  readonly socket: Socket;
  readonly reader: ByteReader;
  /** Resolves when the other side closed the connection. */
  readonly closed: Promise<void>;
}

function wrap(socket: Socket): RawPeer {
  const reader = new ByteReader(socket);
  const closed = new Promise<void>((resolve) => socket.once("close", () => resolve()));
  socket.on("error", () => {});
  return { socket, reader, closed };
}

export function rawConnect(port: number): Promise<RawPeer> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: "127.0.0.1", port });
    s.once("error", reject);
    s.once("connect", () => resolve(wrap(s)));
  });
}

/** An option as a client sends it (proto.md "Newstyle negotiation"). */
export function opt(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  return cat(be([8, IHAVEOPT], [4, option], [4, data.length]), data);
}

/** NBD_OPT_GO / NBD_OPT_INFO data for `name` with the listed information requests. */
export function goData(name: string, infos: number[] = []): Uint8Array {
  const n = new TextEncoder().encode(name);
  return cat(be([4, n.length]), n, be([2, infos.length]), ...infos.map((i) => be([2, i])));
}

/** One option reply as the server sent it. */
export interface OptReply {
  magic: bigint;
  option: number;
  type: number;
  data: Uint8Array;
}

export async function readOptReply(p: RawPeer): Promise<OptReply> {
  const h = view(await p.reader.read(20));
  const data = await p.reader.read(h.getUint32(16));
  return { magic: h.getBigUint64(0), option: h.getUint32(8), type: h.getUint32(12), data };
}

/** Read the greeting, send client flags FIXED_NEWSTYLE | NO_ZEROES; returns handshake flags. */
export async function greet(p: RawPeer, clientFlags = 3): Promise<number> {
  const g = view(await p.reader.read(18));
  p.socket.write(be([4, clientFlags]));
  return g.getUint16(16);
}

/** Handshake with NBD_OPT_GO up to transmission; returns the export size. */
export async function rawGo(p: RawPeer, name: string): Promise<number> {
  await greet(p);
  p.socket.write(opt(7, goData(name)));
  let size = -1;
  for (;;) {
    const r = await readOptReply(p);
    if (r.type === 3 && view(r.data).getUint16(0) === 0)
      size = Number(view(r.data).getBigUint64(2));
    if (r.type === 1) return size;
    if (r.type >= 0x80000000) throw new Error(`GO refused 0x${r.type.toString(16)}`);
  }
}

/** proto.md "Request message". */
export function request(
  type: number,
  cookie: number,
  offset: number,
  length: number,
  flags = 0,
): Uint8Array {
  return be([4, REQUEST_MAGIC], [2, flags], [2, type], [8, cookie], [8, offset], [4, length]);
}

/** A simple reply header: magic, error, cookie. */
export async function readReply(
  p: RawPeer,
): Promise<{ magic: number; error: number; cookie: bigint }> {
  const h = view(await p.reader.read(16));
  return { magic: h.getUint32(0), error: h.getUint32(4), cookie: h.getBigUint64(8) };
}

/** A scripted server on a free port: `script` runs for each connection. */
export async function fakeServer(
  script: (peer: RawPeer) => Promise<void>,
): Promise<{ port: number; server: Server; done: Promise<void>[] }> {
  const done: Promise<void>[] = [];
  const server = createServer((s) => {
    const p = wrap(s);
    done.push(script(p).catch(() => {}));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const a = server.address();
  return { port: typeof a === "object" && a ? a.port : 0, server, done };
}

/**
 * The server side of a GO handshake for a fake server: greeting, client flags, one NBD_OPT_GO
 * answered with NBD_INFO_EXPORT (`size`, `flags`) and NBD_REP_ACK.
 */
export async function fakeGo(p: RawPeer, size: bigint, flags = 1 | 4 | 32 | 64): Promise<void> {
  p.socket.write(cat(be([8, NBDMAGIC], [8, IHAVEOPT], [2, 3])));
  await p.reader.read(4);
  const h = view(await p.reader.read(16));
  await p.reader.read(h.getUint32(12));
  const info = be([2, 0], [8, size], [2, flags]);
  p.socket.write(cat(be([8, OPT_REPLY_MAGIC], [4, 7], [4, 3], [4, info.length]), info));
  p.socket.write(be([8, OPT_REPLY_MAGIC], [4, 7], [4, 1], [4, 0]));
}

/** Read one request header (28 bytes) and its write payload, as a fake server. */
export async function readRequest(
  p: RawPeer,
): Promise<{ type: number; flags: number; cookie: bigint; offset: number; length: number }> {
  const h = view(await p.reader.read(28));
  const r = {
    flags: h.getUint16(4),
    type: h.getUint16(6),
    cookie: h.getBigUint64(8),
    offset: Number(h.getBigUint64(16)),
    length: h.getUint32(24),
  };
  if (r.type === 1) await p.reader.read(r.length);
  return r;
}
