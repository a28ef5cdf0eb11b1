import { close, openSync, rename, rmSync, write } from "node:fs";

/** pcapng Section Header Block type (also the byte sequence `\n\r\r\n`). */
export const PCAPNG_SHB = 0x0a0d0d0a;
/** pcapng Interface Description Block type. */
export const PCAPNG_IDB = 0x00000001;
/** pcapng Enhanced Packet Block type. */
export const PCAPNG_EPB = 0x00000006;
/** pcapng Simple Packet Block type (read, never written). */
export const PCAPNG_SPB = 0x00000003;
/** pcapng byte-order magic, written in the writer's byte order. */
export const PCAPNG_BYTE_ORDER_MAGIC = 0x1a2b3c4d;
/** `LINKTYPE_ETHERNET`: frames start with the destination MAC, no preamble, no FCS. */
export const LINKTYPE_ETHERNET = 1;

/**
 * Which way a captured frame went, seen from the guest's network interface (as a capture on the
 * guest's own NIC would record it): `outbound` = transmitted by the guest, `inbound` =
 * delivered to the guest. Stored in the pcapng `epb_flags` option (bits 0–1: 1 inbound,
 * 2 outbound, 0 not available).
 */
export type CaptureDirection = "inbound" | "outbound" | "unknown";

/** Options of a {@link PcapngWriter}. */
export interface PcapngWriterOptions {
  /**
   * Names of the capture interfaces, written as one Interface Description Block each (in every
   * file); a record names its interface by index. Default `["eth0"]`.
   */
  readonly interfaces?: readonly string[];
  /** Bytes of each frame kept (the rest is cut; the original length is recorded). Default 65535. */
  readonly snaplen?: number;
  /**
   * Size of each of the writer's two buffers (bytes). While one is written to disk the other
   * fills; when both are full, records are dropped and counted. Default 1 MiB; at least
   * `snaplen + 256`.
   */
  readonly bufferBytes?: number;
  /**
   * Start a new file once the current one would pass this many bytes (every file starts with
   * its own section and interface headers and holds at least one packet). Default: never.
   */
  readonly rotateBytes?: number;
  /**
   * Rotated files kept besides the current one: `cap.pcapng` is current, `cap.1.pcapng` the
   * newest older one, up to `cap.<keep>.pcapng`; older ones are deleted. Default 4; 0 keeps
   * none.
   */
  readonly keep?: number;
  /**
   * Write a partly filled buffer after this long (ms) so a quiet link still reaches the disk;
   * 0 disables (use {@link PcapngWriter.flush}). Default 1000.
   */
  readonly flushIntervalMs?: number;
  /**
   * Clock for packet timestamps: milliseconds since the Unix epoch, fractions kept to the
   * microsecond. Default `performance.timeOrigin + performance.now()`.
   */
  readonly now?: () => number;
}

/** Counters of a {@link PcapngWriter}. Counters only grow. */
export interface PcapngWriterStats {
  /** Packet records accepted into a buffer. */
  readonly records: number;
  /** Packet records dropped: both buffers full (the disk fell behind), writer closed or failed. */
  readonly dropped: number;
  /** Records whose frame was longer than the snaplen and was cut. */
  readonly truncated: number;
  /** Bytes written to disk (all files). */
  readonly bytesWritten: number;
  /** Files started after the first one. */
  readonly rotations: number;
  /** Failed writes, renames or opens; after the first the writer stops capturing. */
  readonly writeErrors: number;
}

const DEFAULT_BUFFER = 1 << 20;
/** EPB: 28 bytes fixed, epb_flags option (8), opt_endofopt (4), trailing length (4). */
const EPB_OVERHEAD = 44;
const EPOCH_2_32 = 0x1_0000_0000;

const defaultNow = (): number => performance.timeOrigin + performance.now();

function checkInt(name: string, value: unknown, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isInteger(value)) {
    throw new TypeError(`${name} must be an integer, got ${String(value)}`);
  }
  if (value < min || value > max) {
    throw new RangeError(`${name} must be in [${min}, ${max}], got ${value}`);
  }
  return value;
}

const pad4 = (n: number): number => (n + 3) & ~3;

interface Chunk {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  used: number;
  /** Close the current file and start the next one before writing this chunk. */
  rotateBefore: boolean;
}

/**
 * Writes a pcapng capture file (one section, little-endian, Ethernet interfaces with
 * microsecond timestamps) that Wireshark, tshark and tcpdump read. Every packet is an Enhanced
 * Packet Block whose `epb_flags` record its {@link CaptureDirection}.
 *
 * **Bounded, never blocking.** {@link PcapngWriter.record} copies the frame into one of two
 * preallocated buffers and returns at once; full buffers are written asynchronously
 * (`fs.write`), one at a time. When the disk falls behind and both buffers are full, new
 * records are dropped and counted in {@link PcapngWriterStats.dropped}: the network path
 * never waits and the writer's memory never grows. Recording allocates nothing.
 *
 * **Rotation.** With `rotateBytes`, files rotate like logrotate: `cap.pcapng` is current,
 * `cap.1.pcapng` the previous, up to `keep`.
 *
 * @example
 * ```ts
 * import { PcapngWriter } from "@virtio-ts/interpose/node";
 *
 * const pcap = new PcapngWriter("/tmp/vm.pcapng", { interfaces: ["vm0"] });
 * pcap.record(0, new Uint8Array(60), "outbound");
 * await pcap.close();
 * ```
 */
export class PcapngWriter {
  /** Path of the current file. */
  readonly path: string;
  /** Bytes kept of each frame. */
  readonly snaplen: number;
  /** The interface names, in index order. */
  readonly interfaces: readonly string[];
  readonly #stats = {
    records: 0,
    dropped: 0,
    truncated: 0,
    bytesWritten: 0,
    rotations: 0,
    writeErrors: 0,
  };
  readonly #header: Uint8Array;
  readonly #chunks: [Chunk, Chunk];
  readonly #now: () => number;
  readonly #rotateBytes: number;
  readonly #keep: number;
  readonly #base: string;
  readonly #ext: string;
  #active: Chunk;
  /** The other chunk, when it holds bytes waiting for (or under) a write. */
  #sealed: Chunk | undefined;
  #fd: number;
  /** Bytes of the current file: written, sealed and in the active chunk. */
  #fileBytes: number;
  #filePackets = 0;
  #writing: Promise<void> | undefined;
  #closed = false;
  #failed: Error | undefined;
  #timer: ReturnType<typeof setInterval> | undefined;
  /** Where the last record starts in the active chunk (-1: none to retract). */
  #lastStart = -1;
  #lastToken = 0;

  /**
   * Create (truncate) `path` and write the file headers.
   * @param path - the capture file; with rotation, `.N` goes before its extension
   * @param options - interfaces, snaplen, buffer size, rotation, clock
   * @throws RangeError naming `path` if the file cannot be opened for writing; RangeError /
   *   TypeError naming the bad option
   */
  constructor(path: string, options: PcapngWriterOptions = {}) {
    if (typeof path !== "string" || path.length === 0) {
      throw new TypeError("path must be a non-empty string");
    }
    const interfaces = options.interfaces ?? ["eth0"];
    if (!Array.isArray(interfaces) || interfaces.length === 0 || interfaces.length > 256) {
      throw new RangeError("options.interfaces must list 1 to 256 interface names");
    }
    for (const name of interfaces) {
      if (typeof name !== "string") throw new TypeError("options.interfaces must be strings");
    }
    this.interfaces = [...interfaces];
    this.snaplen = checkInt("options.snaplen", options.snaplen ?? 65_535, 14, 262_144);
    const bufferBytes = checkInt(
      "options.bufferBytes",
      options.bufferBytes ?? Math.max(DEFAULT_BUFFER, this.snaplen + 256),
      this.snaplen + 256,
      1 << 28,
    );
    if (options.rotateBytes !== undefined) {
      checkInt("options.rotateBytes", options.rotateBytes, 1, Number.MAX_SAFE_INTEGER);
    }
    this.#rotateBytes = options.rotateBytes ?? Number.POSITIVE_INFINITY;
    this.#keep = checkInt("options.keep", options.keep ?? 4, 0, 10_000);
    const interval = checkInt(
      "options.flushIntervalMs",
      options.flushIntervalMs ?? 1000,
      0,
      2 ** 31 - 1,
    );
    if (options.now !== undefined && typeof options.now !== "function") {
      throw new TypeError("options.now must be a function");
    }
    this.#now = options.now ?? defaultNow;
    this.#header = encodeHeader(this.interfaces, this.snaplen);
    if (this.#header.length > bufferBytes) {
      throw new RangeError("options.bufferBytes is too small for the interface headers");
    }
    const dot = path.lastIndexOf(".");
    const slash = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
    this.#base = dot > slash + 1 ? path.slice(0, dot) : path;
    this.#ext = dot > slash + 1 ? path.slice(dot) : "";
    this.path = path;
    try {
      this.#fd = openSync(path, "w");
    } catch (e) {
      throw new RangeError(
        `path ${JSON.stringify(path)} cannot be opened for writing: ${String(e)}`,
        {
          cause: e,
        },
      );
    }
    const mk = (): Chunk => {
      const bytes = new Uint8Array(bufferBytes);
      return {
        bytes,
        view: new DataView(bytes.buffer),
        used: 0,
        rotateBefore: false,
      };
    };
    this.#chunks = [mk(), mk()];
    this.#active = this.#chunks[0];
    this.#active.bytes.set(this.#header, 0);
    this.#active.used = this.#header.length;
    this.#fileBytes = this.#header.length;
    if (interval > 0) {
      this.#timer = setInterval(() => this.#kick(true), interval);
      this.#timer.unref?.();
    }
  }

  /** Counters (a live view). */
  get stats(): PcapngWriterStats {
    return this.#stats;
  }

  /** The error that stopped the writer, if a write, rename or open failed. */
  get error(): Error | undefined {
    return this.#failed;
  }

  /**
   * Record one Ethernet frame. Copies at most `snaplen` bytes before returning, so `frame` may
   * be a short-lived view. Never throws on the frame's contents and never blocks.
   * @param iface - index into {@link PcapngWriter.interfaces}
   * @param frame - the frame (Ethernet header first)
   * @param direction - which way it went
   * @returns a token for {@link PcapngWriter.retract}, or 0 if the record was dropped
   * @throws RangeError naming `iface` if it is not an index into the interfaces (a caller bug)
   */
  record(iface: number, frame: Uint8Array, direction: CaptureDirection): number {
    if (!(iface >= 0 && iface < this.interfaces.length && (iface | 0) === iface)) {
      throw new RangeError(`iface must be an index below ${this.interfaces.length}, got ${iface}`);
    }
    if (this.#closed || this.#failed !== undefined) {
      this.#stats.dropped++;
      return 0;
    }
    const orig = frame.length;
    const cap = Math.min(orig, this.snaplen);
    const size = EPB_OVERHEAD + pad4(cap);
    let chunk = this.#active;
    const needRotate = this.#filePackets > 0 && this.#fileBytes + size > this.#rotateBytes;
    if (needRotate || chunk.used + size > chunk.bytes.length) {
      if (this.#sealed !== undefined) {
        // The disk has not caught up: dropping keeps memory bounded and the caller unblocked.
        this.#stats.dropped++;
        return 0;
      }
      this.#seal(needRotate);
      chunk = this.#active;
    }
    const ms = this.#now();
    // A clock before 1970 (or NaN) records time 0 rather than a garbage timestamp.
    const us = ms > 0 ? Math.round(ms * 1000) : 0;
    const high = Math.floor(us / EPOCH_2_32);
    const v = chunk.view;
    const at = chunk.used;
    v.setUint32(at, PCAPNG_EPB, true);
    v.setUint32(at + 4, size, true);
    v.setUint32(at + 8, iface, true);
    v.setUint32(at + 12, high >>> 0, true);
    v.setUint32(at + 16, (us - high * EPOCH_2_32) >>> 0, true);
    v.setUint32(at + 20, cap, true);
    v.setUint32(at + 24, orig, true);
    chunk.bytes.set(cap === orig ? frame : frame.subarray(0, cap), at + 28);
    let o = at + 28 + cap;
    // Padding must be zero; the chunk is reused, so clear it explicitly.
    while ((o & 3) !== 0) chunk.bytes[o++] = 0;
    v.setUint32(o, 2 | (4 << 16), true); // epb_flags, length 4
    v.setUint32(o + 4, direction === "inbound" ? 1 : direction === "outbound" ? 2 : 0, true);
    v.setUint32(o + 8, 0, true); // opt_endofopt
    v.setUint32(o + 12, size, true);
    chunk.used = at + size;
    this.#fileBytes += size;
    this.#filePackets++;
    this.#stats.records++;
    if (cap !== orig) this.#stats.truncated++;
    this.#lastStart = at;
    // Start writing once a buffer is half full, so the other has room while the disk works.
    if (chunk.used >= chunk.bytes.length >>> 1) this.#kick(false);
    return ++this.#lastToken;
  }

  /**
   * Remove the record `token` names if nothing was recorded after it and it is still in
   * memory (used when a receiver refused the frame it describes and it will be offered again).
   * @param token - what {@link PcapngWriter.record} returned
   * @returns whether the record was removed
   */
  retract(token: number): boolean {
    if (token === 0 || token !== this.#lastToken || this.#lastStart < 0) return false;
    const chunk = this.#active;
    const size = chunk.used - this.#lastStart;
    chunk.used = this.#lastStart;
    this.#fileBytes -= size;
    this.#filePackets--;
    this.#stats.records--;
    this.#lastStart = -1;
    return true;
  }

  /**
   * Write everything recorded so far to disk.
   * @returns when the bytes are written (or the writer failed; see {@link PcapngWriter.error})
   */
  async flush(): Promise<void> {
    for (;;) {
      if (this.#writing !== undefined) {
        await this.#writing;
        continue;
      }
      const pending = this.#sealed !== undefined || this.#activeHasData();
      if (!pending || this.#failed !== undefined) return;
      this.#kick(true);
    }
  }

  /**
   * Flush, close the file and stop recording (later records are dropped and counted).
   * @returns when the file is closed
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.flush();
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    await new Promise<void>((resolve) => close(this.#fd, () => resolve()));
  }

  #activeHasData(): boolean {
    return this.#active.used > 0 || this.#active.rotateBefore;
  }

  /** Hand the active chunk to the disk side and make the other one active. */
  #seal(rotateNext: boolean): void {
    const old = this.#active;
    this.#sealed = old;
    const next = old === this.#chunks[0] ? this.#chunks[1] : this.#chunks[0];
    next.used = 0;
    next.rotateBefore = false;
    if (rotateNext) {
      next.rotateBefore = true;
      next.bytes.set(this.#header, 0);
      next.used = this.#header.length;
      this.#fileBytes = this.#header.length;
      this.#filePackets = 0;
    }
    this.#active = next;
    this.#lastStart = -1;
    this.#kick(false);
  }

  /** Start the disk side if it is idle; with `sealActive`, write the active chunk too. */
  #kick(sealActive: boolean): void {
    if (this.#writing !== undefined || this.#failed !== undefined) return;
    if (this.#sealed === undefined) {
      const a = this.#active;
      if (!(sealActive || a.used >= a.bytes.length >>> 1) || !this.#activeHasData()) return;
      this.#seal(false);
      return; // #seal kicked again with the chunk sealed
    }
    const chunk = this.#sealed;
    this.#writing = this.#drain(chunk).finally(() => {
      this.#writing = undefined;
      this.#sealed = undefined;
      chunk.used = 0;
      chunk.rotateBefore = false;
      if (!this.#closed) this.#kick(false);
    });
  }

  async #drain(chunk: Chunk): Promise<void> {
    try {
      if (chunk.rotateBefore) await this.#rotate();
      let off = 0;
      while (off < chunk.used) {
        const n = await writeAsync(this.#fd, chunk.bytes, off, chunk.used - off);
        off += n;
        this.#stats.bytesWritten += n;
      }
    } catch (e) {
      this.#stats.writeErrors++;
      this.#failed = e instanceof Error ? e : new Error(String(e));
    }
  }

  #name(i: number): string {
    return i === 0 ? this.path : `${this.#base}.${i}${this.#ext}`;
  }

  async #rotate(): Promise<void> {
    await new Promise<void>((resolve) => close(this.#fd, () => resolve()));
    if (this.#keep === 0) {
      rmSync(this.path, { force: true });
    } else {
      rmSync(this.#name(this.#keep), { force: true });
      for (let i = this.#keep - 1; i >= 0; i--) {
        await renameIfExists(this.#name(i), this.#name(i + 1));
      }
    }
    this.#fd = openSync(this.path, "w");
    this.#stats.rotations++;
  }
}

function writeAsync(fd: number, bytes: Uint8Array, off: number, len: number): Promise<number> {
  return new Promise((resolve, reject) => {
    write(fd, bytes, off, len, null, (err, n) => (err ? reject(err) : resolve(n)));
  });
}

function renameIfExists(from: string, to: string): Promise<void> {
  return new Promise((resolve, reject) => {
    rename(from, to, (err) => (err && err.code !== "ENOENT" ? reject(err) : resolve()));
  });
}

/** Section Header Block followed by one Interface Description Block per interface. */
function encodeHeader(interfaces: readonly string[], snaplen: number): Uint8Array {
  const enc = new TextEncoder();
  const app = enc.encode("virtio-ts interpose");
  const names = interfaces.map((n) => enc.encode(n).subarray(0, 1024));
  const shbLen = 24 + 4 + pad4(app.length) + 4 + 4;
  let total = shbLen;
  for (const n of names) total += 20 + pad4(n.length) + 8 + 4 + 4;
  const out = new Uint8Array(total);
  const v = new DataView(out.buffer);
  v.setUint32(0, PCAPNG_SHB, true);
  v.setUint32(4, shbLen, true);
  v.setUint32(8, PCAPNG_BYTE_ORDER_MAGIC, true);
  v.setUint16(12, 1, true);
  v.setUint16(14, 0, true);
  v.setInt32(16, -1, true); // section length unknown
  v.setInt32(20, -1, true);
  v.setUint16(24, 4, true); // shb_userappl
  v.setUint16(26, app.length, true);
  out.set(app, 28);
  let o = 28 + pad4(app.length);
  v.setUint32(o, 0, true);
  v.setUint32(o + 4, shbLen, true);
  o += 8;
  for (const n of names) {
    const len = 20 + pad4(n.length) + 8 + 4 + 4;
    v.setUint32(o, PCAPNG_IDB, true);
    v.setUint32(o + 4, len, true);
    v.setUint16(o + 8, LINKTYPE_ETHERNET, true);
    v.setUint32(o + 12, snaplen, true);
    v.setUint16(o + 16, 2, true); // if_name
    v.setUint16(o + 18, n.length, true);
    out.set(n, o + 20);
    let p = o + 20 + pad4(n.length);
    v.setUint16(p, 9, true); // if_tsresol
    v.setUint16(p + 2, 1, true);
    out[p + 4] = 6; // 10^-6 s
    p += 8;
    v.setUint32(p, 0, true);
    v.setUint32(p + 4, len, true);
    o += len;
  }
  return out;
}

/** What was wrong with a capture file {@link readPcapng} or {@link readPcap} rejected. */
export type PcapFormatErrorCode = "bad-magic" | "truncated" | "bad-block" | "bad-interface";

/** A capture file is malformed. Raised by the parsers only; they never read out of bounds. */
export class PcapFormatError extends Error {
  /** What was wrong. */
  readonly code: PcapFormatErrorCode;
  /** Byte offset of the offending block or record. */
  readonly offset: number;

  /**
   * @param code - what was wrong
   * @param offset - where
   * @param detail - text for the message
   */
  constructor(code: PcapFormatErrorCode, offset: number, detail: string) {
    super(`capture file ${code} at offset ${offset}: ${detail}`);
    this.code = code;
    this.offset = offset;
  }

  /** `PcapFormatError`. */
  override get name(): string {
    return "PcapFormatError";
  }
}

/** One interface of a parsed capture. */
export interface CaptureInterface {
  /** Link type (1 = Ethernet). */
  readonly linkType: number;
  /** Snapshot length (0 = unlimited). */
  readonly snaplen: number;
  /** `if_name`, if present. */
  readonly name: string | undefined;
  /** Timestamp units per second (10^6 unless `if_tsresol` says otherwise). */
  readonly unitsPerSecond: bigint;
}

/** One parsed packet. */
export interface CapturedPacket {
  /** Index of its interface in {@link Capture.interfaces}. */
  readonly interfaceId: number;
  /** Capture time in nanoseconds since the Unix epoch. */
  readonly timestampNs: bigint;
  /** Bytes of the frame as captured (a copy). */
  readonly data: Uint8Array;
  /** Length of the frame on the wire (more than `data.length` if cut by the snaplen). */
  readonly originalLength: number;
  /** Direction from `epb_flags` (classic pcap: always `unknown`). */
  readonly direction: CaptureDirection;
}

/** A parsed capture file. */
export interface Capture {
  /** Interfaces (for pcapng, of every section, in order). */
  readonly interfaces: readonly CaptureInterface[];
  /** Packets in file order. */
  readonly packets: readonly CapturedPacket[];
}

/**
 * Parse a pcapng file (any byte order; Enhanced and Simple Packet Blocks; other block types
 * are skipped). Pure and bounds-checked: hostile input raises {@link PcapFormatError}, never
 * reads out of bounds and never allocates more than the input's size per packet.
 * @param bytes - the whole file
 * @returns interfaces and packets
 * @throws PcapFormatError if the file is malformed
 */
export function readPcapng(bytes: Uint8Array): Capture {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const interfaces: CaptureInterface[] = [];
  const packets: CapturedPacket[] = [];
  let le = true;
  let sectionBase = 0; // interface ids are per section
  let off = 0;
  const dec = new TextDecoder();
  if (bytes.length < 12 || v.getUint32(0, true) !== PCAPNG_SHB) {
    throw new PcapFormatError("bad-magic", 0, "not a pcapng file (no Section Header Block)");
  }
  while (off < bytes.length) {
    if (off + 12 > bytes.length) throw new PcapFormatError("truncated", off, "block header");
    let type = v.getUint32(off, le);
    if (v.getUint32(off, true) === PCAPNG_SHB) {
      const magic = v.getUint32(off + 8, true);
      if (magic === PCAPNG_BYTE_ORDER_MAGIC) le = true;
      else if (magic === 0x4d3c2b1a) le = false;
      else throw new PcapFormatError("bad-magic", off, "bad byte-order magic");
      type = PCAPNG_SHB;
      sectionBase = interfaces.length;
    }
    const len = v.getUint32(off + 4, le);
    if (len < 12 || (len & 3) !== 0) {
      throw new PcapFormatError("bad-block", off, `block length ${len}`);
    }
    if (off + len > bytes.length) throw new PcapFormatError("truncated", off, "block body");
    if (v.getUint32(off + len - 4, le) !== len) {
      throw new PcapFormatError("bad-block", off, "trailing length differs");
    }
    const end = off + len - 4;
    if (type === PCAPNG_IDB) {
      if (len < 20) throw new PcapFormatError("bad-block", off, "short interface block");
      let name: string | undefined;
      let units = 1_000_000n;
      forEachOption(v, off + 16, end, le, (code, at, olen) => {
        if (code === 2) name = dec.decode(bytes.subarray(at, at + olen)).replace(/\0+$/, "");
        if (code === 9 && olen >= 1) {
          const r = bytes[at]!;
          units = r & 0x80 ? 2n ** BigInt(r & 0x7f) : 10n ** BigInt(r);
        }
      });
      interfaces.push({
        linkType: v.getUint16(off + 8, le),
        snaplen: v.getUint32(off + 12, le),
        name,
        unitsPerSecond: units,
      });
    } else if (type === PCAPNG_EPB) {
      if (len < 32) throw new PcapFormatError("bad-block", off, "short packet block");
      const ifLocal = v.getUint32(off + 8, le);
      const iface = interfaces[sectionBase + ifLocal];
      if (iface === undefined || sectionBase + ifLocal >= interfaces.length) {
        throw new PcapFormatError("bad-interface", off, `interface ${ifLocal} not described`);
      }
      const ts = (BigInt(v.getUint32(off + 12, le)) << 32n) | BigInt(v.getUint32(off + 16, le));
      const cap = v.getUint32(off + 20, le);
      const orig = v.getUint32(off + 24, le);
      if (off + 28 + cap > end) throw new PcapFormatError("bad-block", off, "captured length");
      let direction: CaptureDirection = "unknown";
      forEachOption(v, off + 28 + pad4(cap), end, le, (code, at, olen) => {
        if (code === 2 && olen >= 4) {
          const d = v.getUint32(at, le) & 3;
          direction = d === 1 ? "inbound" : d === 2 ? "outbound" : "unknown";
        }
      });
      packets.push({
        interfaceId: sectionBase + ifLocal,
        timestampNs: (ts * 1_000_000_000n) / iface.unitsPerSecond,
        data: copy(bytes, off + 28, off + 28 + cap),
        originalLength: orig,
        direction,
      });
    } else if (type === PCAPNG_SPB) {
      const iface = interfaces[sectionBase];
      if (iface === undefined) throw new PcapFormatError("bad-interface", off, "no interface");
      if (len < 16) throw new PcapFormatError("bad-block", off, "short simple packet block");
      const orig = v.getUint32(off + 8, le);
      const cap = Math.min(orig, len - 16, iface.snaplen === 0 ? orig : iface.snaplen);
      packets.push({
        interfaceId: sectionBase,
        timestampNs: 0n,
        data: copy(bytes, off + 12, off + 12 + cap),
        originalLength: orig,
        direction: "unknown",
      });
    }
    off += len;
  }
  return { interfaces, packets };
}

/** A plain `Uint8Array` copy (`Buffer#slice` would return a view). */
function copy(bytes: Uint8Array, start: number, end: number): Uint8Array {
  return new Uint8Array(bytes.subarray(start, end));
}

function forEachOption(
  v: DataView,
  start: number,
  end: number,
  le: boolean,
  fn: (code: number, at: number, len: number) => void,
): void {
  let o = start;
  while (o + 4 <= end) {
    const code = v.getUint16(o, le);
    const len = v.getUint16(o + 2, le);
    if (code === 0) return;
    if (o + 4 + len > end) throw new PcapFormatError("bad-block", o, "option overruns block");
    fn(code, o + 4, len);
    o += 4 + pad4(len);
  }
}

/**
 * Parse a classic libpcap file (magic 0xa1b2c3d4 microseconds or 0xa1b23c4d nanoseconds, either
 * byte order). Pure and bounds-checked like {@link readPcapng}; directions are `unknown`.
 * @param bytes - the whole file
 * @returns one interface and the packets
 * @throws PcapFormatError if the file is malformed
 */
export function readPcap(bytes: Uint8Array): Capture {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (bytes.length < 24) throw new PcapFormatError("truncated", 0, "file header");
  const m = v.getUint32(0, true);
  let le: boolean;
  if (m === 0xa1b2c3d4 || m === 0xa1b23c4d) le = true;
  else if (m === 0xd4c3b2a1 || m === 0x4d3cb2a1) le = false;
  else throw new PcapFormatError("bad-magic", 0, "not a pcap file");
  const magic = v.getUint32(0, le);
  const units = magic === 0xa1b23c4d ? 1_000_000_000n : 1_000_000n;
  const snaplen = v.getUint32(16, le);
  const iface: CaptureInterface = {
    linkType: v.getUint32(20, le) & 0xffff,
    snaplen,
    name: undefined,
    unitsPerSecond: units,
  };
  const packets: CapturedPacket[] = [];
  let off = 24;
  while (off < bytes.length) {
    if (off + 16 > bytes.length) throw new PcapFormatError("truncated", off, "record header");
    const sec = BigInt(v.getUint32(off, le));
    const frac = BigInt(v.getUint32(off + 4, le));
    const cap = v.getUint32(off + 8, le);
    const orig = v.getUint32(off + 12, le);
    if (off + 16 + cap > bytes.length) throw new PcapFormatError("truncated", off, "record data");
    packets.push({
      interfaceId: 0,
      timestampNs: sec * 1_000_000_000n + (frac * 1_000_000_000n) / units,
      data: copy(bytes, off + 16, off + 16 + cap),
      originalLength: orig,
      direction: "unknown",
    });
    off += 16 + cap;
  }
  return { interfaces: [iface], packets };
}
