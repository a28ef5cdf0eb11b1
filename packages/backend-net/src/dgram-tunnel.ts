import { createSocket, type Socket } from "node:dgram";
import { isIP } from "node:net";
import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";
import { checkCount, DEFAULT_MAX_FRAME_SIZE, ETH_HEADER_LEN } from "./endpoint.js";
import { TunnelError } from "./framing.js";
import { checkBackend, newTunnelStats, type TunnelStats } from "./stream-tunnel.js";

/** A UDP endpoint: a numeric IPv4 or IPv6 address and a port. */
export interface DgramAddress {
  /** A numeric IP address (no name lookup on the frame path). */
  readonly host: string;
  /** The UDP port; 0 for the local side picks a free one. */
  readonly port: number;
}

/** Options of a {@link DgramTunnel}. */
export interface DgramTunnelOptions {
  /** Where to bind (QEMU's `remote.*`). */
  readonly local: DgramAddress;
  /** Where to send, and the only source accepted (QEMU's `local.*`). */
  readonly remote: DgramAddress;
  /** Longest frame sent or accepted. Default 65553 (a UDP datagram carries at most 65507 over IPv4). */
  readonly maxFrameSize?: number;
  /** Datagrams allowed to wait in the socket's send queue; beyond, frames are dropped. Default 256. */
  readonly maxSendQueue?: number;
}

function checkDgramAddress(name: string, a: unknown, minPort: number): DgramAddress {
  if (typeof a !== "object" || a === null) throw new TypeError(`${name} must be { host, port }`);
  const { host, port } = a as { host?: unknown; port?: unknown };
  if (typeof host !== "string" || isIP(host) === 0) {
    throw new TypeError(`${name}.host must be a numeric IP address`);
  }
  checkCount(`${name}.port`, port, minPort, 65535);
  return a as DgramAddress;
}

/**
 * A UDP tunnel in QEMU's `-netdev dgram` format: one Ethernet frame per datagram, no header
 * (QEMU net/dgram.c sends the packet as the datagram payload). The socket is bound to `local`
 * and connected to `remote`, so the kernel discards datagrams from any other source.
 *
 * Like {@link StreamTunnel}, a dgram tunnel plays the part of a device:
 * {@link DgramTunnel.connect} attaches it to a port. UDP has no flow control, so when more than
 * `maxSendQueue` datagrams wait in the socket the frame is dropped and counted
 * (`sendQueueFull`); datagrams of the wrong size are dropped and counted (`badSize`).
 *
 * @example
 * ```ts
 * import { Switch } from "@virtio-ts/backend-net";
 * import { DgramTunnel } from "@virtio-ts/backend-net/node";
 *
 * const sw = new Switch();
 * const tunnel = await DgramTunnel.bind({
 *   local: { host: "127.0.0.1", port: 5557 },
 *   remote: { host: "127.0.0.1", port: 5556 },
 * });
 * tunnel.connect(sw.createPort());
 * ```
 */
export class DgramTunnel {
  /** The underlying socket. */
  readonly socket: Socket;
  /** Resolves when the socket has closed. */
  readonly closed: Promise<void>;
  readonly #stats = newTunnelStats();
  readonly #sink: NetFrameSink;
  readonly #max: number;
  readonly #maxSendQueue: number;
  readonly #onSent: (err: Error | null) => void;
  #port: NetBackend | undefined;
  #isClosed = false;

  private constructor(socket: Socket, max: number, maxSendQueue: number) {
    this.socket = socket;
    this.#max = max;
    this.#maxSendQueue = maxSendQueue;
    this.#sink = { deliver: (frame) => this.#toSocket(frame) };
    // One callback for every send, so sending allocates only the frame's copy.
    this.#onSent = (err) => {
      if (err) this.#stats.sendErrors++;
    };
    this.closed = new Promise((resolve) => {
      socket.once("close", () => {
        this.#isClosed = true;
        this.#port?.detach();
        resolve();
      });
    });
    socket.on("error", () => {
      this.#stats.sendErrors++;
    });
    socket.on("message", (msg: Buffer) => this.#fromSocket(msg));
  }

  /**
   * Bind `local`, connect to `remote`.
   * @param options - addresses and limits
   * @returns the tunnel, ready
   * @throws TypeError / RangeError naming a bad option; TunnelError (`socket`, as a rejection)
   *   if binding fails
   */
  static async bind(options: DgramTunnelOptions): Promise<DgramTunnel> {
    if (typeof options !== "object" || options === null) {
      throw new TypeError("options must be { local, remote }");
    }
    const local = checkDgramAddress("options.local", options.local, 0);
    const remote = checkDgramAddress("options.remote", options.remote, 1);
    if (isIP(local.host) !== isIP(remote.host)) {
      throw new RangeError("options.local and options.remote must be the same IP family");
    }
    const max = checkCount(
      "options.maxFrameSize",
      options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      ETH_HEADER_LEN,
      1 << 24,
    );
    const maxSendQueue = checkCount(
      "options.maxSendQueue",
      options.maxSendQueue ?? 256,
      1,
      1 << 20,
    );
    const socket = createSocket(isIP(local.host) === 6 ? "udp6" : "udp4");
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once("error", reject);
        socket.bind(local.port, local.host, () => {
          socket.connect(remote.port, remote.host, () => {
            socket.off("error", reject);
            resolve();
          });
        });
      });
    } catch (err) {
      try {
        socket.close();
      } catch {
        // already closed by the failed bind
      }
      throw new TunnelError("socket", `cannot bind/connect UDP: ${(err as Error).message}`, {
        cause: err,
      });
    }
    return new DgramTunnel(socket, max, maxSendQueue);
  }

  /** Counters (a live view). */
  get stats(): Readonly<TunnelStats> {
    return this.#stats;
  }

  /** The bound local address (the real port when 0 was asked). */
  get address(): DgramAddress {
    const a = this.socket.address();
    return { host: a.address, port: a.port };
  }

  /** The connected port, if any. */
  get port(): NetBackend | undefined {
    return this.#port;
  }

  /**
   * Plug the tunnel into `port`: attach as its sink; received datagrams go to `port.transmit`.
   * @param port - a back-end, e.g. a `SwitchPort`
   * @throws TypeError if `port` is not a NetBackend
   */
  connect(port: NetBackend): void {
    checkBackend(port);
    if (this.#port !== undefined && this.#port !== port) this.#port.detach();
    this.#port = port;
    if (!this.#isClosed) port.attach(this.#sink);
  }

  /** Detach from the connected port; received datagrams are then dropped and counted. */
  disconnect(): void {
    this.#port?.detach();
    this.#port = undefined;
  }

  /** Close the socket. */
  close(): Promise<void> {
    if (!this.#isClosed) {
      this.#isClosed = true;
      this.socket.close();
    }
    return this.closed;
  }

  #fromSocket(msg: Buffer): void {
    const len = msg.length;
    if (len < ETH_HEADER_LEN || len > this.#max) {
      this.#stats.badSize++;
      return;
    }
    const port = this.#port;
    if (port === undefined) {
      this.#stats.notConnected++;
      return;
    }
    let ok: boolean;
    try {
      ok = port.transmit(msg);
    } catch {
      ok = false;
    }
    if (ok) {
      this.#stats.framesIn++;
      this.#stats.bytesIn += len;
    } else {
      this.#stats.refused++;
    }
  }

  #toSocket(frame: Uint8Array): boolean {
    if (this.#isClosed) {
      this.#stats.notConnected++;
      return true;
    }
    if (frame.length > this.#max) {
      this.#stats.badSize++;
      return true;
    }
    if (this.socket.getSendQueueCount() >= this.#maxSendQueue) {
      this.#stats.sendQueueFull++;
      return true;
    }
    // dgram keeps the buffer until the send completes; `frame` is valid only during this call.
    this.socket.send(Buffer.from(frame), this.#onSent);
    this.#stats.framesOut++;
    this.#stats.bytesOut += frame.length;
    return true;
  }
}
