import { type AddressInfo, createServer, type Server, type Socket } from "node:net";
import { BackendError, type BlockBackend } from "@virtio-ts/devices";
import type { NbdAddress } from "./nbd-disk.js";
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
  FLAG_C_FIXED_NEWSTYLE,
  FLAG_C_NO_ZEROES,
  FLAG_CAN_MULTI_CONN,
  FLAG_FIXED_NEWSTYLE,
  FLAG_HAS_FLAGS,
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
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOSPC,
  NBD_EPERM,
  NBDMAGIC,
  NbdError,
  OPT_ABORT,
  OPT_EXPORT_NAME,
  OPT_GO,
  OPT_INFO,
  OPT_LIST,
  OPT_REPLY_MAGIC,
  REP_ACK,
  REP_ERR_INVALID,
  REP_ERR_UNKNOWN,
  REP_ERR_UNSUP,
  REP_INFO,
  REP_SERVER,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  setU64,
  u64,
} from "./nbd-wire.js";

const SECTOR = 512;
/** Largest TRIM / WRITE_ZEROES range handed to the back-end in one call. */
const MAX_EFFECT_CHUNK = 1 << 30;

/** Options of an {@link NbdServer}. */
export interface NbdServerOptions {
  /**
   * The exports by name (the empty name is the default export a client gets with ""). The
   * same back-end may appear under several names.
   */
  readonly exports: ReadonlyMap<string, BlockBackend> | Readonly<Record<string, BlockBackend>>;
  /**
   * Requests one connection may have in flight at the back-end; further requests wait in the
   * socket (TCP flow control). Default 64.
   */
  readonly maxInFlight?: number;
  /**
   * Payload bytes (write data received, read data to send) one connection may hold at once.
   * At least 32 MiB (one maximal request). Default 64 MiB.
   */
  readonly maxBufferedBytes?: number;
  /**
   * Called when a connection ends because the client broke the protocol (bad magic, an oversize
   * length, unknown client flags, a truncated message) or its socket failed. Only that
   * connection is closed. Default: ignore.
   */
  readonly onConnectionError?: (error: NbdError | Error) => void;
}

/**
 * Exports `BlockBackend`s over NBD, to qemu (`nbd://host:port/name`), the Linux `nbd` driver,
 * nbd-client or {@link NbdDisk}. Fixed newstyle handshake with NBD_OPT_GO, NBD_OPT_INFO,
 * NBD_OPT_LIST, NBD_OPT_ABORT and the old NBD_OPT_EXPORT_NAME; other options get
 * NBD_REP_ERR_UNSUP. Transmission uses simple replies: READ, WRITE, FLUSH, TRIM, WRITE_ZEROES
 * and DISC; requests run concurrently at the back-end and are answered as they complete.
 *
 * Limits (announced through NBD_INFO_BLOCK_SIZE): minimum block size 512 (requests not aligned
 * to it fail with NBD_EINVAL), preferred the back-end's `blockSize`, maximum payload 32 MiB.
 * A WRITE announcing more than 32 MiB closes the connection (its payload cannot be skipped
 * cheaply); a READ asking for more fails with NBD_EINVAL. Each connection holds at most
 * `maxInFlight` requests and `maxBufferedBytes` payload bytes; past that it stops reading the
 * socket until requests complete.
 *
 * Errors: ranges past the end fail with NBD_ENOSPC (WRITE, WRITE_ZEROES) or NBD_EINVAL (READ,
 * TRIM), writes to a read-only export with NBD_EPERM, back-end rejections with NBD_EIO, unknown
 * commands or flags with NBD_EINVAL. A protocol violation closes only the offending connection.
 *
 * Durability: a WRITE is answered only after the back-end's `write` resolved; NBD_CMD_FLUSH is
 * the back-end's `flush`. NBD_FLAG_CAN_MULTI_CONN is set because all connections share the one
 * back-end, whose `flush` covers every completed write.
 *
 * @example
 * ```ts
 * const server = new NbdServer({ exports: { disk0: await FileDisk.open("disk.img") } });
 * const { port } = await server.listen({ host: "127.0.0.1", port: 0 });
 * // qemu-io -f raw -c 'read -v 0 512' nbd://127.0.0.1:$port/disk0
 * await server.close();
 * ```
 * @see NBD proto.md "Fixed newstyle negotiation", "Option types", "Transmission", "Error values"
 */
export class NbdServer {
  readonly #exports: ReadonlyMap<string, BlockBackend>;
  readonly #maxInFlight: number;
  readonly #maxBuffered: number;
  readonly #onError: (error: NbdError | Error) => void;
  readonly #connections = new Set<Connection>();
  #server: Server | undefined = undefined;

  /**
   * @param options - exports and per-connection limits
   * @throws TypeError naming `options.exports`; RangeError naming `options.maxInFlight`,
   *   `options.maxBufferedBytes` or an export name longer than 4096 UTF-8 bytes
   */
  constructor(options: NbdServerOptions) {
    const ex = options?.exports;
    if (typeof ex !== "object" || ex === null) {
      throw new TypeError("options.exports must be a Map or a record of BlockBackends");
    }
    const map = new Map(ex instanceof Map ? ex : Object.entries(ex));
    for (const [name, b] of map) {
      if (new TextEncoder().encode(name).length > MAX_STRING) {
        throw new RangeError(
          `options.exports: export name "${name.slice(0, 32)}…" is longer than 4096 bytes`,
        );
      }
      if (typeof b !== "object" || b === null || typeof b.read !== "function") {
        throw new TypeError(`options.exports["${name}"] must be a BlockBackend`);
      }
    }
    const inFlight = options.maxInFlight ?? 64;
    if (!Number.isSafeInteger(inFlight) || inFlight < 1) {
      throw new RangeError(`options.maxInFlight must be a positive integer, got ${inFlight}`);
    }
    const buffered = options.maxBufferedBytes ?? 2 * MAX_PAYLOAD;
    if (!Number.isSafeInteger(buffered) || buffered < MAX_PAYLOAD) {
      throw new RangeError(
        `options.maxBufferedBytes must be an integer of at least ${MAX_PAYLOAD}, got ${buffered}`,
      );
    }
    this.#exports = map;
    this.#maxInFlight = inFlight;
    this.#maxBuffered = buffered;
    this.#onError = options.onConnectionError ?? (() => {});
  }

  /** Connections currently open. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /**
   * Start listening on TCP (`port` 0 picks a free port) or a unix socket.
   * @returns the TCP address (with the port chosen for port 0), or the unix path
   * @throws RangeError/TypeError naming `address`; the listen error (EADDRINUSE, …) as a rejection
   */
  listen(address: NbdAddress): Promise<AddressInfo | string> {
    if (this.#server) return Promise.reject(new Error("NbdServer is already listening"));
    if (typeof address !== "object" || address === null) {
      return Promise.reject(new TypeError("address must be { host, port } or { path }"));
    }
    if (!("path" in address)) {
      if (!Number.isInteger(address.port) || address.port < 0 || address.port > 65535) {
        return Promise.reject(
          new RangeError(`address.port must be an integer in 0..65535, got ${address.port}`),
        );
      }
    } else if (typeof address.path !== "string" || address.path === "") {
      return Promise.reject(new TypeError("address.path must be a non-empty string"));
    }
    const server = createServer((socket) => this.#accept(socket));
    this.#server = server;
    return new Promise((resolve, reject) => {
      server.once("error", reject);
      const done = () => {
        server.off("error", reject);
        server.on("error", (e) => this.#onError(e));
        const a = server.address();
        resolve(a ?? "");
      };
      if ("path" in address) server.listen(address.path, done);
      else server.listen(address.port, address.host, done);
    });
  }

  /**
   * Stop accepting connections, let requests in flight at the back-ends finish, then close every
   * connection (a hard disconnect, as proto.md "Terminating the transmission phase" allows on
   * server shutdown). Resolves when the listener is closed. Idempotent.
   */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    const closed = server
      ? new Promise<void>((resolve) => server.close(() => resolve()))
      : Promise.resolve();
    await Promise.all([...this.#connections].map((c) => c.shutdown()));
    await closed;
  }

  #accept(socket: Socket): void {
    const c = new Connection(socket, this.#exports, this.#maxInFlight, this.#maxBuffered);
    this.#connections.add(c);
    c.run().then(
      () => this.#connections.delete(c),
      (e: unknown) => {
        this.#connections.delete(c);
        this.#onError(e instanceof Error ? e : new Error(String(e)));
      },
    );
  }
}

/** One client: handshake, then the transmission loop. */
class Connection {
  readonly #socket: Socket;
  readonly #reader: ByteReader;
  readonly #exports: ReadonlyMap<string, BlockBackend>;
  readonly #maxInFlight: number;
  readonly #maxBuffered: number;
  #inFlight = 0;
  #bufferedBytes = 0;
  #waiters: (() => void)[] = [];
  #stopping = false;

  constructor(
    socket: Socket,
    exports: ReadonlyMap<string, BlockBackend>,
    maxInFlight: number,
    maxBuffered: number,
  ) {
    this.#socket = socket;
    this.#reader = new ByteReader(socket, 256 * 1024);
    this.#exports = exports;
    this.#maxInFlight = maxInFlight;
    this.#maxBuffered = maxBuffered;
    socket.on("error", () => {}); // surfaces as a truncated read in run()
    socket.on("drain", () => this.#notify());
    socket.on("close", () => this.#notify());
    socket.setNoDelay(true);
  }

  /** Serve until the client disconnects; rejects (after closing the socket) on a violation. */
  async run(): Promise<void> {
    try {
      const exp = await this.#handshake();
      if (exp) await this.#transmission(exp.backend);
      await this.#drainInFlight();
      this.#socket.end();
    } catch (e) {
      this.#socket.destroy();
      // A shutdown closes sockets on purpose; that is not the client's fault.
      if (!this.#stopping) throw e;
    }
  }

  async shutdown(): Promise<void> {
    this.#stopping = true;
    await this.#drainInFlight();
    this.#socket.destroy();
  }

  /**
   * Server half of the fixed newstyle handshake. Returns the export chosen by NBD_OPT_GO or
   * NBD_OPT_EXPORT_NAME, or undefined after NBD_OPT_ABORT / a clean close.
   * @see NBD proto.md "Newstyle negotiation", "Fixed newstyle negotiation"
   */
  async #handshake(): Promise<{ backend: BlockBackend } | undefined> {
    const hello = new Uint8Array(18);
    const h = dv(hello);
    h.setBigUint64(0, NBDMAGIC);
    h.setBigUint64(8, IHAVEOPT);
    // proto.md "Handshake flags": FIXED_NEWSTYLE MUST be set by fixed-newstyle servers.
    h.setUint16(16, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    this.#socket.write(hello);
    const cf = dv(await this.#reader.read(4)).getUint32(0);
    // proto.md "Client flags": the server MUST drop the connection on an unknown flag.
    if ((cf & ~(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)) !== 0) {
      throw new NbdError("protocol", `unknown client flags 0x${cf.toString(16)}`, cf);
    }
    const noZeroes = (cf & FLAG_C_NO_ZEROES) !== 0;
    for (;;) {
      if (!(await this.#reader.hasMore())) return undefined;
      const oh = dv(await this.#reader.read(16));
      const magic = oh.getBigUint64(0);
      if (magic !== IHAVEOPT) {
        throw new NbdError(
          "bad-magic",
          `option magic 0x${magic.toString(16)} is not IHAVEOPT`,
          magic,
        );
      }
      const opt = oh.getUint32(8);
      const len = oh.getUint32(12);
      // Any valid option is far below 64 KiB (a 4096-byte name plus a few info requests); a
      // larger length is a denial-of-service attempt (proto.md "Termination of the session
      // during option haggling": the server MAY hard-disconnect such a client).
      if (len > MAX_OPTION_LENGTH) {
        throw new NbdError(
          "too-long",
          `option ${opt} with ${len} bytes of data exceeds ${MAX_OPTION_LENGTH}`,
          len,
        );
      }
      const data = await this.#reader.read(len);
      switch (opt) {
        case OPT_EXPORT_NAME: {
          const backend = this.#exports.get(decodeName(data));
          // proto.md "NBD_OPT_EXPORT_NAME": an unknown export MUST terminate the session.
          if (!backend)
            throw new NbdError(
              "refused",
              `NBD_OPT_EXPORT_NAME for unknown export "${decodeName(data)}"`,
            );
          // Size, flags, and 124 zero bytes unless NO_ZEROES (proto.md "Newstyle negotiation").
          const r = new Uint8Array(10 + (noZeroes ? 0 : 124));
          setU64(dv(r), 0, backend.capacity * SECTOR);
          dv(r).setUint16(8, transmissionFlags(backend));
          this.#socket.write(r);
          return { backend };
        }
        case OPT_ABORT:
          // proto.md "NBD_OPT_ABORT": the server MUST reply with NBD_REP_ACK.
          this.#optReply(opt, REP_ACK);
          return undefined;
        case OPT_LIST: {
          // proto.md "NBD_OPT_LIST": data SHOULD be rejected with NBD_REP_ERR_INVALID.
          if (len !== 0) {
            this.#optReply(opt, REP_ERR_INVALID, utf8("NBD_OPT_LIST takes no data"));
            break;
          }
          for (const name of this.#exports.keys()) {
            const n = utf8(name);
            const body = new Uint8Array(4 + n.length);
            dv(body).setUint32(0, n.length);
            body.set(n, 4);
            this.#optReply(opt, REP_SERVER, body);
          }
          this.#optReply(opt, REP_ACK);
          break;
        }
        case OPT_INFO:
        case OPT_GO: {
          const backend = this.#infoOrGo(opt, data);
          if (backend && opt === OPT_GO) return { backend };
          break;
        }
        default:
          // proto.md "Fixed newstyle negotiation": unknown options get NBD_REP_ERR_UNSUP.
          this.#optReply(opt, REP_ERR_UNSUP, utf8(`option ${opt} is not supported`));
      }
    }
  }

  /** proto.md "NBD_OPT_INFO and NBD_OPT_GO". Returns the export after a successful reply. */
  #infoOrGo(opt: number, data: Uint8Array): BlockBackend | undefined {
    const d = dv(data);
    // Name length MUST be no larger than the option data length − 6; the rest is 16-bit info
    // requests.
    const nameLen = data.length >= 4 ? d.getUint32(0) : -1;
    if (nameLen < 0 || nameLen > data.length - 6 || (data.length - 6 - nameLen) % 2 !== 0) {
      this.#optReply(opt, REP_ERR_INVALID, utf8("malformed NBD_OPT_INFO/GO data"));
      return undefined;
    }
    const count = d.getUint16(4 + nameLen);
    if (count * 2 !== data.length - 6 - nameLen) {
      this.#optReply(
        opt,
        REP_ERR_INVALID,
        utf8("information request count does not match the length"),
      );
      return undefined;
    }
    const name = decodeName(data.subarray(4, 4 + nameLen));
    const backend = this.#exports.get(name);
    if (!backend) {
      // proto.md: NBD_REP_ERR_UNKNOWN, and SHOULD NOT send NBD_REP_INFO.
      this.#optReply(opt, REP_ERR_UNKNOWN, utf8(`no export named "${name.slice(0, 256)}"`));
      return undefined;
    }
    // NBD_INFO_EXPORT is mandatory before NBD_REP_ACK: type, 64-bit size, 16-bit flags.
    const info = new Uint8Array(12);
    dv(info).setUint16(0, INFO_EXPORT);
    setU64(dv(info), 2, backend.capacity * SECTOR);
    dv(info).setUint16(10, transmissionFlags(backend));
    this.#optReply(opt, REP_INFO, info);
    // NBD_INFO_BLOCK_SIZE (sent even unrequested, which the server MAY do): our minimum of 512
    // is not the default of 1, so a client that asked for it MUST honour it ("Size
    // constraints"); others get NBD_EINVAL for unaligned requests.
    const bs = new Uint8Array(14);
    const b = dv(bs);
    b.setUint16(0, INFO_BLOCK_SIZE);
    b.setUint32(2, SECTOR);
    b.setUint32(6, Math.max(SECTOR, Math.min(backend.blockSize, MAX_PAYLOAD)));
    b.setUint32(10, MAX_PAYLOAD);
    this.#optReply(opt, REP_INFO, bs);
    this.#optReply(opt, REP_ACK);
    return backend;
  }

  /** proto.md "Fixed newstyle negotiation": magic, option, reply type, length, data. */
  #optReply(opt: number, type: number, data: Uint8Array = new Uint8Array(0)): void {
    const b = new Uint8Array(20 + data.length);
    const v = dv(b);
    v.setBigUint64(0, OPT_REPLY_MAGIC);
    v.setUint32(8, opt);
    v.setUint32(12, type);
    v.setUint32(16, data.length);
    b.set(data, 20);
    this.#socket.write(b);
  }

  /** @see NBD proto.md "Transmission", "Request message", "Request types" */
  async #transmission(backend: BlockBackend): Promise<void> {
    const header = new Uint8Array(28);
    const h = dv(header);
    const size = backend.capacity * SECTOR;
    for (;;) {
      // A client that drops the connection between requests is a (hard) disconnect, not a
      // violation.
      if (!(await this.#reader.hasMore())) return;
      await this.#reader.readInto([header]);
      const magic = h.getUint32(0);
      if (magic !== REQUEST_MAGIC) {
        throw new NbdError(
          "bad-magic",
          `request magic 0x${magic.toString(16)} is not NBD_REQUEST_MAGIC`,
          magic,
        );
      }
      const flags = h.getUint16(4);
      const type = h.getUint16(6);
      const cookie = header.slice(8, 16);
      const offset = u64(h, 16); // -1 when above 2^53: out of range anyway
      const length = h.getUint32(24);

      if (type === CMD_DISC) return; // proto.md "NBD_CMD_DISC": finish in-flight, then close.
      if (type === CMD_WRITE && length > MAX_PAYLOAD) {
        throw new NbdError(
          "too-long",
          `NBD_CMD_WRITE of ${length} bytes exceeds the 32 MiB maximum payload`,
          length,
        );
      }
      const payload =
        type === CMD_WRITE || (type === CMD_READ && length <= MAX_PAYLOAD) ? length : 0;
      await this.#admit(payload);
      const data = type === CMD_WRITE ? await this.#reader.read(length) : undefined;

      const error = validate(type, flags, offset, length, size, backend.readOnly);
      if (error !== 0) {
        this.#release(payload);
        this.#reply(cookie, error, undefined);
        continue;
      }
      this.#inFlight++;
      void this.#execute(backend, type, flags, offset, length, data).then((result) => {
        this.#inFlight--;
        this.#reply(cookie, result.error, result.data);
        this.#release(payload);
      });
    }
  }

  async #execute(
    backend: BlockBackend,
    type: number,
    flags: number,
    offset: number,
    length: number,
    data: Uint8Array | undefined,
  ): Promise<{ error: number; data: Uint8Array | undefined }> {
    const sector = offset / SECTOR;
    try {
      switch (type) {
        case CMD_READ: {
          const buf = new Uint8Array(length);
          if (length > 0) await backend.read(sector, [buf]);
          return { error: 0, data: buf };
        }
        case CMD_WRITE:
          if (length > 0) await backend.write(sector, [data!]);
          break;
        case CMD_FLUSH:
          await backend.flush();
          break;
        case CMD_TRIM:
          for (let at = 0; at < length; at += MAX_EFFECT_CHUNK) {
            await backend.discard(
              sector + at / SECTOR,
              Math.min(MAX_EFFECT_CHUNK, length - at) / SECTOR,
            );
          }
          break;
        case CMD_WRITE_ZEROES:
          for (let at = 0; at < length; at += MAX_EFFECT_CHUNK) {
            await backend.writeZeroes(
              sector + at / SECTOR,
              Math.min(MAX_EFFECT_CHUNK, length - at) / SECTOR,
              (flags & CMD_FLAG_NO_HOLE) === 0,
            );
          }
          break;
      }
      return { error: 0, data: undefined };
    } catch (e) {
      const code = e instanceof BackendError ? e.code : "io";
      // proto.md "Error values": EPERM for writes to a read-only export, ENOSPC for writes past
      // the end; anything else from the back-end is an I/O error.
      const error =
        code === "read-only" || code === "permission"
          ? NBD_EPERM
          : code === "out-of-range"
            ? type === CMD_READ || type === CMD_TRIM
              ? NBD_EINVAL
              : NBD_ENOSPC
            : NBD_EIO;
      return { error, data: undefined };
    }
  }

  /** proto.md "Simple reply message": magic, error, cookie, then data for a successful READ. */
  #reply(cookie: Uint8Array, error: number, data: Uint8Array | undefined): void {
    const s = this.#socket;
    if (s.destroyed) return;
    const b = new Uint8Array(16);
    const v = dv(b);
    v.setUint32(0, SIMPLE_REPLY_MAGIC);
    v.setUint32(4, error);
    b.set(cookie, 8);
    s.cork();
    s.write(b);
    if (error === 0 && data && data.length > 0) s.write(data);
    s.uncork();
  }

  /** Wait until a request with `payload` bytes fits the in-flight and buffer budgets. */
  async #admit(payload: number): Promise<void> {
    while (
      this.#inFlight >= this.#maxInFlight ||
      (this.#bufferedBytes > 0 && this.#bufferedBytes + payload > this.#maxBuffered) ||
      this.#socket.writableLength > this.#maxBuffered
    ) {
      if (this.#socket.destroyed) throw new NbdError("truncated", "connection closed");
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
      });
    }
    this.#bufferedBytes += payload;
  }

  #release(payload: number): void {
    this.#bufferedBytes -= payload;
    this.#notify();
  }

  #notify(): void {
    const ws = this.#waiters;
    this.#waiters = [];
    for (const w of ws) w();
  }

  async #drainInFlight(): Promise<void> {
    while (this.#inFlight > 0) {
      await new Promise<void>((resolve) => {
        this.#waiters.push(resolve);
      });
    }
  }
}

/**
 * Check a request before it reaches the back-end; 0 if it may run.
 * @see NBD proto.md "Error values", "Command flags", "Size constraints"
 */
function validate(
  type: number,
  flags: number,
  offset: number,
  length: number,
  size: number,
  readOnly: boolean,
): number {
  const isWrite = type === CMD_WRITE || type === CMD_WRITE_ZEROES || type === CMD_TRIM;
  // Flags: NO_HOLE only on WRITE_ZEROES; we advertise neither FUA nor FAST_ZERO, so a client
  // MUST NOT send them ("SHOULD return NBD_EINVAL ... unknown command flag").
  const allowed = type === CMD_WRITE_ZEROES ? CMD_FLAG_NO_HOLE : 0;
  if ((flags & ~allowed) !== 0) return NBD_EINVAL;
  switch (type) {
    case CMD_READ:
    case CMD_WRITE:
    case CMD_TRIM:
    case CMD_WRITE_ZEROES:
      break;
    case CMD_FLUSH:
      // proto.md "NBD_CMD_FLUSH": length and offset are reserved and MUST be zero.
      return offset === 0 && length === 0 ? 0 : NBD_EINVAL;
    default:
      return NBD_EINVAL; // unknown command (CACHE, BLOCK_STATUS, … are not advertised)
  }
  if (isWrite && readOnly) return NBD_EPERM;
  if (type === CMD_READ && length > MAX_PAYLOAD) return NBD_EINVAL;
  // Minimum block size 512 (advertised in NBD_INFO_BLOCK_SIZE): unaligned requests fail.
  if (offset < 0 || offset % SECTOR !== 0 || length % SECTOR !== 0) return NBD_EINVAL;
  if (offset > size || length > size - offset) {
    return type === CMD_WRITE || type === CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
  }
  return 0;
}

/** proto.md "Transmission flags" of an export. */
function transmissionFlags(b: BlockBackend): number {
  return (
    FLAG_HAS_FLAGS |
    FLAG_SEND_FLUSH |
    FLAG_SEND_TRIM |
    FLAG_SEND_WRITE_ZEROES |
    FLAG_CAN_MULTI_CONN |
    (b.readOnly ? FLAG_READ_ONLY : 0)
  );
}

function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function decodeName(b: Uint8Array): string {
  return new TextDecoder().decode(b);
}
