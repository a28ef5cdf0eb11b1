import type { ConsoleBackend, ConsoleInputSink } from "./console-backend.js";

/**
 * The part of a Node.js `Readable` (or any event-emitter stream) a
 * {@link StreamConsoleBackend} uses: `data` events and flow control. Structural, so no Node
 * types are needed.
 */
export interface ConsoleReadableStream {
  /** Subscribe to `data` (a chunk of bytes; strings are UTF-8 encoded). */
  on(event: "data", listener: (chunk: Uint8Array | string) => void): unknown;
  /** Stop emitting `data`. */
  pause(): unknown;
  /** Emit `data` again. */
  resume(): unknown;
}

/**
 * The part of a Node.js `Writable` a {@link StreamConsoleBackend} uses. Structural, so no Node
 * types are needed.
 */
export interface ConsoleWritableStream {
  /** Queue `chunk`; false when the stream's buffer is over its high-water mark. */
  write(chunk: Uint8Array): boolean;
  /** Call `listener` once when the buffer has drained. */
  once(event: "drain", listener: () => void): unknown;
}

/** Options of a {@link StreamConsoleBackend}. */
export interface StreamConsoleBackendOptions {
  /** The console port the streams are connected to. Default 0. */
  readonly port?: number;
}

interface TextEncoderLike {
  encode(s: string): Uint8Array;
}

/**
 * A {@link ConsoleBackend} over a readable stream (host → guest input) and a writable stream
 * (guest output → host), for example `process.stdin` / `process.stdout` or a socket, for one
 * port. Output of other ports is discarded.
 *
 * Back-pressure both ways, so nothing is dropped and nothing grows without bound:
 * - Input: a chunk is offered to the device up to its free pending space
 *   (`sink.inputRoom`); what does not fit is held (one chunk at most) and the readable is
 *   paused until the device reports space (`inputSpace`), then the rest is offered and the
 *   readable resumed.
 * - Output: each piece is copied (the device's view is only valid during the call) and written;
 *   when `write` returns false the device pauses the port's transmit queue until the writable
 *   emits `drain`.
 *
 * @example
 * ```ts
 * const console = new ConsoleDevice(new StreamConsoleBackend(process.stdin, process.stdout));
 * ```
 */
export class StreamConsoleBackend implements ConsoleBackend {
  /** The port the streams serve. */
  readonly port: number;
  readonly #in: ConsoleReadableStream;
  readonly #out: ConsoleWritableStream;
  #sink: ConsoleInputSink | undefined;
  #held: Uint8Array | undefined;
  #paused = false;
  #drainWait = false;

  /**
   * @param readable - input for the guest
   * @param writable - where guest output goes
   * @param options - port
   * @throws RangeError naming `options.port`
   */
  constructor(
    readable: ConsoleReadableStream,
    writable: ConsoleWritableStream,
    options: StreamConsoleBackendOptions = {},
  ) {
    const port = options.port ?? 0;
    if (!Number.isInteger(port) || port < 0) {
      throw new RangeError(`options.port must be a non-negative integer, got ${port}`);
    }
    this.port = port;
    this.#in = readable;
    this.#out = writable;
  }

  /** Whether the readable is paused for back-pressure. */
  get paused(): boolean {
    return this.#paused;
  }

  /** @inheritdoc */
  attach(sink: ConsoleInputSink): void {
    this.#sink = sink;
    this.#in.on("data", (chunk) => this.#onData(chunk));
  }

  /** @inheritdoc */
  write(port: number, data: Uint8Array): boolean {
    if (port !== this.port) return true;
    // Copy: the device's view of guest memory is valid only during this call.
    const ok = this.#out.write(data.slice());
    if (!ok && !this.#drainWait) {
      this.#drainWait = true;
      this.#out.once("drain", () => {
        this.#drainWait = false;
        this.#sink?.resumeOutput(this.port);
      });
    }
    return ok;
  }

  /** @inheritdoc */
  inputSpace(port: number): void {
    if (port !== this.port || this.#held === undefined) return;
    const rest = this.#held;
    this.#held = undefined;
    this.#offer(rest);
    if (this.#held === undefined && this.#paused) {
      this.#paused = false;
      this.#in.resume();
    }
  }

  #onData(chunk: Uint8Array | string): void {
    let bytes: Uint8Array;
    if (typeof chunk === "string") {
      const Enc = (globalThis as { TextEncoder?: new () => TextEncoderLike }).TextEncoder;
      if (Enc === undefined) return;
      bytes = new Enc().encode(chunk);
    } else bytes = chunk;
    if (this.#held !== undefined) {
      // A stream may emit one more chunk after pause(): keep it with the held bytes.
      const joined = new Uint8Array(this.#held.length + bytes.length);
      joined.set(this.#held);
      joined.set(bytes, this.#held.length);
      this.#held = joined;
      return;
    }
    this.#offer(bytes);
    if (this.#held !== undefined && !this.#paused) {
      this.#paused = true;
      this.#in.pause();
    }
  }

  /** Offer `bytes` up to the device's room; hold what is left. */
  #offer(bytes: Uint8Array): void {
    const sink = this.#sink;
    if (sink === undefined) return;
    let at = 0;
    while (at < bytes.length) {
      const room = sink.inputRoom(this.port);
      if (room === 0) break;
      const n = Math.min(room, bytes.length - at);
      const took = sink.input(this.port, bytes.subarray(at, at + n));
      at += took;
      if (took === 0) break;
    }
    if (at < bytes.length) this.#held = bytes.slice(at);
  }
}
