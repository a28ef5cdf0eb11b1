// NBD wire constants and a bounded byte reader shared by NbdDisk (client) and NbdServer.
// Internal: nothing here is re-exported from the package entry except NbdError and its code.
//
// Every number below comes from the NBD protocol document (NetworkBlockDevice/nbd
// doc/proto.md); all fields are big-endian ("Conventions").
import type { Socket } from "node:net";

/** proto.md "Newstyle negotiation": S: 64 bits, ASCII 'NBDMAGIC'. */
export const NBDMAGIC = 0x4e42444d41474943n;
/** proto.md "Newstyle negotiation": 'IHAVEOPT', sent by the server, then before every option. */
export const IHAVEOPT = 0x49484156454f5054n;
/** proto.md "Fixed newstyle negotiation": magic of every option reply. */
export const OPT_REPLY_MAGIC = 0x3e889045565a9n;
/** proto.md "Request message": NBD_REQUEST_MAGIC. */
export const REQUEST_MAGIC = 0x25609513;
/** proto.md "Simple reply message": NBD_SIMPLE_REPLY_MAGIC. */
export const SIMPLE_REPLY_MAGIC = 0x67446698;

// proto.md "Handshake flags" (16 bits, server) and "Client flags" (32 bits).
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_C_NO_ZEROES = 1 << 1;

// proto.md "Transmission flags" (16 bits).
export const FLAG_HAS_FLAGS = 1 << 0;
export const FLAG_READ_ONLY = 1 << 1;
export const FLAG_SEND_FLUSH = 1 << 2;
export const FLAG_SEND_FUA = 1 << 3;
export const FLAG_SEND_TRIM = 1 << 5;
export const FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const FLAG_SEND_FAST_ZERO = 1 << 11;
export const FLAG_CAN_MULTI_CONN = 1 << 8;

// proto.md "Option types".
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_INFO = 6;
export const OPT_GO = 7;

// proto.md "Option reply types"; errors have bit 31 set.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_FLAG_ERROR = 0x80000000;
export const REP_ERR_UNSUP = 0x80000001;
export const REP_ERR_POLICY = 0x80000002;
export const REP_ERR_INVALID = 0x80000003;
export const REP_ERR_PLATFORM = 0x80000004;
export const REP_ERR_TLS_REQD = 0x80000005;
export const REP_ERR_UNKNOWN = 0x80000006;
export const REP_ERR_SHUTDOWN = 0x80000007;
export const REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
export const REP_ERR_TOO_BIG = 0x80000009;

/** Names of the option reply errors, for messages. */
export const REP_ERR_NAMES: ReadonlyMap<number, string> = new Map([
  [REP_ERR_UNSUP, "NBD_REP_ERR_UNSUP"],
  [REP_ERR_POLICY, "NBD_REP_ERR_POLICY"],
  [REP_ERR_INVALID, "NBD_REP_ERR_INVALID"],
  [REP_ERR_PLATFORM, "NBD_REP_ERR_PLATFORM"],
  [REP_ERR_TLS_REQD, "NBD_REP_ERR_TLS_REQD"],
  [REP_ERR_UNKNOWN, "NBD_REP_ERR_UNKNOWN"],
  [REP_ERR_SHUTDOWN, "NBD_REP_ERR_SHUTDOWN"],
  [REP_ERR_BLOCK_SIZE_REQD, "NBD_REP_ERR_BLOCK_SIZE_REQD"],
  [REP_ERR_TOO_BIG, "NBD_REP_ERR_TOO_BIG"],
]);

// proto.md "NBD_REP_INFO" information types.
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// proto.md "Request types".
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_WRITE_ZEROES = 6;

// proto.md "Command flags".
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

// proto.md "Error values".
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

/** Names of the transmission error values, for messages. */
export const ERRNO_NAMES: ReadonlyMap<number, string> = new Map([
  [NBD_EPERM, "NBD_EPERM"],
  [NBD_EIO, "NBD_EIO"],
  [NBD_ENOMEM, "NBD_ENOMEM"],
  [NBD_EINVAL, "NBD_EINVAL"],
  [NBD_ENOSPC, "NBD_ENOSPC"],
  [NBD_EOVERFLOW, "NBD_EOVERFLOW"],
  [NBD_ENOTSUP, "NBD_ENOTSUP"],
  [NBD_ESHUTDOWN, "NBD_ESHUTDOWN"],
]);

/**
 * proto.md "Conventions": a string (export name, error message) MUST be no longer than 4096
 * bytes.
 */
export const MAX_STRING = 4096;
/**
 * proto.md "Size constraints": a payload up to 2^25 bytes SHOULD NOT be considered a denial of
 * service; it is also the default maximum payload a client should use.
 */
export const MAX_PAYLOAD = 1 << 25;
/** Largest option (client) or option reply (server) we accept: 64 KiB, far above any valid one. */
export const MAX_OPTION_LENGTH = 1 << 16;

/** What broke an NBD connection, as a literal a caller can switch on. */
export type NbdErrorCode =
  /** A magic number was wrong (handshake, option, request or reply). */
  | "bad-magic"
  /** A length field passed its limit (option data, payload, string). */
  | "too-long"
  /** A reply carried a cookie that matches no request in flight. */
  | "unknown-cookie"
  /** The peer closed the connection in the middle of a message. */
  | "truncated"
  /** The peer sent a well-framed message the protocol forbids here (unknown flags, bad option reply). */
  | "protocol"
  /** The server refused the export during option haggling (an NBD_REP_ERR_* reply). */
  | "refused"
  /**
   * The peer did not finish in time: a handshake past its deadline, a request unanswered past
   * `requestTimeoutMs`, or (server side) a request whose payload or reply did not move in time.
   * `value` is the limit in milliseconds.
   */
  | "timeout";

/**
 * A violation of the NBD protocol by the peer, or a refusal by the server. `NbdDisk` wraps it as
 * the `cause` of a `BackendError`; `NbdServer` reports it through `onConnectionError` and closes
 * only that connection.
 *
 * @see NBD proto.md "Termination of the session during option haggling" (a party that detects a
 *   violation of a mandatory condition MAY initiate a hard disconnect)
 */
export class NbdError extends Error {
  /** What went wrong. */
  readonly code: NbdErrorCode;
  /** The offending value (a magic, a length, a cookie, a reply type), when there is one. */
  readonly value: bigint | number | undefined;

  /**
   * @param code - what went wrong
   * @param message - text for humans
   * @param value - the offending value
   */
  constructor(code: NbdErrorCode, message: string, value?: bigint | number) {
    super(message);
    this.name = "NbdError";
    this.code = code;
    this.value = value;
  }
}

/**
 * Reads exact byte counts from a socket for a sequential protocol loop. Memory is bounded: when
 * more than `highWater` bytes sit unconsumed the socket is paused (TCP flow control pushes back
 * on the peer) and resumed once the consumer catches up; `readInto` copies straight into the
 * caller's buffers, so a large payload never accumulates here. One consumer at a time.
 */
export class ByteReader {
  readonly #socket: Socket;
  readonly #highWater: number;
  readonly #chunks: Uint8Array[] = [];
  #size = 0;
  #ended = false;
  #endError: Error | undefined = undefined;
  #wake: (() => void) | undefined = undefined;

  constructor(socket: Socket, highWater = 1 << 20) {
    this.#socket = socket;
    this.#highWater = highWater;
    socket.on("data", (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#size += chunk.length;
      if (this.#size >= this.#highWater) socket.pause();
      this.#notify();
    });
    const end = (err?: Error) => {
      this.#ended = true;
      this.#endError ??= err;
      this.#notify();
    };
    socket.on("end", () => end());
    socket.on("close", () => end());
    socket.on("error", (e) => end(e));
  }

  /** Bytes received and not yet consumed. */
  get buffered(): number {
    return this.#size;
  }

  /** A fresh array of exactly `n` bytes (callers bound `n`). */
  async read(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    await this.readInto([out]);
    return out;
  }

  /** Fill every view of `dst`, in order. Rejects with NbdError "truncated" if the stream ends. */
  async readInto(dst: readonly Uint8Array[]): Promise<void> {
    for (const view of dst) {
      let at = 0;
      while (at < view.length) {
        if (this.#size === 0) {
          // Everything buffered was consumed: let the peer send again.
          if (this.#socket.isPaused()) this.#socket.resume();
          if (this.#ended) {
            throw new NbdError(
              "truncated",
              `connection closed in the middle of a message${this.#endError ? ` (${this.#endError.message})` : ""}`,
            );
          }
          await new Promise<void>((resolve) => {
            this.#wake = resolve;
          });
          continue;
        }
        const head = this.#chunks[0]!;
        const n = Math.min(head.length, view.length - at);
        view.set(n === head.length ? head : head.subarray(0, n), at);
        at += n;
        this.#size -= n;
        if (n === head.length) this.#chunks.shift();
        else this.#chunks[0] = head.subarray(n);
      }
    }
    if (this.#size < this.#highWater && this.#socket.isPaused()) this.#socket.resume();
  }

  /** Resolves true once at least one byte is buffered, false if the stream ended first. */
  async hasMore(): Promise<boolean> {
    while (this.#size === 0) {
      if (this.#socket.isPaused()) this.#socket.resume();
      if (this.#ended) return false;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
      });
    }
    return true;
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = undefined;
    w?.();
  }
}

/** Read an unsigned 64-bit big-endian field as a number, or -1 if it exceeds 2^53 − 1. */
export function u64(view: DataView, at: number): number {
  const hi = view.getUint32(at);
  const lo = view.getUint32(at + 4);
  if (hi > 0x1fffff) return -1;
  return hi * 2 ** 32 + lo;
}

/** Write a non-negative safe integer as an unsigned 64-bit big-endian field. */
export function setU64(view: DataView, at: number, value: number): void {
  view.setUint32(at, Math.floor(value / 2 ** 32));
  view.setUint32(at + 4, value >>> 0);
}

/** A DataView over all of `bytes`. */
export function dv(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Total length of a list of views. */
export function totalLength(views: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of views) n += v.length;
  return n;
}

/** The views covering bytes [start, start + len) of the concatenation of `views` (no copy). */
export function sliceViews(views: readonly Uint8Array[], start: number, len: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  let skip = start;
  let left = len;
  for (const v of views) {
    if (left === 0) break;
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    const n = Math.min(v.length - skip, left);
    out.push(skip === 0 && n === v.length ? v : v.subarray(skip, skip + n));
    left -= n;
    skip = 0;
  }
  return out;
}
