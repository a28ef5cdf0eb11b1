import { connect as netConnect, type Socket } from "node:net";
import { BackendError, type BackendErrorCode, type BlockBackend } from "@virtio-ts/devices";
import {
  ByteReader,
  CMD_DISC,
  CMD_FLAG_NO_HOLE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  dv,
  ERRNO_NAMES,
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  FLAG_READ_ONLY,
  FLAG_SEND_FLUSH,
  FLAG_SEND_TRIM,
  FLAG_SEND_WRITE_ZEROES,
  IHAVEOPT,
  INFO_BLOCK_SIZE,
  INFO_EXPORT,
  MAX_OPTION_LENGTH,
  MAX_PAYLOAD,
  MAX_STRING,
  NBD_EPERM,
  NBD_ESHUTDOWN,
  NBDMAGIC,
  NbdError,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_REPLY_MAGIC,
  REP_ACK,
  REP_ERR_NAMES,
  REP_ERR_POLICY,
  REP_ERR_TLS_REQD,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REP_FLAG_ERROR,
  REP_INFO,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  setU64,
  sliceViews,
  totalLength,
  u64,
} from "./nbd-wire.js";

const SECTOR = 512;
/** Largest TRIM / WRITE_ZEROES sent at once (the length field is 32 bits). */
const MAX_EFFECT = 1 << 30;
/** Zero buffer size used to emulate WRITE_ZEROES on servers without it. */
const ZERO_CHUNK = 1 << 20;

/** A TCP endpoint of an NBD server. */
export interface NbdTcpAddress {
  /** Host name or IP address. */
  readonly host: string;
  /** TCP port (1..65535; 0 lets {@link NbdServer.listen} pick a free one). */
  readonly port: number;
}

/** A unix-domain socket of an NBD server. */
export interface NbdUnixAddress {
  /** Filesystem path of the socket. */
  readonly path: string;
}

/** Where an NBD server listens: TCP (`host`, `port`) or a unix socket (`path`). */
export type NbdAddress = NbdTcpAddress | NbdUnixAddress;

/** Size constraints from NBD_INFO_BLOCK_SIZE (proto.md "Size constraints"). */
export interface NbdBlockSizes {
  /** Minimum block size: offsets and lengths must be multiples of it. */
  readonly minimum: number;
  /** Preferred block size for efficient I/O. */
  readonly preferred: number;
  /** Largest READ / WRITE payload the server accepts. */
  readonly maximumPayload: number;
}

/** Options of {@link NbdDisk.connect}. */
export interface NbdDiskOptions {
  /**
   * Give up the handshake when it has not completed this many milliseconds after the connection
   * was made: a total deadline, so a server that trickles option replies (one unknown
   * NBD_REP_INFO a second) cannot keep `connect` pending. Default 30 000; 0 disables.
   */
  readonly handshakeTimeoutMs?: number;
  /**
   * Fail the connection when a request has waited this many milliseconds for its reply: every
   * request in flight (and every later call) rejects with `BackendError` "io" whose cause is an
   * {@link NbdError} "timeout", and the socket is closed (NBD cannot cancel one request, so a
   * late reply could not be told apart from a stale one). What the Linux nbd driver does when
   * its timeout fires. Default 0: wait for ever, as qemu's NBD client does.
   */
  readonly requestTimeoutMs?: number;
  /**
   * How long {@link NbdDisk.close} waits for the requests in flight before it disconnects
   * anyway (they then reject with `BackendError` "closed"). Default 30 000; 0 disconnects at
   * once.
   */
  readonly closeTimeoutMs?: number;
}

/** What the server told us about the export during the handshake. */
export interface NbdExportInfo {
  /** Export size in bytes (proto.md NBD_INFO_EXPORT). */
  readonly size: number;
  /** Transmission flags (proto.md "Transmission flags"). */
  readonly transmissionFlags: number;
  /** NBD_INFO_BLOCK_SIZE minimum, preferred and maximum payload, when the server sent them. */
  readonly blockSizes: NbdBlockSizes | undefined;
  /** Whether the handshake ended with NBD_OPT_GO (false: the NBD_OPT_EXPORT_NAME fallback). */
  readonly viaGo: boolean;
}

interface Pending {
  readonly type: number;
  readonly iovecs: readonly Uint8Array[] | undefined;
  /** `performance.now()` when the request was sent (for `requestTimeoutMs`). */
  readonly sentAt: number;
  readonly resolve: () => void;
  readonly reject: (e: BackendError) => void;
}

/**
 * A `BlockBackend` on an NBD export (qemu-nbd, nbdkit, nbd-server, {@link NbdServer}), over TCP
 * or a unix socket. The client speaks the fixed newstyle handshake and NBD_OPT_GO (falling back
 * to NBD_OPT_EXPORT_NAME on servers without it), then simple replies only: READ, WRITE, FLUSH,
 * TRIM, WRITE_ZEROES and DISC. Many requests are in flight at once on the one connection,
 * matched to replies by a 64-bit cookie.
 *
 * - `capacity` is the export size / 512; a size that is not a multiple of 512 is refused
 *   (`BackendError` "bad-size"), as is a server whose minimum block size exceeds 512.
 * - `readOnly` is NBD_FLAG_READ_ONLY; `blockSize` the server's preferred block size (default 512).
 * - Reads and writes larger than the maximum payload (the server's NBD_INFO_BLOCK_SIZE maximum,
 *   at most 32 MiB) are split into several requests; the call settles when all of them have.
 * - A write resolves only when the server has replied to it; `flush` is NBD_CMD_FLUSH (durable
 *   on the server). A server without NBD_FLAG_SEND_FLUSH has no volatile cache to flush, so
 *   `flush` then resolves at once.
 * - `discard` is NBD_CMD_TRIM (a no-op if the server lacks NBD_FLAG_SEND_TRIM);
 *   `writeZeroes` is NBD_CMD_WRITE_ZEROES, with NBD_CMD_FLAG_NO_HOLE unless `unmap`, or zero
 *   blocks written with WRITE on a server without it.
 * - The server is untrusted: a reply with a bad magic or an unknown cookie, a connection lost
 *   (also in the middle of a reply's data), or a reply later than `requestTimeoutMs` rejects
 *   every request in flight with `BackendError` "io" (the {@link NbdError} is the `cause`) and
 *   every later call too. An error reply (NBD_EIO, …) fails only its own request.
 * - Every wait is bounded when the options ask for it: the handshake by `handshakeTimeoutMs` (a
 *   total deadline), each request by `requestTimeoutMs`, {@link NbdDisk.close} by
 *   `closeTimeoutMs`.
 *
 * @example
 * ```ts
 * const disk = await NbdDisk.connect({ host: "127.0.0.1", port: 10809 }, "disk0");
 * const blk = new BlkDevice(disk, { serial: "nbd0" });
 * // … at shutdown
 * await disk.close();
 * ```
 * @see NBD proto.md "Fixed newstyle negotiation", "NBD_OPT_INFO and NBD_OPT_GO", "Transmission"
 */
export class NbdDisk implements BlockBackend {
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize: number;
  /** @inheritdoc */
  readonly readOnly: boolean;
  /** What the server announced for the export. */
  readonly info: NbdExportInfo;
  readonly #socket: Socket;
  readonly #reader: ByteReader;
  readonly #what: string;
  readonly #maxPayload: number;
  /** In send order (Map iteration order), so the first entry is the oldest request. */
  readonly #pending = new Map<number, Pending>();
  readonly #requestTimeout: number;
  readonly #closeTimeout: number;
  #watchdog: ReturnType<typeof setTimeout> | undefined = undefined;
  #nextCookie = 1;
  #broken: BackendError | undefined = undefined;
  #failed = false;
  #closed = false;
  #discWhenIdle = false;
  #idle: (() => void) | undefined = undefined;
  #zeroes: Uint8Array | undefined = undefined;

  private constructor(
    socket: Socket,
    reader: ByteReader,
    what: string,
    info: NbdExportInfo,
    requestTimeout: number,
    closeTimeout: number,
  ) {
    this.#socket = socket;
    this.#requestTimeout = requestTimeout;
    this.#closeTimeout = closeTimeout;
    this.#reader = reader;
    this.#what = what;
    this.info = info;
    this.capacity = info.size / SECTOR;
    this.readOnly = (info.transmissionFlags & FLAG_READ_ONLY) !== 0;
    const bs = info.blockSizes;
    this.blockSize =
      bs &&
      bs.preferred >= SECTOR &&
      (bs.preferred & (bs.preferred - 1)) === 0 &&
      bs.preferred <= 1 << 24
        ? bs.preferred
        : SECTOR;
    // proto.md "Size constraints": the client MUST NOT exceed the advertised maximum payload and,
    // for interoperability, SHOULD stay within 2^25. Round down to whole sectors.
    const max = bs ? Math.min(bs.maximumPayload, MAX_PAYLOAD) : MAX_PAYLOAD;
    this.#maxPayload = Math.max(SECTOR, max - (max % SECTOR));
    socket.on("error", () => {}); // reported through the reader
    void this.#replyLoop();
  }

  /**
   * Connect to an NBD server and open `exportName`.
   * @param address - `{ host, port }` (TCP) or `{ path }` (unix socket)
   * @param exportName - the export ("" is the server's default export); at most 4096 UTF-8 bytes
   * @param options - handshake, request and close timeouts
   * @throws TypeError / RangeError naming `address`, `exportName` or the bad timeout option;
   *   BackendError "not-found" (NBD_REP_ERR_UNKNOWN, or nothing listening), "permission"
   *   (NBD_REP_ERR_POLICY / TLS_REQD), "bad-size" (export size not a multiple of 512, or a
   *   minimum block size above 512), "io" (any other refusal or protocol violation; the
   *   {@link NbdError} is the `cause`)
   */
  static async connect(
    address: NbdAddress,
    exportName: string,
    options: NbdDiskOptions = {},
  ): Promise<NbdDisk> {
    const what = describeAddress(address);
    if (typeof exportName !== "string") throw new TypeError("exportName must be a string");
    const name = new TextEncoder().encode(exportName);
    if (name.length > MAX_STRING) {
      throw new RangeError(
        `exportName must be at most ${MAX_STRING} UTF-8 bytes, got ${name.length}`,
      );
    }
    const timeout = timeoutOption(options, "handshakeTimeoutMs", 30_000);
    const requestTimeout = timeoutOption(options, "requestTimeoutMs", 0);
    const closeTimeout = timeoutOption(options, "closeTimeoutMs", 30_000);
    const socket = await openSocket(address, what);
    const reader = new ByteReader(socket);
    socket.on("error", () => {}); // the reader turns errors into "truncated"
    // A total deadline, not socket.setTimeout: that one restarts on every byte received, so a
    // server trickling replies could hold connect() for ever.
    let late: NbdError | undefined;
    const deadline =
      timeout > 0
        ? setTimeout(() => {
            late = new NbdError("timeout", `not done in ${timeout} ms`, timeout);
            socket.destroy();
          }, timeout)
        : undefined;
    let info: NbdExportInfo;
    try {
      info = await handshake(socket, reader, name);
    } catch (e) {
      socket.destroy();
      throw asBackendError(
        late ?? e,
        `NBD handshake with ${what} for export "${exportName}" failed`,
      );
    } finally {
      clearTimeout(deadline);
    }
    socket.setNoDelay(true);
    const badSize =
      info.size % SECTOR !== 0
        ? `export size ${info.size} bytes is not a multiple of 512`
        : info.blockSizes && info.blockSizes.minimum > SECTOR
          ? `minimum block size ${info.blockSizes.minimum} is above 512`
          : undefined;
    if (badSize !== undefined) {
      // We are in transmission already: the soft disconnect is NBD_CMD_DISC (proto.md
      // "Terminating the transmission phase").
      socket.end(requestHeader(0, CMD_DISC, 0, 0, 0));
      throw new BackendError("bad-size", `NBD export "${exportName}" at ${what}: ${badSize}`);
    }
    return new NbdDisk(socket, reader, what, info, requestTimeout, closeTimeout);
  }

  /** @inheritdoc */
  read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    return this.#transfer(CMD_READ, sector, iovecs);
  }

  /** @inheritdoc */
  write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    if (this.readOnly) return Promise.reject(this.#readOnlyError());
    return this.#transfer(CMD_WRITE, sector, iovecs);
  }

  /** NBD_CMD_FLUSH; resolves at once if the server did not set NBD_FLAG_SEND_FLUSH. */
  flush(): Promise<void> {
    // proto.md "NBD_CMD_FLUSH": a client MUST NOT send a flush unless NBD_FLAG_SEND_FLUSH was
    // set; without it the server has no write-back cache (every acknowledged write is stable).
    if ((this.info.transmissionFlags & FLAG_SEND_FLUSH) === 0) return this.#check();
    return this.#submit(CMD_FLUSH, 0, 0, 0, undefined);
  }

  /** NBD_CMD_TRIM in pieces of at most 1 GiB; a no-op if the server lacks NBD_FLAG_SEND_TRIM. */
  discard(sector: number, count: number): Promise<void> {
    if (this.readOnly) return Promise.reject(this.#readOnlyError());
    const bad = this.#range(sector, count * SECTOR, "count");
    if (bad) return Promise.reject(bad);
    // proto.md "NBD_CMD_TRIM": a client MUST NOT send a trim unless NBD_FLAG_SEND_TRIM was set.
    if ((this.info.transmissionFlags & FLAG_SEND_TRIM) === 0) return this.#check();
    return this.#effect(CMD_TRIM, 0, sector, count);
  }

  /** NBD_CMD_WRITE_ZEROES (NBD_CMD_FLAG_NO_HOLE unless `unmap`), or WRITE of zero blocks. */
  writeZeroes(sector: number, count: number, unmap: boolean): Promise<void> {
    if (this.readOnly) return Promise.reject(this.#readOnlyError());
    const bad = this.#range(sector, count * SECTOR, "count");
    if (bad) return Promise.reject(bad);
    if ((this.info.transmissionFlags & FLAG_SEND_WRITE_ZEROES) === 0) {
      return this.#zeroByWriting(sector, count);
    }
    // proto.md "Command flags": NO_HOLE SHOULD be set if the client wants no hole created.
    return this.#effect(CMD_WRITE_ZEROES, unmap ? 0 : CMD_FLAG_NO_HOLE, sector, count);
  }

  /**
   * Wait for the requests in flight (at most `closeTimeoutMs`), send NBD_CMD_DISC (the soft
   * disconnect) and close the connection. Requests still unanswered when the wait ends reject
   * with BackendError "closed" and the connection is dropped without DISC. Later calls reject
   * with BackendError "closed". Always settles; idempotent.
   * @see NBD proto.md "Terminating the transmission phase" (the client SHOULD wait until no
   *   requests are in flight)
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#pending.size > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#idle = resolve;
        if (this.#closeTimeout === 0) resolve();
        else timer = setTimeout(resolve, this.#closeTimeout);
      });
      clearTimeout(timer);
      this.#idle = undefined;
      if (this.#pending.size > 0) {
        this.#fail(
          new BackendError(
            "closed",
            `NBD disk ${this.#what} closed with ${this.#pending.size} request(s) unanswered after ${this.#closeTimeout} ms`,
          ),
        );
      }
    }
    clearTimeout(this.#watchdog);
    if (this.#broken === undefined && this.#socket.writable) {
      // proto.md "NBD_CMD_DISC": offset and length MUST be zero; there is no reply, and the
      // client MUST NOT send anything afterwards.
      await new Promise<void>((resolve) => {
        this.#socket.end(requestHeader(0, CMD_DISC, this.#nextCookie++, 0, 0), () => resolve());
      });
    }
    this.#socket.destroy();
  }

  /** Requests sent and not yet answered. */
  get inFlight(): number {
    return this.#pending.size;
  }

  async #transfer(type: number, sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    const len = totalLength(iovecs);
    const bad = this.#range(sector, len, "iovecs");
    if (bad) throw bad;
    if (len <= this.#maxPayload) return this.#submit(type, 0, sector * SECTOR, len, iovecs);
    // Split at the maximum payload; wait for every piece (the iovecs stay in use until the
    // last reply) before settling.
    const parts: Promise<void>[] = [];
    for (let at = 0; at < len; at += this.#maxPayload) {
      const n = Math.min(this.#maxPayload, len - at);
      parts.push(this.#submit(type, 0, sector * SECTOR + at, n, sliceViews(iovecs, at, n)));
    }
    await settleAll(parts);
  }

  async #effect(type: number, flags: number, sector: number, count: number): Promise<void> {
    const parts: Promise<void>[] = [];
    const len = count * SECTOR;
    for (let at = 0; at < len; at += MAX_EFFECT) {
      parts.push(
        this.#submit(type, flags, sector * SECTOR + at, Math.min(MAX_EFFECT, len - at), undefined),
      );
    }
    await settleAll(parts);
  }

  async #zeroByWriting(sector: number, count: number): Promise<void> {
    this.#zeroes ??= new Uint8Array(Math.min(ZERO_CHUNK, this.#maxPayload));
    const z = this.#zeroes;
    const perChunk = z.length / SECTOR;
    const parts: Promise<void>[] = [];
    for (let s = 0; s < count; s += perChunk) {
      const n = Math.min(perChunk, count - s);
      parts.push(
        this.#submit(CMD_WRITE, 0, (sector + s) * SECTOR, n * SECTOR, [z.subarray(0, n * SECTOR)]),
      );
    }
    await settleAll(parts);
  }

  #submit(
    type: number,
    flags: number,
    offset: number,
    length: number,
    iovecs: readonly Uint8Array[] | undefined,
  ): Promise<void> {
    const unusable = this.#unusable();
    if (unusable) return Promise.reject(unusable);
    // Cookies only need to be distinct among requests in flight (proto.md "Transmission"); a
    // counter below 2^53 never repeats in practice.
    const cookie = this.#nextCookie++;
    return new Promise<void>((resolve, reject) => {
      this.#pending.set(cookie, {
        type,
        iovecs: type === CMD_READ ? iovecs : undefined,
        sentAt: this.#requestTimeout > 0 ? performance.now() : 0,
        resolve,
        reject,
      });
      if (this.#requestTimeout > 0 && this.#watchdog === undefined) {
        this.#watchdog = setTimeout(() => this.#checkTimeout(), this.#requestTimeout);
      }
      const s = this.#socket;
      s.cork();
      s.write(requestHeader(flags, type, cookie, offset, length));
      if (type === CMD_WRITE && iovecs) for (const v of iovecs) if (v.length > 0) s.write(v);
      s.uncork();
    });
  }

  async #replyLoop(): Promise<void> {
    const header = new Uint8Array(16);
    const h = dv(header);
    try {
      for (;;) {
        if (!(await this.#reader.hasMore())) {
          // After our DISC (close, or NBD_ESHUTDOWN) the server closing is the expected end.
          if ((this.#closed || this.#broken !== undefined) && this.#pending.size === 0) {
            this.#socket.destroy();
            return;
          }
          throw new NbdError("truncated", "the server closed the connection");
        }
        await this.#reader.readInto([header]);
        // proto.md "Simple reply message": 32-bit magic, 32-bit error, 64-bit cookie.
        const magic = h.getUint32(0);
        if (magic !== SIMPLE_REPLY_MAGIC) {
          throw new NbdError(
            "bad-magic",
            `reply magic 0x${magic.toString(16)} is not NBD_SIMPLE_REPLY_MAGIC`,
            magic,
          );
        }
        const error = h.getUint32(4);
        const cookie = u64(h, 8);
        const p = cookie < 0 ? undefined : this.#pending.get(cookie);
        if (p === undefined) {
          throw new NbdError(
            "unknown-cookie",
            `reply for cookie ${h.getBigUint64(8)} that is not in flight`,
            h.getBigUint64(8),
          );
        }
        if (error !== 0) {
          // proto.md "NBD_CMD_READ" (simple replies): after an error the server MUST NOT send
          // payload (or hard-disconnects).
          this.#pending.delete(cookie);
          p.reject(this.#errorReply(p.type, error));
          if (error === NBD_ESHUTDOWN && this.#broken === undefined) {
            // proto.md "Terminating the transmission phase": a client receiving NBD_ESHUTDOWN
            // MUST initiate a soft disconnect. Refuse new requests; DISC once idle.
            this.#broken = new BackendError("io", `NBD server ${this.#what} is shutting down`);
            this.#discWhenIdle = true;
          }
        } else {
          // The request stays pending until its data is in: a server that closes in the middle
          // of the data fails it together with the others (in #fail).
          if (p.iovecs) await this.#reader.readInto(p.iovecs);
          this.#pending.delete(cookie);
          p.resolve();
        }
        this.#checkIdle();
      }
    } catch (e) {
      this.#fail(e);
    }
  }

  /** The oldest request has waited `requestTimeoutMs`: fail the connection, or re-arm. */
  #checkTimeout(): void {
    this.#watchdog = undefined;
    const oldest = this.#pending.values().next().value;
    if (oldest === undefined) return;
    const waited = performance.now() - oldest.sentAt;
    if (waited >= this.#requestTimeout) {
      this.#fail(
        new NbdError(
          "timeout",
          `no reply to ${CMD_NAMES[oldest.type] ?? oldest.type} in ${this.#requestTimeout} ms`,
          this.#requestTimeout,
        ),
      );
      return;
    }
    this.#watchdog = setTimeout(() => this.#checkTimeout(), this.#requestTimeout - waited);
  }

  #fail(e: unknown): void {
    clearTimeout(this.#watchdog);
    this.#watchdog = undefined;
    // The first failure is the one to report: destroying the socket makes the reply loop fail
    // again with "truncated", which says less.
    if (!this.#failed) {
      this.#failed = true;
      const err = asBackendError(e, `NBD connection to ${this.#what} failed`);
      this.#broken =
        err.code === "io" || err.code === "closed"
          ? err
          : new BackendError("io", err.message, { cause: e });
    }
    this.#socket.destroy();
    const all = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of all) p.reject(this.#broken!);
    this.#checkIdle();
  }

  #checkIdle(): void {
    if (this.#pending.size === 0 && this.#discWhenIdle) {
      this.#discWhenIdle = false;
      this.#socket.end(requestHeader(0, CMD_DISC, this.#nextCookie++, 0, 0));
    }
    if (this.#pending.size === 0 && this.#watchdog !== undefined) {
      clearTimeout(this.#watchdog);
      this.#watchdog = undefined;
    }
    if (this.#pending.size === 0 && this.#idle) {
      const f = this.#idle;
      this.#idle = undefined;
      f();
    }
  }

  #errorReply(type: number, error: number): BackendError {
    const name = ERRNO_NAMES.get(error) ?? `error ${error}`;
    // proto.md "Error values": an unexpected value is treated as NBD_EINVAL, not a disconnect.
    const code: BackendErrorCode = error === NBD_EPERM ? "permission" : "io";
    return new BackendError(
      code,
      `NBD server ${this.#what} failed ${CMD_NAMES[type] ?? type}: ${name}`,
    );
  }

  #unusable(): BackendError | undefined {
    if (this.#closed) return new BackendError("closed", `NBD disk ${this.#what} is closed`);
    return this.#broken;
  }

  #check(): Promise<void> {
    const u = this.#unusable();
    return u ? Promise.reject(u) : Promise.resolve();
  }

  #range(sector: number, len: number, what: string): BackendError | undefined {
    const u = this.#unusable();
    if (u) return u;
    if (
      !Number.isSafeInteger(sector) ||
      sector < 0 ||
      len % SECTOR !== 0 ||
      !Number.isSafeInteger(len) ||
      len < 0 ||
      sector > this.capacity ||
      len / SECTOR > this.capacity - sector
    ) {
      return new BackendError(
        "out-of-range",
        `${what}: ${len} bytes at sector ${sector} pass the capacity of ${this.#what} (${this.capacity} sectors)`,
      );
    }
    return undefined;
  }

  #readOnlyError(): BackendError {
    return (
      this.#unusable() ?? new BackendError("read-only", `NBD export at ${this.#what} is read-only`)
    );
  }
}

const CMD_NAMES: Record<number, string> = {
  [CMD_READ]: "NBD_CMD_READ",
  [CMD_WRITE]: "NBD_CMD_WRITE",
  [CMD_FLUSH]: "NBD_CMD_FLUSH",
  [CMD_TRIM]: "NBD_CMD_TRIM",
  [CMD_WRITE_ZEROES]: "NBD_CMD_WRITE_ZEROES",
};

/** proto.md "Request message": magic, flags, type, cookie, offset, length (28 bytes). */
function requestHeader(
  flags: number,
  type: number,
  cookie: number,
  offset: number,
  length: number,
): Uint8Array {
  const b = new Uint8Array(28);
  const v = dv(b);
  v.setUint32(0, REQUEST_MAGIC);
  v.setUint16(4, flags);
  v.setUint16(6, type);
  setU64(v, 8, cookie);
  setU64(v, 16, offset);
  v.setUint32(24, length);
  return b;
}

function timeoutOption(options: NbdDiskOptions, name: keyof NbdDiskOptions, dflt: number): number {
  const v = options[name] ?? dflt;
  if (!Number.isSafeInteger(v) || v < 0 || v > 2 ** 31 - 1) {
    throw new RangeError(`options.${name} must be an integer in 0..2147483647, got ${v}`);
  }
  return v;
}

async function settleAll(parts: readonly Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(parts);
  for (const r of results) if (r.status === "rejected") throw r.reason;
}

function describeAddress(address: NbdAddress): string {
  if (typeof address !== "object" || address === null) {
    throw new TypeError("address must be { host, port } or { path }");
  }
  if ("path" in address) {
    if (typeof address.path !== "string" || address.path === "") {
      throw new TypeError("address.path must be a non-empty string");
    }
    return `unix:${address.path}`;
  }
  if (typeof address.host !== "string" || address.host === "") {
    throw new TypeError("address.host must be a non-empty string");
  }
  if (!Number.isInteger(address.port) || address.port < 1 || address.port > 65535) {
    throw new RangeError(`address.port must be an integer in 1..65535, got ${address.port}`);
  }
  return `${address.host}:${address.port}`;
}

function openSocket(address: NbdAddress, what: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s =
      "path" in address
        ? netConnect({ path: address.path })
        : netConnect({ host: address.host, port: address.port });
    const onError = (e: NodeJS.ErrnoException) => {
      const code: BackendErrorCode =
        e.code === "ENOENT" || e.code === "ECONNREFUSED" ? "not-found" : "io";
      reject(
        new BackendError(code, `cannot connect to NBD server ${what}: ${e.message}`, { cause: e }),
      );
    };
    s.once("error", onError);
    s.once("connect", () => {
      s.off("error", onError);
      resolve(s);
    });
  });
}

function asBackendError(e: unknown, context: string): BackendError {
  if (e instanceof BackendError) return e;
  const detail = e instanceof Error ? e.message : String(e);
  let code: BackendErrorCode = "io";
  if (e instanceof NbdError && e.code === "refused") {
    if (e.value === REP_ERR_UNKNOWN) code = "not-found";
    else if (e.value === REP_ERR_POLICY || e.value === REP_ERR_TLS_REQD) code = "permission";
  }
  return new BackendError(code, `${context}: ${detail}`, { cause: e });
}

/**
 * The client half of the fixed newstyle handshake, ending in transmission.
 * @see NBD proto.md "Newstyle negotiation", "Fixed newstyle negotiation", "Option types"
 */
async function handshake(
  socket: Socket,
  reader: ByteReader,
  name: Uint8Array,
): Promise<NbdExportInfo> {
  const hello = dv(await reader.read(18));
  const magic = hello.getBigUint64(0);
  if (magic !== NBDMAGIC) {
    throw new NbdError(
      "bad-magic",
      `server greeting 0x${magic.toString(16)} is not NBDMAGIC`,
      magic,
    );
  }
  const opt = hello.getBigUint64(8);
  if (opt !== IHAVEOPT) {
    // 0x00420281861253 is the oldstyle handshake, which we do not speak.
    throw new NbdError(
      "bad-magic",
      `server sent 0x${opt.toString(16)} instead of IHAVEOPT (oldstyle servers are not supported)`,
      opt,
    );
  }
  const hsFlags = hello.getUint16(16);
  const fixed = (hsFlags & FLAG_FIXED_NEWSTYLE) !== 0;
  // proto.md "Client flags": NO_ZEROES MUST NOT be set unless the server set it; the client
  // SHOULD ignore handshake flags it does not know.
  const noZeroes = (hsFlags & FLAG_NO_ZEROES) !== 0;
  const clientFlags = new Uint8Array(4);
  dv(clientFlags).setUint32(
    0,
    (fixed ? FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? FLAG_C_NO_ZEROES : 0),
  );
  socket.write(clientFlags);

  if (fixed) {
    const go = await optGo(socket, reader, name);
    if (go) return go;
    // proto.md "NBD_OPT_EXPORT_NAME": a client SHOULD fall back to it if NBD_OPT_GO is
    // unsupported.
  }
  // proto.md "Newstyle negotiation": NBD_OPT_EXPORT_NAME is answered by size, flags and
  // (unless NO_ZEROES) 124 zero bytes; an unknown export makes the server close the connection.
  socket.write(option(OPT_EXPORT_NAME, name));
  const r = dv(await reader.read(10 + (noZeroes ? 0 : 124)));
  const size = u64(r, 0);
  if (size < 0) throw new NbdError("too-long", "export size above 2^53 bytes", r.getBigUint64(0));
  return { size, transmissionFlags: r.getUint16(8), blockSizes: undefined, viaGo: false };
}

/** NBD_OPT_GO with an NBD_INFO_BLOCK_SIZE request; undefined if the server answers ERR_UNSUP. */
async function optGo(
  socket: Socket,
  reader: ByteReader,
  name: Uint8Array,
): Promise<NbdExportInfo | undefined> {
  // proto.md "NBD_OPT_INFO and NBD_OPT_GO": 32-bit name length, name, 16-bit count of
  // information requests, 16 bits each. We ask for NBD_INFO_BLOCK_SIZE, promising to honour it.
  const data = new Uint8Array(4 + name.length + 2 + 2);
  const d = dv(data);
  d.setUint32(0, name.length);
  data.set(name, 4);
  d.setUint16(4 + name.length, 1);
  d.setUint16(6 + name.length, INFO_BLOCK_SIZE);
  socket.write(option(OPT_GO, data));
  let exp: { size: number; flags: number } | undefined;
  let blockSizes: NbdExportInfo["blockSizes"];
  for (;;) {
    const h = dv(await reader.read(20));
    const magic = h.getBigUint64(0);
    if (magic !== OPT_REPLY_MAGIC) {
      throw new NbdError("bad-magic", `option reply magic 0x${magic.toString(16)} is wrong`, magic);
    }
    const opt = h.getUint32(8);
    const type = h.getUint32(12);
    const len = h.getUint32(16);
    if (opt !== OPT_GO)
      throw new NbdError("protocol", `reply to option ${opt}, expected NBD_OPT_GO`, opt);
    if (len > MAX_OPTION_LENGTH) {
      throw new NbdError(
        "too-long",
        `option reply of ${len} bytes exceeds ${MAX_OPTION_LENGTH}`,
        len,
      );
    }
    const body = await reader.read(len);
    const b = dv(body);
    if (type === REP_INFO) {
      if (len < 2) throw new NbdError("protocol", "NBD_REP_INFO shorter than 2 bytes", len);
      const info = b.getUint16(0);
      // proto.md "NBD_REP_INFO": the client MUST ignore information types it does not know.
      if (info === INFO_EXPORT) {
        if (len !== 12)
          throw new NbdError("protocol", `NBD_INFO_EXPORT of length ${len}, expected 12`, len);
        const size = u64(b, 2);
        if (size < 0)
          throw new NbdError("too-long", "export size above 2^53 bytes", b.getBigUint64(2));
        exp = { size, flags: b.getUint16(10) };
      } else if (info === INFO_BLOCK_SIZE) {
        if (len !== 14)
          throw new NbdError("protocol", `NBD_INFO_BLOCK_SIZE of length ${len}, expected 14`, len);
        blockSizes = {
          minimum: b.getUint32(2),
          preferred: b.getUint32(6),
          maximumPayload: b.getUint32(10),
        };
      }
    } else if (type === REP_ACK) {
      // proto.md "NBD_REP_INFO": the server MUST send NBD_INFO_EXPORT before NBD_REP_ACK.
      if (!exp) throw new NbdError("protocol", "NBD_REP_ACK to NBD_OPT_GO without NBD_INFO_EXPORT");
      return { size: exp.size, transmissionFlags: exp.flags, blockSizes, viaGo: true };
    } else if (type === REP_ERR_UNSUP) {
      return undefined;
    } else if ((type & REP_FLAG_ERROR) !== 0) {
      // proto.md "Option reply types": error data, if any, is a message for the user.
      const text = new TextDecoder().decode(body.subarray(0, Math.min(len, MAX_STRING)));
      // Soft disconnect (proto.md "Termination of the session during option haggling").
      socket.end(option(OPT_ABORT, new Uint8Array(0)));
      const label = REP_ERR_NAMES.get(type) ?? `error reply 0x${type.toString(16)}`;
      throw new NbdError("refused", `server refused: ${label}${text ? ` (${text})` : ""}`, type);
    } else {
      throw new NbdError("protocol", `unexpected reply type ${type} to NBD_OPT_GO`, type);
    }
  }
}

/** proto.md "Newstyle negotiation": IHAVEOPT, 32-bit option, 32-bit length, data. */
function option(opt: number, data: Uint8Array): Uint8Array {
  const b = new Uint8Array(16 + data.length);
  const v = dv(b);
  v.setBigUint64(0, IHAVEOPT);
  v.setUint32(8, opt);
  v.setUint32(12, data.length);
  b.set(data, 16);
  return b;
}
