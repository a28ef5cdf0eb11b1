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
/**
 * Payload bytes each connection may hold outside the shared `maxTotalBufferedBytes` budget, so
 * a client doing ordinary I/O is served while others hold the whole budget with large requests.
 */
const CONNECTION_RESERVE = 256 * 1024;
/** Option replies queued unsent before the handshake stops reading options (back-pressure). */
const HANDSHAKE_WRITE_HIGH = 64 * 1024;
/**
 * Requests or payload bytes handled in a row without returning to the event loop; then the
 * connection yields (setImmediate), so other connections, timers and a reset of this one are
 * seen even while its socket holds thousands of pipelined requests.
 */
const YIELD_REQUESTS = 32;
const YIELD_BYTES = 1 << 20;

/** Options of an {@link NbdServer}. */
export interface NbdServerOptions {
  /**
   * The exports by name (the empty name is the default export a client gets with ""). The
   * same back-end may appear under several names.
   */
  readonly exports: ReadonlyMap<string, BlockBackend> | Readonly<Record<string, BlockBackend>>;
  /**
   * Requests one connection may have in flight, from admission until its reply has been handed
   * to the kernel; further requests wait in the socket (TCP flow control). Default 64.
   */
  readonly maxInFlight?: number;
  /**
   * Payload bytes (write data received, read data not yet handed to the kernel) one connection
   * may hold at once. At least 32 MiB (one maximal request). Default 64 MiB.
   */
  readonly maxBufferedBytes?: number;
  /**
   * Payload bytes all connections together may hold at once; a connection waits (and stops
   * reading its socket) until its request fits. Each connection may also hold 256 KiB outside
   * this budget, so small requests are served while large ones wait. At least 32 MiB.
   * Default 256 MiB.
   */
  readonly maxTotalBufferedBytes?: number;
  /**
   * Connections open at once; more are closed at accept and counted (`stats.rejected`).
   * Default 100 (qemu-nbd's default since the fix for CVE-2024-7409).
   */
  readonly maxConnections?: number;
  /**
   * A connection must finish the handshake (reach transmission through NBD_OPT_GO or
   * NBD_OPT_EXPORT_NAME) this many milliseconds after it was accepted, or it is closed: a total
   * deadline, not reset by traffic. Default 10 000 (qemu-nbd's `--handshake-limit`); 0 disables.
   */
  readonly handshakeTimeoutMs?: number;
  /**
   * Close a connection in transmission that has nothing in flight and has sent nothing for this
   * many milliseconds. Default 0 (never: an idle guest disk is normal, and qemu and the Linux
   * nbd driver do not reconnect by default); set it when clients are not trusted.
   */
  readonly idleTimeoutMs?: number;
  /**
   * A WRITE's payload must arrive, and a reply must be taken by the client (handed to the
   * kernel), within this many milliseconds, or the connection is closed and its buffers are
   * freed: a total deadline per message, so a client trickling a 32 MiB payload or reading its
   * replies one byte at a time cannot hold the budget. Time the back-end takes does not count.
   * Default 60 000 (at least 0.5 MiB/s for a 32 MiB message); 0 disables.
   */
  readonly requestTimeoutMs?: number;
  /**
   * Called when a connection ends because the client broke the protocol (bad magic, an oversize
   * length, unknown client flags, a truncated message), missed a deadline (NbdError "timeout")
   * or its socket failed. Only that connection is closed. Default: ignore.
   */
  readonly onConnectionError?: (error: NbdError | Error) => void;
}

/** Counters and gauges of an {@link NbdServer} (a snapshot). Counters only grow. */
export interface NbdServerStats {
  /** Connections open now. */
  readonly connections: number;
  /** Connections accepted. */
  readonly accepted: number;
  /** Connections closed at accept because `maxConnections` were open. */
  readonly rejected: number;
  /** Connections closed for missing `handshakeTimeoutMs`. */
  readonly handshakeTimeouts: number;
  /** Connections closed for staying idle `idleTimeoutMs`. */
  readonly idleTimeouts: number;
  /** Connections closed because a payload or a reply missed `requestTimeoutMs`. */
  readonly requestTimeouts: number;
  /** Connections closed because the client broke the protocol or its socket failed. */
  readonly protocolErrors: number;
  /** Requests executed at a back-end. */
  readonly requests: number;
  /**
   * Requests read from a client that was gone before they ran (reset, closed, timed out):
   * dropped without running.
   */
  readonly abandoned: number;
  /**
   * Bytes (pipelined requests) still buffered from a client that was gone: dropped unread.
   */
  readonly discardedBytes: number;
  /** Payload bytes held now, all connections together (shared budget and reserves). */
  readonly bufferedBytes: number;
  /** The most payload bytes held at once since the server was made. */
  readonly peakBufferedBytes: number;
}

/** The shared payload budget and the server's counters, handed to every connection. */
class Shared {
  readonly maxTotal: number;
  used = 0;
  reserved = 0;
  peak = 0;
  readonly waiters = new Set<() => void>();
  readonly stats = {
    accepted: 0,
    rejected: 0,
    handshakeTimeouts: 0,
    idleTimeouts: 0,
    requestTimeouts: 0,
    protocolErrors: 0,
    requests: 0,
    abandoned: 0,
    discardedBytes: 0,
  };

  constructor(maxTotal: number) {
    this.maxTotal = maxTotal;
  }

  tryTake(n: number): boolean {
    if (this.used + n > this.maxTotal) return false;
    this.used += n;
    this.#peak();
    return true;
  }

  reserve(n: number): void {
    this.reserved += n;
    this.#peak();
  }

  give(n: number): void {
    this.used -= n;
    if (this.waiters.size === 0) return;
    const ws = [...this.waiters];
    this.waiters.clear();
    for (const w of ws) w();
  }

  #peak(): void {
    if (this.used + this.reserved > this.peak) this.peak = this.used + this.reserved;
  }
}

/** What a connection must not exceed. */
interface Limits {
  readonly maxInFlight: number;
  readonly maxBuffered: number;
  readonly handshakeMs: number;
  readonly idleMs: number;
  readonly requestMs: number;
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
 * cheaply); a READ asking for more fails with NBD_EINVAL.
 *
 * Hostile clients (every limit is an option; defaults in the package README):
 * - Memory is bounded per connection (`maxInFlight` requests, `maxBufferedBytes` payload bytes,
 *   counted until a reply has left for the kernel) and across connections
 *   (`maxTotalBufferedBytes`, `maxConnections`). Past a limit the server stops reading that
 *   socket, so TCP flow control pushes back on the client. Option replies are back-pressured
 *   too: a client that sends options and never reads the replies stalls itself.
 * - Time is bounded: `handshakeTimeoutMs` for the handshake, `requestTimeoutMs` for each
 *   payload and reply on the wire, `idleTimeoutMs` (opt-in) between requests. A missed deadline
 *   closes that connection (NbdError "timeout").
 * - A client that resets or closes stops costing work: requests still buffered from it are
 *   dropped unrun (`stats.abandoned`). A connection yields to the event loop every 32 requests
 *   or 1 MiB of payload, so one client's pipeline never starves the others.
 * - A protocol violation closes only the offending connection.
 *
 * Errors: ranges past the end fail with NBD_ENOSPC (WRITE, WRITE_ZEROES) or NBD_EINVAL (READ,
 * TRIM), writes to a read-only export with NBD_EPERM, back-end rejections with NBD_EIO, unknown
 * commands or flags with NBD_EINVAL.
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
  readonly #limits: Limits;
  readonly #maxConnections: number;
  readonly #shared: Shared;
  readonly #onError: (error: NbdError | Error) => void;
  readonly #connections = new Set<Connection>();
  #server: Server | undefined = undefined;
  #sweep: ReturnType<typeof setInterval> | undefined = undefined;

  /**
   * @param options - exports, limits and timeouts
   * @throws TypeError naming `options.exports`; RangeError naming the limit or timeout option
   *   that is out of range, or an export name longer than 4096 UTF-8 bytes
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
    const int = (name: keyof NbdServerOptions, dflt: number, min: number): number => {
      const v = options[name] ?? dflt;
      if (!Number.isSafeInteger(v) || (v as number) < min) {
        throw new RangeError(`options.${name} must be an integer of at least ${min}, got ${v}`);
      }
      return v as number;
    };
    const ms = (name: keyof NbdServerOptions, dflt: number): number => {
      const v = int(name, dflt, 0);
      if (v > 2 ** 31 - 1) {
        throw new RangeError(`options.${name} must be at most 2147483647 ms, got ${v}`);
      }
      return v;
    };
    this.#limits = {
      maxInFlight: int("maxInFlight", 64, 1),
      maxBuffered: int("maxBufferedBytes", 2 * MAX_PAYLOAD, MAX_PAYLOAD),
      handshakeMs: ms("handshakeTimeoutMs", 10_000),
      idleMs: ms("idleTimeoutMs", 0),
      requestMs: ms("requestTimeoutMs", 60_000),
    };
    this.#maxConnections = int("maxConnections", 100, 1);
    this.#shared = new Shared(int("maxTotalBufferedBytes", 8 * MAX_PAYLOAD, MAX_PAYLOAD));
    this.#exports = map;
    this.#onError = options.onConnectionError ?? (() => {});
  }

  /** Connections currently open. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Counters and gauges, as of now. */
  get stats(): NbdServerStats {
    const sh = this.#shared;
    return {
      connections: this.#connections.size,
      ...sh.stats,
      bufferedBytes: sh.used + sh.reserved,
      peakBufferedBytes: sh.peak,
    };
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
    const l = this.#limits;
    const shortest = Math.min(
      ...[l.handshakeMs, l.idleMs, l.requestMs].filter((t) => t > 0),
      Number.POSITIVE_INFINITY,
    );
    if (shortest !== Number.POSITIVE_INFINITY) {
      // One sweep for every deadline of every connection: a deadline is met to within a quarter
      // of the shortest timeout (at most 1 s late), without a timer per request.
      const every = Math.min(1000, Math.max(10, Math.floor(shortest / 4)));
      this.#sweep = setInterval(() => {
        const now = performance.now();
        for (const c of this.#connections) c.checkDeadlines(now);
      }, every);
      this.#sweep.unref();
    }
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
   * Stop accepting connections, let requests running at the back-ends finish, then close every
   * connection (a hard disconnect, as proto.md "Terminating the transmission phase" allows on
   * server shutdown). Resolves when the listener is closed. Idempotent.
   */
  async close(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    clearInterval(this.#sweep);
    this.#sweep = undefined;
    const closed = server
      ? new Promise<void>((resolve) => server.close(() => resolve()))
      : Promise.resolve();
    await Promise.all([...this.#connections].map((c) => c.shutdown()));
    await closed;
  }

  #accept(socket: Socket): void {
    const sh = this.#shared;
    if (this.#connections.size >= this.#maxConnections || this.#server === undefined) {
      sh.stats.rejected++;
      socket.on("error", () => {});
      socket.destroy();
      return;
    }
    sh.stats.accepted++;
    const c = new Connection(socket, this.#exports, this.#limits, sh);
    this.#connections.add(c);
    c.run().then(
      () => this.#connections.delete(c),
      (e: unknown) => {
        this.#connections.delete(c);
        const err = e instanceof Error ? e : new Error(String(e));
        if (!(err instanceof NbdError && err.code === "timeout")) sh.stats.protocolErrors++;
        this.#onError(err);
      },
    );
  }
}

/** One client: handshake, then the transmission loop. */
class Connection {
  readonly #socket: Socket;
  readonly #reader: ByteReader;
  readonly #exports: ReadonlyMap<string, BlockBackend>;
  readonly #limits: Limits;
  readonly #shared: Shared;
  /** Admitted requests whose reply has not yet been handed to the kernel (or dropped). */
  #inFlight = 0;
  /** Requests running at the back-end. */
  #executing = 0;
  /** Payload bytes held: from the shared budget plus from this connection's reserve. */
  #bufferedBytes = 0;
  #fromPool = 0;
  #fromReserve = 0;
  readonly #waiters = new Set<() => void>();
  readonly #closedPromise: Promise<void>;
  #stopping = false;
  /** Why the server closed this connection (a deadline), reported instead of "truncated". */
  #abort: NbdError | undefined = undefined;
  #released = false;
  // Deadlines (performance.now() values; 0 when none is running).
  #handshakeDeadline = 0;
  #readDeadline = 0;
  /** Deadline of each reply not yet handed to the kernel, oldest first. */
  readonly #flushDeadlines: number[] = [];
  #inTransmission = false;
  #lastActivity: number;

  constructor(
    socket: Socket,
    exports: ReadonlyMap<string, BlockBackend>,
    limits: Limits,
    sh: Shared,
  ) {
    this.#socket = socket;
    this.#reader = new ByteReader(socket, 64 * 1024);
    this.#exports = exports;
    this.#limits = limits;
    this.#shared = sh;
    const now = performance.now();
    this.#lastActivity = now;
    if (limits.handshakeMs > 0) this.#handshakeDeadline = now + limits.handshakeMs;
    socket.on("error", () => {}); // surfaces as a truncated read in run()
    socket.on("data", () => {
      this.#lastActivity = performance.now();
    });
    socket.on("drain", () => this.#notify());
    this.#closedPromise = new Promise((resolve) => {
      socket.once("close", () => {
        this.#notify();
        resolve();
      });
    });
    socket.setNoDelay(true);
  }

  /** Serve until the client disconnects; rejects (after closing the socket) on a violation. */
  async run(): Promise<void> {
    try {
      const exp = await this.#handshake();
      this.#handshakeDeadline = 0;
      if (exp) {
        this.#inTransmission = true;
        await this.#transmission(exp.backend);
      }
      await this.#drainExecuting();
      // Send what is queued, then close even if the client never closes its side; a client
      // that does not read is cut off by the reply deadline.
      this.#socket.destroySoon();
      await this.#closedPromise;
      if (this.#abort) throw this.#abort;
    } catch (e) {
      this.#socket.destroy();
      // A shutdown closes sockets on purpose; that is not the client's fault.
      if (!this.#stopping) throw this.#abort ?? e;
    } finally {
      this.#releaseAll();
    }
  }

  async shutdown(): Promise<void> {
    this.#stopping = true;
    await this.#drainExecuting();
    this.#socket.destroy();
  }

  /** Called by the server's sweep: close the connection if a deadline has passed. */
  checkDeadlines(now: number): void {
    if (this.#socket.destroyed) return;
    const l = this.#limits;
    const sh = this.#shared.stats;
    if (this.#handshakeDeadline !== 0 && now >= this.#handshakeDeadline) {
      sh.handshakeTimeouts++;
      this.#kill(`handshake not done in ${l.handshakeMs} ms`, l.handshakeMs);
    } else if (this.#readDeadline !== 0 && now >= this.#readDeadline) {
      sh.requestTimeouts++;
      this.#kill(`NBD_CMD_WRITE payload not received in ${l.requestMs} ms`, l.requestMs);
    } else if (this.#flushDeadlines.length > 0 && now >= this.#flushDeadlines[0]!) {
      sh.requestTimeouts++;
      this.#kill(`reply not taken by the client in ${l.requestMs} ms`, l.requestMs);
    } else if (
      l.idleMs > 0 &&
      this.#inTransmission &&
      this.#inFlight === 0 &&
      now - this.#lastActivity >= l.idleMs
    ) {
      sh.idleTimeouts++;
      this.#kill(`idle for ${l.idleMs} ms`, l.idleMs);
    }
  }

  #kill(message: string, limit: number): void {
    this.#abort ??= new NbdError("timeout", message, limit);
    this.#socket.destroy();
  }

  /** The client is gone (reset, closed) or the server cut it off: stop starting work for it. */
  #gone(): boolean {
    return this.#socket.destroyed || this.#abort !== undefined;
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
    for (let options = 1; ; options++) {
      // Back-pressure: a client that sends options and never reads the replies must not make
      // us queue replies without bound. Stop reading options (so TCP pushes back on the client)
      // until the queued replies have drained; the handshake deadline ends the wait.
      while (this.#socket.writableLength > HANDSHAKE_WRITE_HIGH) {
        if (this.#gone()) throw new NbdError("truncated", "connection closed");
        await this.#wait();
      }
      if (options % YIELD_REQUESTS === 0) await yieldToEventLoop();
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
    let requests = 0;
    let bytes = 0;
    for (;;) {
      if (requests >= YIELD_REQUESTS || bytes >= YIELD_BYTES) {
        // Everything below can run on microtasks alone while the socket holds pipelined
        // requests; a macrotask turn lets other connections in and lets a reset be noticed.
        await yieldToEventLoop();
        requests = 0;
        bytes = 0;
      }
      // A client that is gone gets no more work done for it: what it still had buffered is
      // dropped unrun.
      if (this.#gone()) return this.#discardBuffered();
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
      const fromPool = await this.#admit(payload);
      if (fromPool === undefined) {
        this.#shared.stats.abandoned++;
        return this.#discardBuffered();
      }
      requests++;
      bytes += payload;
      let data: Uint8Array | undefined;
      if (type === CMD_WRITE) {
        if (this.#limits.requestMs > 0) {
          this.#readDeadline = performance.now() + this.#limits.requestMs;
        }
        try {
          data = await this.#reader.read(length);
        } finally {
          this.#readDeadline = 0;
        }
      }
      const error = validate(type, flags, offset, length, size, backend.readOnly);
      if (error !== 0) {
        this.#release(payload, fromPool);
        this.#reply(cookie, error, undefined, 0, false);
        continue;
      }
      if (this.#gone()) {
        this.#release(payload, fromPool);
        this.#inFlight--;
        this.#shared.stats.abandoned++;
        return this.#discardBuffered();
      }
      this.#executing++;
      this.#shared.stats.requests++;
      void this.#execute(backend, type, flags, offset, length, data).then((result) => {
        this.#executing--;
        this.#notify();
        if (result.data === undefined) {
          // Nothing of the payload is needed for the reply: give it back now.
          this.#release(payload, fromPool);
          this.#reply(cookie, result.error, undefined, 0, false);
        } else {
          // Read data stays counted until the kernel has it.
          this.#reply(cookie, result.error, result.data, payload, fromPool);
        }
      });
    }
  }

  /** Count the bytes still buffered from a client that is gone; they are dropped unread. */
  #discardBuffered(): void {
    this.#shared.stats.discardedBytes += this.#reader.buffered;
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

  /**
   * proto.md "Simple reply message": magic, error, cookie, then data for a successful READ.
   * The request stays in flight (and `held` payload bytes stay counted) until the kernel has
   * taken the reply, or it is dropped because the client is gone.
   */
  #reply(
    cookie: Uint8Array,
    error: number,
    data: Uint8Array | undefined,
    held: number,
    fromPool: boolean,
  ): void {
    const s = this.#socket;
    if (this.#gone()) {
      this.#inFlight--;
      this.#release(held, fromPool);
      return;
    }
    const b = new Uint8Array(16);
    const v = dv(b);
    v.setUint32(0, SIMPLE_REPLY_MAGIC);
    v.setUint32(4, error);
    b.set(cookie, 8);
    if (this.#limits.requestMs > 0) {
      this.#flushDeadlines.push(performance.now() + this.#limits.requestMs);
    }
    // Node calls write callbacks in order, once the bytes are in the kernel or the socket failed.
    const done = (): void => {
      this.#flushDeadlines.shift();
      this.#lastActivity = performance.now();
      this.#inFlight--;
      this.#release(held, fromPool);
    };
    if (error === 0 && data && data.length > 0) {
      s.cork();
      s.write(b);
      s.write(data, done);
      s.uncork();
    } else {
      s.write(b, done);
    }
  }

  /**
   * Wait until a request with `payload` bytes fits the connection's limits and the shared
   * budget; take its place in flight and its bytes. Returns whether the bytes came from the
   * shared budget (false: from this connection's reserve), or undefined if the client is gone.
   */
  async #admit(payload: number): Promise<boolean | undefined> {
    const l = this.#limits;
    for (;;) {
      if (this.#gone()) return undefined;
      if (
        this.#inFlight < l.maxInFlight &&
        (this.#bufferedBytes === 0 || this.#bufferedBytes + payload <= l.maxBuffered) &&
        this.#socket.writableLength <= l.maxBuffered
      ) {
        let fromPool: boolean | undefined;
        if (this.#fromReserve + payload <= CONNECTION_RESERVE) {
          this.#fromReserve += payload;
          this.#shared.reserve(payload);
          fromPool = false;
        } else if (this.#shared.tryTake(payload)) {
          this.#fromPool += payload;
          fromPool = true;
        }
        if (fromPool !== undefined) {
          this.#inFlight++;
          this.#bufferedBytes += payload;
          return fromPool;
        }
      }
      await this.#wait(true);
    }
  }

  #release(payload: number, fromPool: boolean): void {
    // After #releaseAll everything was given back already.
    if (!this.#released) {
      this.#bufferedBytes -= payload;
      if (fromPool) {
        this.#fromPool -= payload;
        this.#shared.give(payload);
      } else {
        this.#fromReserve -= payload;
        this.#shared.reserve(-payload);
      }
    }
    this.#notify();
  }

  /** The connection is over: give back whatever it still holds (write callbacks may lag). */
  #releaseAll(): void {
    if (this.#released) return;
    this.#released = true;
    const pool = this.#fromPool;
    this.#shared.reserve(-this.#fromReserve);
    this.#fromPool = 0;
    this.#fromReserve = 0;
    this.#bufferedBytes = 0;
    this.#flushDeadlines.length = 0;
    this.#readDeadline = 0;
    this.#shared.give(pool);
  }

  /** Sleep until something changes: a release, a drain, the socket closing, or (if `pool`) the shared budget. */
  #wait(pool = false): Promise<void> {
    return new Promise<void>((resolve) => {
      const wake = (): void => {
        this.#waiters.delete(wake);
        this.#shared.waiters.delete(wake);
        resolve();
      };
      this.#waiters.add(wake);
      if (pool) this.#shared.waiters.add(wake);
    });
  }

  #notify(): void {
    for (const w of [...this.#waiters]) w();
  }

  async #drainExecuting(): Promise<void> {
    while (this.#executing > 0) await this.#wait();
  }
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
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
