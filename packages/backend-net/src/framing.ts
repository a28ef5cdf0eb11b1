import { checkCount, DEFAULT_MAX_FRAME_SIZE } from "./endpoint.js";

/**
 * What went wrong on a tunnel, as a literal a caller can switch on.
 * - `bad-length`: the peer sent a stream length header of 0 or above the maximum frame size;
 *   the connection is closed (the stream cannot be resynchronised).
 * - `socket`: the socket failed (connection refused or reset, address in use...); the host
 *   error is in `cause`.
 * - `partial-frame`: the connection closed in the middle of a frame; `length` is the number of
 *   bytes of it (length header included) that were received and dropped.
 * - `timeout`: a `StreamTunnelServer` (the `./node` entry) closed a connection that sent no
 *   complete frame within `handshakeTimeoutMs`, or none for `idleTimeoutMs`.
 * - `evicted`: a `StreamTunnelServer` (the `./node` entry) with every slot taken gave this idle
 *   connection's slot to a new one (`evictIdleAfterMs`).
 */
export type TunnelErrorCode = "bad-length" | "socket" | "partial-frame" | "timeout" | "evicted";

/**
 * A tunnel failure caused by the peer or the host network. Never thrown from a frame path: a
 * tunnel reports it through `StreamTunnel.closed` and closes only that connection.
 */
export class TunnelError extends Error {
  /** What went wrong. */
  readonly code: TunnelErrorCode;
  /** For `bad-length`: the length the peer announced; for `partial-frame`: the bytes dropped. */
  readonly length: number | undefined;
  /** For `bad-length`: the largest length accepted. */
  readonly maxFrameSize: number | undefined;

  /**
   * @param code - what went wrong
   * @param message - text for humans
   * @param options - the announced length and limit, or the host error (`cause`)
   */
  constructor(
    code: TunnelErrorCode,
    message: string,
    options: {
      readonly length?: number;
      readonly maxFrameSize?: number;
      readonly cause?: unknown;
    } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "TunnelError";
    this.code = code;
    this.length = options.length;
    this.maxFrameSize = options.maxFrameSize;
  }
}

/**
 * Reassembles QEMU stream framing (a 4-byte big-endian length, then that many bytes of
 * Ethernet frame) from arbitrarily segmented input.
 *
 * Wire format, checked against QEMU's sources: `net_stream_receive` (net/stream.c) and
 * `net_socket_receive` (net/socket.c) send `uint32_t len = htonl(size)` in an iovec before
 * the packet, and `net_fill_rstate` (net/net.c) reads it back with `ntohl` (no vnet header on
 * these back-ends).
 *
 * A frame that lies whole inside one chunk is passed as a view of that chunk (no copy); a
 * frame split across chunks is assembled in one buffer of `maxFrameSize` bytes allocated on
 * the first split. Views are valid only during the callback.
 */
export class LengthPrefixedDecoder {
  readonly #max: number;
  readonly #onFrame: (frame: Uint8Array) => void;
  #buf: Uint8Array | undefined;
  #headerFill = 0;
  #header = 0;
  /** Length of the frame being read; 0 while reading a header. */
  #frameLen = 0;
  #fill = 0;
  #error: TunnelError | undefined;

  /**
   * @param maxFrameSize - the largest length accepted (default 65553)
   * @param onFrame - called once per complete frame, with a view valid only during the call
   * @throws RangeError if `maxFrameSize` is not an integer in [1, 2^24]
   */
  constructor(maxFrameSize: number | undefined, onFrame: (frame: Uint8Array) => void) {
    this.#max = checkCount("maxFrameSize", maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE, 1, 1 << 24);
    if (typeof onFrame !== "function") throw new TypeError("onFrame must be a function");
    this.#onFrame = onFrame;
  }

  /** The framing error that stopped the decoder, if any. */
  get error(): TunnelError | undefined {
    return this.#error;
  }

  /** Bytes received but not yet part of a complete frame. */
  get pendingBytes(): number {
    return this.#frameLen === 0 ? this.#headerFill : 4 + this.#fill;
  }

  /**
   * Feed received bytes; complete frames are passed to `onFrame` before this returns.
   * @param chunk - the next bytes of the stream
   * @returns undefined, or the {@link TunnelError} (`bad-length`) that stopped the decoder;
   *   later calls return the same error and consume nothing
   */
  push(chunk: Uint8Array): TunnelError | undefined {
    if (this.#error !== undefined) return this.#error;
    const n = chunk.length;
    let i = 0;
    while (i < n) {
      if (this.#frameLen === 0) {
        while (this.#headerFill < 4 && i < n) {
          // Multiply, not shift: a length above 2^31 must stay positive to be rejected.
          this.#header = this.#header * 256 + chunk[i++]!;
          this.#headerFill++;
        }
        if (this.#headerFill < 4) break;
        const len = this.#header;
        this.#header = 0;
        this.#headerFill = 0;
        if (len === 0 || len > this.#max) {
          this.#error = new TunnelError(
            "bad-length",
            `stream peer announced a frame of ${len} bytes (allowed 1..${this.#max}); closing the connection`,
            { length: len, maxFrameSize: this.#max },
          );
          return this.#error;
        }
        this.#frameLen = len;
        this.#fill = 0;
        continue;
      }
      const need = this.#frameLen - this.#fill;
      const avail = n - i;
      if (this.#fill === 0 && avail >= need) {
        this.#frameLen = 0;
        this.#onFrame(chunk.subarray(i, i + need));
        i += need;
        continue;
      }
      const take = Math.min(avail, need);
      this.#buf ??= new Uint8Array(this.#max);
      this.#buf.set(chunk.subarray(i, i + take), this.#fill);
      this.#fill += take;
      i += take;
      if (this.#fill === this.#frameLen) {
        const len = this.#frameLen;
        this.#frameLen = 0;
        this.#fill = 0;
        this.#onFrame(this.#buf.subarray(0, len));
      }
    }
    return undefined;
  }
}

/**
 * Write one frame in QEMU stream framing into `out` (4-byte big-endian length, then the frame).
 * @param frame - the frame
 * @param out - at least `frame.length + 4` bytes
 * @returns the number of bytes written
 * @throws RangeError if `out` is too small
 */
export function encodeLengthPrefixed(frame: Uint8Array, out: Uint8Array): number {
  const len = frame.length;
  if (out.length < len + 4) throw new RangeError(`out must hold ${len + 4} bytes`);
  out[0] = len >>> 24;
  out[1] = (len >>> 16) & 0xff;
  out[2] = (len >>> 8) & 0xff;
  out[3] = len & 0xff;
  out.set(frame, 4);
  return len + 4;
}
