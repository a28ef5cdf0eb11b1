import {
  type AddressInfo,
  createServer,
  type NetConnectOpts,
  connect as netConnect,
  type Server,
  type Socket,
} from "node:net";
import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";
import { checkCount, DEFAULT_MAX_FRAME_SIZE, ETH_HEADER_LEN } from "./endpoint.js";
import { encodeLengthPrefixed, LengthPrefixedDecoder, TunnelError } from "./framing.js";

/** A TCP address. */
export interface TcpAddress {
  /** Host name or IP address (for listening: the address to bind). */
  readonly host: string;
  /** TCP port; 0 when listening picks a free one. */
  readonly port: number;
}

/** A unix-domain socket address. */
export interface UnixAddress {
  /** Filesystem path of the socket. */
  readonly path: string;
}

/** Where a stream tunnel connects or listens: TCP or a unix socket. */
export type StreamAddress = TcpAddress | UnixAddress;

/** Counters of a {@link StreamTunnelServer}. Counters only grow. */
export interface StreamServerStats {
  /** Connections accepted (each became a tunnel). */
  readonly accepted: number;
  /** Connections closed at accept because `maxConnections` were open and none could be evicted. */
  readonly rejected: number;
  /** Idle tunnels closed to give their slot to a new connection (`evictIdleAfterMs`). */
  readonly evicted: number;
  /** Tunnels closed for sending no complete frame within `handshakeTimeoutMs`. */
  readonly handshakeTimeouts: number;
  /** Tunnels closed for sending no frame for `idleTimeoutMs`. */
  readonly idleTimeouts: number;
  /** Tunnels that closed in the middle of a frame (see {@link TunnelStats.partialFrameBytes}). */
  readonly partialFrames: number;
}

/** Options of a {@link StreamTunnel}. */
export interface StreamTunnelOptions {
  /** Longest frame accepted from the peer; a larger length header closes the connection. */
  readonly maxFrameSize?: number;
}

/** Counters of a tunnel. Counters only grow. */
export interface TunnelStats {
  /** Frames received from the socket and accepted by the connected port. */
  readonly framesIn: number;
  /** Bytes of those frames. */
  readonly bytesIn: number;
  /** Frames written to the socket. */
  readonly framesOut: number;
  /** Bytes of those frames (length headers excluded). */
  readonly bytesOut: number;
  /** Frames from the socket that the connected port refused (its `transmit` returned false). */
  readonly refused: number;
  /** Frames from the socket while no port was connected, or frames for a closed socket. */
  readonly notConnected: number;
  /** Datagrams dropped because they were not Ethernet-sized (dgram only). */
  readonly badSize: number;
  /** Datagrams the host failed to send (dgram only: e.g. ICMP port unreachable). */
  readonly sendErrors: number;
  /** Frames dropped because the socket's send queue was full (dgram only; stream frames wait in the port's queue). */
  readonly sendQueueFull: number;
  /** Times a socket write returned false, so the tunnel refused deliveries until `drain`. */
  readonly backpressure: number;
  /**
   * Bytes of an incomplete frame (length header included) pending when the connection closed:
   * dropped, and reported as a `partial-frame` {@link TunnelError} (stream only).
   */
  readonly partialFrameBytes: number;
}

/** @internal */
export function newTunnelStats(): { -readonly [K in keyof TunnelStats]: number } {
  return {
    framesIn: 0,
    bytesIn: 0,
    framesOut: 0,
    bytesOut: 0,
    refused: 0,
    notConnected: 0,
    badSize: 0,
    sendErrors: 0,
    sendQueueFull: 0,
    backpressure: 0,
    partialFrameBytes: 0,
  };
}

/** @internal */
export function checkBackend(port: unknown): NetBackend {
  if (
    typeof port !== "object" ||
    port === null ||
    typeof (port as NetBackend).transmit !== "function" ||
    typeof (port as NetBackend).attach !== "function" ||
    typeof (port as NetBackend).detach !== "function"
  ) {
    throw new TypeError("port must be a NetBackend (transmit, attach, detach)");
  }
  return port as NetBackend;
}

/**
 * One stream connection carrying Ethernet frames in QEMU's `-netdev stream` / `-netdev socket`
 * framing: each frame is preceded by its length as a 4-byte big-endian integer (see
 * {@link LengthPrefixedDecoder} for the QEMU source it follows). Works over TCP and unix
 * sockets.
 *
 * **Plugging into a switch.** A tunnel plays the part a device plays: {@link StreamTunnel.connect}
 * takes a `NetBackend` (typically a `SwitchPort`), attaches to it as its sink, and
 * from then on frames read from the socket go to `port.transmit` and frames the port delivers go
 * to the socket.
 *
 * **Back-pressure.** When a socket write returns false the tunnel refuses further deliveries
 * (`deliver` returns false), so the port holds them in its own bounded queue (dropping and
 * counting beyond it); on the socket's `drain` the tunnel calls `port.rxReady()`. Node's write
 * buffer therefore never holds more than its high-water mark plus one frame.
 *
 * **Hostile peers.** A length of 0 or above `maxFrameSize` cannot be resynchronised: the
 * tunnel destroys that one socket and resolves {@link StreamTunnel.closed} with a `bad-length`
 * {@link TunnelError}. A connection that ends in the middle of a frame resolves it with a
 * `partial-frame` error (the bytes are counted in `stats.partialFrameBytes`), so a cut frame is
 * reported, not dropped silently. Nothing is thrown and the process keeps running.
 */
export class StreamTunnel {
  /** The underlying socket. */
  readonly socket: Socket;
  /** Resolves when the socket has closed: with the error that closed it, or undefined. */
  readonly closed: Promise<TunnelError | undefined>;
  readonly #stats = newTunnelStats();
  readonly #decoder: LengthPrefixedDecoder;
  readonly #sink: NetFrameSink;
  #port: NetBackend | undefined;
  #blocked = false;
  #isClosed = false;
  #error: TunnelError | undefined;
  readonly #openedAt = performance.now();
  #lastFrameAt = 0;

  /**
   * Wrap a connected socket (from `net.connect` or a server's `connection` event).
   * @param socket - the socket; the tunnel takes it over (reads, writes, destroys it)
   * @param options - maximum frame size
   * @throws RangeError / TypeError naming the bad argument
   */
  constructor(socket: Socket, options: StreamTunnelOptions = {}) {
    if (typeof socket !== "object" || socket === null || typeof socket.write !== "function") {
      throw new TypeError("socket must be a net.Socket");
    }
    this.socket = socket;
    const max = checkCount(
      "options.maxFrameSize",
      options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      ETH_HEADER_LEN,
      1 << 24,
    );
    this.#decoder = new LengthPrefixedDecoder(max, (frame) => this.#fromSocket(frame));
    // One sink object for the tunnel's lifetime: delivering a frame allocates only its copy.
    this.#sink = { deliver: (frame) => this.#toSocket(frame) };
    socket.setNoDelay?.(true);
    this.closed = new Promise((resolve) => {
      socket.once("close", () => {
        this.#isClosed = true;
        const partial = this.#decoder.error === undefined ? this.#decoder.pendingBytes : 0;
        if (partial > 0) {
          this.#stats.partialFrameBytes += partial;
          this.#error ??= new TunnelError(
            "partial-frame",
            `stream closed in the middle of a frame: ${partial} bytes received and dropped`,
            { length: partial },
          );
        }
        this.#port?.detach();
        resolve(this.#error);
      });
    });
    socket.on("error", (err) => {
      this.#error ??= new TunnelError("socket", `stream socket failed: ${err.message}`, {
        cause: err,
      });
    });
    socket.on("data", (chunk: Buffer) => {
      if (this.#isClosed) return;
      const error = this.#decoder.push(chunk);
      if (error !== undefined) {
        this.#error ??= error;
        this.#isClosed = true;
        socket.destroy();
      }
    });
    socket.on("drain", () => {
      this.#blocked = false;
      this.#port?.rxReady?.();
    });
  }

  /**
   * Connect to a stream server (QEMU `-netdev stream,server=on` or `-netdev socket,listen=`).
   * @param address - TCP host and port, or unix socket path
   * @param options - maximum frame size
   * @returns the tunnel, once connected
   * @throws TunnelError (`socket`, as a rejection) if the connection fails
   */
  static dial(address: StreamAddress, options: StreamTunnelOptions = {}): Promise<StreamTunnel> {
    checkAddress(address);
    return new Promise((resolve, reject) => {
      const socket = netConnect(address as NetConnectOpts);
      const onError = (err: Error): void => {
        reject(new TunnelError("socket", `cannot connect: ${err.message}`, { cause: err }));
      };
      socket.once("error", onError);
      socket.once("connect", () => {
        socket.off("error", onError);
        try {
          resolve(new StreamTunnel(socket, options));
        } catch (e) {
          socket.destroy();
          reject(e);
        }
      });
    });
  }

  /** Counters (a live view). */
  get stats(): Readonly<TunnelStats> {
    return this.#stats;
  }

  /** The connected port, if any. */
  get port(): NetBackend | undefined {
    return this.#port;
  }

  /** The error that closed (or is closing) the tunnel, if any. */
  get error(): TunnelError | undefined {
    return this.#error;
  }

  /**
   * Milliseconds since the last complete frame arrived from the socket (since the connection
   * was made, if none has).
   */
  get idleMs(): number {
    return performance.now() - (this.#lastFrameAt || this.#openedAt);
  }

  /** Whether a complete frame has arrived from the socket. */
  get sawFrame(): boolean {
    return this.#lastFrameAt !== 0;
  }

  /** @internal Close the connection now, reporting `error` through {@link StreamTunnel.closed}. */
  abort(error: TunnelError): void {
    this.#error ??= error;
    this.#isClosed = true;
    this.socket.destroy();
  }

  /**
   * Plug the tunnel into `port`: attach to it as its sink; frames read from the socket go to
   * `port.transmit`. Replaces an earlier port (which is detached).
   * @param port - a back-end, e.g. a `SwitchPort`
   * @throws TypeError if `port` is not a NetBackend
   */
  connect(port: NetBackend): void {
    checkBackend(port);
    if (this.#port !== undefined && this.#port !== port) this.#port.detach();
    this.#port = port;
    if (this.#isClosed) return; // nothing will come; the port stays detached
    port.attach(this.#sink);
  }

  /** Detach from the connected port; frames from the socket are then dropped and counted. */
  disconnect(): void {
    this.#port?.detach();
    this.#port = undefined;
  }

  /** Close the socket (gracefully: written frames are flushed first). */
  close(): void {
    this.#isClosed = true;
    this.socket.end();
  }

  #fromSocket(frame: Uint8Array): void {
    this.#lastFrameAt = performance.now();
    const port = this.#port;
    if (port === undefined) {
      this.#stats.notConnected++;
      return;
    }
    let ok: boolean;
    try {
      ok = port.transmit(frame);
    } catch {
      ok = false; // the contract says never throw; a back-end that does only loses the frame
    }
    if (ok) {
      this.#stats.framesIn++;
      this.#stats.bytesIn += frame.length;
    } else {
      this.#stats.refused++;
    }
  }

  #toSocket(frame: Uint8Array): boolean {
    if (this.#isClosed || this.socket.destroyed) {
      this.#stats.notConnected++;
      return true; // consumed: dropped and counted here rather than queued for a dead socket
    }
    if (this.#blocked) return false;
    // Node keeps a written buffer until the kernel took it, and `frame` is valid only during
    // this call, so each frame is copied once (header and frame in one pooled buffer).
    const out = Buffer.allocUnsafe(frame.length + 4);
    encodeLengthPrefixed(frame, out);
    this.#stats.framesOut++;
    this.#stats.bytesOut += frame.length;
    if (!this.socket.write(out)) {
      this.#blocked = true;
      this.#stats.backpressure++;
    }
    return true;
  }
}

/** @internal */
export function checkAddress(address: unknown): StreamAddress {
  if (typeof address !== "object" || address === null) {
    throw new TypeError("address must be { host, port } or { path }");
  }
  const a = address as { host?: unknown; port?: unknown; path?: unknown };
  if (a.path !== undefined) {
    if (typeof a.path !== "string" || a.path === "") {
      throw new TypeError("address.path must be a non-empty string");
    }
    return address as StreamAddress;
  }
  if (typeof a.host !== "string") throw new TypeError("address.host must be a string");
  checkCount("address.port", a.port, 0, 65535);
  return address as StreamAddress;
}

/** Options of a {@link StreamTunnelServer}. */
export interface StreamTunnelServerOptions extends StreamTunnelOptions {
  /**
   * Called once per accepted connection with its tunnel; connect it to a port here (an
   * unconnected tunnel drops what it reads).
   */
  readonly onConnection: (tunnel: StreamTunnel) => void;
  /**
   * Connections open at once. When they are all taken a new connection evicts the idlest
   * tunnel if `evictIdleAfterMs` allows, and is otherwise closed at accept and counted.
   * Default 16.
   */
  readonly maxConnections?: number;
  /**
   * When every slot is taken, a new connection takes the slot of the tunnel that has gone
   * longest without sending a frame, if that is at least this many milliseconds (that tunnel
   * closes with an `evicted` {@link TunnelError}). So peers that connect and stay silent cannot
   * lock real peers out for longer than this; a silent legitimate peer loses its slot only
   * while the server is full. Default 30 000; 0 never evicts.
   */
  readonly evictIdleAfterMs?: number;
  /**
   * The stream format has no handshake; its first complete frame stands in for one. Close a
   * connection that sends no complete frame within this many milliseconds of connecting
   * (`timeout` {@link TunnelError}). Default 0 (never: QEMU connects before its guest has
   * booted, and a guest may stay silent).
   */
  readonly handshakeTimeoutMs?: number;
  /**
   * Close a tunnel that has sent no frame for this many milliseconds (`timeout`
   * {@link TunnelError}). Default 0 (never).
   */
  readonly idleTimeoutMs?: number;
}

/**
 * A listening socket whose every connection becomes a {@link StreamTunnel}: what QEMU's
 * `-netdev stream,server=off` (or `-netdev socket,connect=`) connects to. A bad connection
 * closes alone; the others keep running.
 *
 * Limits: at most `maxConnections` tunnels; peers that hold a slot without sending frames are
 * evicted when a new peer needs the slot (`evictIdleAfterMs`) and, if asked, closed after
 * `handshakeTimeoutMs` / `idleTimeoutMs`. Each tunnel's memory is bounded by `maxFrameSize`
 * (one reassembly buffer) and Node's socket high-water mark; see {@link StreamServerStats}.
 *
 * @example
 * ```ts
 * import { Switch } from "@virtio-ts/backend-net";
 * import { StreamTunnelServer } from "@virtio-ts/backend-net/node";
 *
 * const sw = new Switch();
 * const server = await StreamTunnelServer.listen({ host: "127.0.0.1", port: 5555 }, {
 *   onConnection(tunnel) {
 *     const port = sw.createPort();
 *     tunnel.connect(port);
 *     void tunnel.closed.then(() => port.close());
 *   },
 * });
 * ```
 */
export class StreamTunnelServer {
  /** The listening server. */
  readonly server: Server;
  readonly #tunnels = new Set<StreamTunnel>();
  readonly #stats = {
    accepted: 0,
    rejected: 0,
    evicted: 0,
    handshakeTimeouts: 0,
    idleTimeouts: 0,
    partialFrames: 0,
  };
  #sweep: ReturnType<typeof setInterval> | undefined = undefined;

  private constructor(server: Server) {
    this.server = server;
  }

  /** The idlest tunnel, if it has been idle at least `minIdleMs`. */
  #evictable(minIdleMs: number): StreamTunnel | undefined {
    let idlest: StreamTunnel | undefined;
    for (const t of this.#tunnels) if (idlest === undefined || t.idleMs > idlest.idleMs) idlest = t;
    return idlest !== undefined && idlest.idleMs >= minIdleMs ? idlest : undefined;
  }

  /**
   * Listen on `address` (port 0 picks a free TCP port; see {@link StreamTunnelServer.address}).
   * @param address - TCP host and port, or unix socket path
   * @param options - per-connection callback, connection limit, maximum frame size
   * @returns the server, once listening
   * @throws TypeError / RangeError naming a bad argument; TunnelError (`socket`, as a rejection)
   *   if the address cannot be bound
   */
  static async listen(
    address: StreamAddress,
    options: StreamTunnelServerOptions,
  ): Promise<StreamTunnelServer> {
    checkAddress(address);
    if (typeof options?.onConnection !== "function") {
      throw new TypeError("options.onConnection must be a function");
    }
    const maxConnections = checkCount(
      "options.maxConnections",
      options.maxConnections ?? 16,
      1,
      65536,
    );
    const evictMs = checkCount(
      "options.evictIdleAfterMs",
      options.evictIdleAfterMs ?? 30_000,
      0,
      2 ** 31 - 1,
    );
    const handshakeMs = checkCount(
      "options.handshakeTimeoutMs",
      options.handshakeTimeoutMs ?? 0,
      0,
      2 ** 31 - 1,
    );
    const idleMs = checkCount("options.idleTimeoutMs", options.idleTimeoutMs ?? 0, 0, 2 ** 31 - 1);
    const tunnelOptions: StreamTunnelOptions =
      options.maxFrameSize === undefined ? {} : { maxFrameSize: options.maxFrameSize };
    checkCount(
      "options.maxFrameSize",
      options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      ETH_HEADER_LEN,
      1 << 24,
    );
    const server = createServer();
    const self = new StreamTunnelServer(server);
    server.on("connection", (socket) => {
      if (self.#tunnels.size >= maxConnections) {
        const victim = evictMs > 0 ? self.#evictable(evictMs) : undefined;
        if (victim === undefined) {
          self.#stats.rejected++;
          socket.on("error", () => {});
          socket.destroy();
          return;
        }
        self.#stats.evicted++;
        self.#tunnels.delete(victim);
        victim.abort(
          new TunnelError(
            "evicted",
            `idle for ${Math.round(victim.idleMs)} ms with every slot taken: slot given to a new connection`,
          ),
        );
      }
      self.#stats.accepted++;
      const tunnel = new StreamTunnel(socket, tunnelOptions);
      self.#tunnels.add(tunnel);
      void tunnel.closed.then((err) => {
        self.#tunnels.delete(tunnel);
        if (err?.code === "partial-frame" || tunnel.stats.partialFrameBytes > 0) {
          self.#stats.partialFrames++;
        }
      });
      try {
        options.onConnection(tunnel);
      } catch {
        socket.destroy(); // a throwing callback loses its connection, not the process
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", (err) => {
        reject(new TunnelError("socket", `cannot listen: ${err.message}`, { cause: err }));
      });
      server.listen(address, () => resolve());
    });
    server.on("error", () => {}); // after listening, errors surface per connection
    const shortest = Math.min(...[handshakeMs, idleMs].filter((t) => t > 0), Infinity);
    if (shortest !== Infinity) {
      // One sweep for every tunnel's deadlines, to within a quarter of the shortest timeout.
      self.#sweep = setInterval(
        () => self.#checkDeadlines(handshakeMs, idleMs),
        Math.min(1000, Math.max(10, Math.floor(shortest / 4))),
      );
      self.#sweep.unref();
    }
    return self;
  }

  #checkDeadlines(handshakeMs: number, idleMs: number): void {
    for (const t of this.#tunnels) {
      const idle = t.idleMs;
      if (handshakeMs > 0 && !t.sawFrame && idle >= handshakeMs) {
        this.#stats.handshakeTimeouts++;
        t.abort(new TunnelError("timeout", `no complete frame within ${handshakeMs} ms`));
      } else if (idleMs > 0 && idle >= idleMs) {
        this.#stats.idleTimeouts++;
        t.abort(new TunnelError("timeout", `no frame for ${idleMs} ms`));
      }
    }
  }

  /** The bound address: `{ host, port }` for TCP (the real port when 0 was asked), or `{ path }`. */
  get address(): StreamAddress {
    const a = this.server.address();
    if (typeof a === "string") return { path: a };
    const info = a as AddressInfo;
    return { host: info.address, port: info.port };
  }

  /** The open connections. */
  get tunnels(): ReadonlySet<StreamTunnel> {
    return this.#tunnels;
  }

  /** Counters (a live view). */
  get stats(): Readonly<StreamServerStats> {
    return this.#stats;
  }

  /** Stop listening and close every connection. */
  async close(): Promise<void> {
    clearInterval(this.#sweep);
    const closing = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const t of this.#tunnels) t.socket.destroy();
    await closing;
  }
}
