/**
 * The host side of virtio-vsock connections, shaped like `node:net` but free of Node: a
 * {@link VsockServer} listens on a host port, a {@link VsockStream} is one connection (events
 * `connect`, `data`, `end`, `drain`, `close`, `error`; `write`, `end`, `destroy`, `pause`,
 * `resume`). The protocol is in `vsock-device.ts`.
 * @module
 */
import { VirtioError } from "@virtio-ts/memory";

/** Why a vsock connection failed. */
export type VsockErrorCode =
  /** The guest answered our connection request with RST: nothing listens on that port. */
  | "ECONNREFUSED"
  /** The guest reset an established connection (RST), or broke its credit (sent more than we allowed). */
  | "ECONNRESET"
  /** The guest did not answer a connection request within the timeout. */
  | "ETIMEDOUT"
  /** Writing after `end()`, or after the guest said it will receive nothing more. */
  | "EPIPE"
  /** The device was reset or sent a transport reset event: every connection is gone. */
  | "ERR_VSOCK_RESET";

/** A vsock connection failed ({@link VsockStream} `error` event; `connect` rejections). */
export class VsockError extends VirtioError {
  /** What happened. */
  readonly code: VsockErrorCode;
  /** The host port of the connection. */
  readonly localPort: number;
  /** The guest port of the connection. */
  readonly remotePort: number;

  /**
   * @param code - what happened
   * @param message - detail
   * @param localPort - host port
   * @param remotePort - guest port
   */
  constructor(code: VsockErrorCode, message: string, localPort: number, remotePort: number) {
    super(`vsock ${code}: ${message} (host port ${localPort}, guest port ${remotePort})`);
    this.code = code;
    this.localPort = localPort;
    this.remotePort = remotePort;
  }
}

/** Events of a {@link VsockStream} and their listeners' arguments. */
export interface VsockStreamEvents {
  /** The guest accepted our connection request (RESPONSE). */
  connect: [];
  /** Bytes from the guest (the array is the listener's to keep). */
  data: [Uint8Array];
  /** The guest will send nothing more (SHUTDOWN with SEND, or a close). */
  end: [];
  /** The bytes queued by `write` fell below the high-water mark again. */
  drain: [];
  /** The connection is gone; `hadError` when an `error` event came first. */
  close: [boolean];
  /** The connection failed (see {@link VsockErrorCode}). */
  error: [VsockError];
}

/** Events of a {@link VsockServer}. */
export interface VsockServerEvents {
  /** A guest connected to the port. */
  connection: [VsockStream];
  /** The server stopped listening. */
  close: [];
}

/** A listener of an event whose arguments are `A`. */
export type VsockEventListener<A extends unknown[]> = (...args: A) => void;

interface TextEncoderLike {
  encode(s: string): Uint8Array;
}

function utf8(s: string): Uint8Array {
  const Enc = (globalThis as { TextEncoder?: new () => TextEncoderLike }).TextEncoder;
  if (Enc !== undefined) return new Enc().encode(s);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i) & 0x7f;
  return out;
}

/** A tiny typed event emitter (no Node dependency). Listener exceptions are caught and reported. */
export class VsockEmitter<E extends { [K in keyof E]: unknown[] }> {
  readonly #listeners = new Map<keyof E, { fn: VsockEventListener<never[]>; once: boolean }[]>();
  #report: (e: unknown) => void = () => {};

  /** @internal Where a throwing listener is reported. */
  setReporter(report: (e: unknown) => void): void {
    this.#report = report;
  }

  /**
   * Call `listener` on every `event`.
   * @returns this
   */
  on<K extends keyof E>(event: K, listener: VsockEventListener<E[K]>): this {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    const list = this.#listeners.get(event) ?? [];
    list.push({ fn: listener as unknown as VsockEventListener<never[]>, once: false });
    this.#listeners.set(event, list);
    return this;
  }

  /**
   * Call `listener` on the next `event` only.
   * @returns this
   */
  once<K extends keyof E>(event: K, listener: VsockEventListener<E[K]>): this {
    if (typeof listener !== "function") throw new TypeError("listener must be a function");
    const list = this.#listeners.get(event) ?? [];
    list.push({ fn: listener as unknown as VsockEventListener<never[]>, once: true });
    this.#listeners.set(event, list);
    return this;
  }

  /**
   * Remove `listener` from `event`.
   * @returns this
   */
  off<K extends keyof E>(event: K, listener: VsockEventListener<E[K]>): this {
    const list = this.#listeners.get(event);
    if (list === undefined) return this;
    const at = list.findIndex((l) => l.fn === (listener as unknown));
    if (at >= 0) list.splice(at, 1);
    return this;
  }

  /** Number of listeners of `event`. */
  listenerCount<K extends keyof E>(event: K): number {
    return this.#listeners.get(event)?.length ?? 0;
  }

  /** @internal */
  emit<K extends keyof E>(event: K, ...args: E[K]): boolean {
    const list = this.#listeners.get(event);
    if (list === undefined || list.length === 0) return false;
    for (const l of [...list]) {
      if (l.once) list.splice(list.indexOf(l), 1);
      try {
        (l.fn as unknown as VsockEventListener<E[K]>)(...args);
      } catch (e) {
        this.#report(e);
      }
    }
    return true;
  }
}

/** What a stream asks of the device that owns it (internal). */
export interface VsockStreamOwner {
  /** Queue `data` for the guest; the device sends it as credit and receive buffers allow. */
  write(stream: VsockStream, data: Uint8Array): void;
  /** Send SHUTDOWN (SEND) once the queued data is out. */
  end(stream: VsockStream): void;
  /** Send RST and forget the connection. */
  destroy(stream: VsockStream): void;
  /** The application consumed `n` bytes: they count as forwarded (credit for the guest). */
  consumed(stream: VsockStream, n: number): void;
  /** Report a throwing listener. */
  report(e: unknown): void;
}

/** Options of {@link VsockDevice.connect} (host side). */
export interface VsockConnectOptions {
  /** Fail with ETIMEDOUT when the guest has not answered after this long. Default 10 000 ms. */
  readonly timeoutMs?: number;
  /** `write` returns false once this many bytes wait to be sent. Default 65536. */
  readonly highWaterMark?: number;
}

/**
 * One stream connection between a host port and a guest port, like a `net.Socket`: `write`
 * returns false above the high-water mark (then wait for `drain`), `data` events deliver what
 * the guest sent (while paused, bytes wait and the guest's credit shrinks: the guest stops
 * sending once our receive buffer is full, VIRTIO 1.3 §5.10.6.3), `end` when the guest sends no
 * more, `close` once the connection is gone.
 */
export class VsockStream extends VsockEmitter<VsockStreamEvents> {
  /** The host port. */
  readonly localPort: number;
  /** The guest's context ID. */
  readonly remoteCid: number;
  /** The guest port. */
  readonly remotePort: number;
  /** Bytes received from the guest. */
  bytesRead = 0;
  /** Bytes sent to the guest (as RW payload). */
  bytesWritten = 0;
  readonly #owner: VsockStreamOwner;
  readonly #hwm: number;
  #state: "connecting" | "open" | "closed" = "connecting";
  #paused = false;
  #held: Uint8Array[] = [];
  #heldBytes = 0;
  #queued = 0;
  #needDrain = false;
  #ended = false;
  #readEnded = false;
  #endPending = false;

  /** @internal */
  constructor(
    owner: VsockStreamOwner,
    localPort: number,
    remoteCid: number,
    remotePort: number,
    highWaterMark: number,
  ) {
    super();
    this.#owner = owner;
    this.localPort = localPort;
    this.remoteCid = remoteCid;
    this.remotePort = remotePort;
    this.#hwm = highWaterMark;
    this.setReporter((e) => owner.report(e));
  }

  /** `connecting` until the guest accepted, `open`, then `closed`. */
  get readyState(): "connecting" | "open" | "closed" {
    return this.#state;
  }

  /** Bytes queued by `write` and not yet sent to the guest. */
  get writableLength(): number {
    return this.#queued;
  }

  /** Whether `end()` was called. */
  get writableEnded(): boolean {
    return this.#ended;
  }

  /** Whether the guest said it sends nothing more. */
  get readableEnded(): boolean {
    return this.#readEnded;
  }

  /** Whether `data` events are paused. */
  get isPaused(): boolean {
    return this.#paused;
  }

  /**
   * Send bytes to the guest (queued until the guest has credit and receive buffers). The
   * array is kept until sent: do not change it.
   * @param data - bytes, or a string sent as UTF-8
   * @returns false once `writableLength` reaches the high-water mark (wait for `drain`)
   * @throws TypeError naming `data`
   */
  write(data: Uint8Array | string): boolean {
    const bytes = typeof data === "string" ? utf8(data) : data;
    if (!(bytes instanceof Uint8Array))
      throw new TypeError("data must be a Uint8Array or a string");
    if (this.#ended || this.#state === "closed") {
      void Promise.resolve().then(() => {
        if (this.#state !== "closed") {
          this.fail(new VsockError("EPIPE", "write after end", this.localPort, this.remotePort));
        }
      });
      return false;
    }
    if (bytes.length > 0) {
      this.#queued += bytes.length;
      this.#owner.write(this, bytes);
    }
    if (this.#queued >= this.#hwm) this.#needDrain = true;
    return this.#queued < this.#hwm;
  }

  /**
   * Send what is queued, then tell the guest we send nothing more (SHUTDOWN with SEND). The
   * connection closes once the guest closes its side too.
   * @param data - last bytes to write first
   */
  end(data?: Uint8Array | string): void {
    if (data !== undefined) this.write(data);
    if (this.#ended || this.#state === "closed") return;
    this.#ended = true;
    if (this.#state === "connecting") this.#endPending = true;
    else this.#owner.end(this);
  }

  /** Reset the connection now (RST): queued bytes are dropped. */
  destroy(): void {
    if (this.#state === "closed") return;
    this.#owner.destroy(this);
  }

  /** Stop `data` events; received bytes wait (and the guest's credit shrinks). */
  pause(): this {
    this.#paused = true;
    return this;
  }

  /** Deliver waiting bytes and resume `data` events. */
  resume(): this {
    this.#paused = false;
    while (!this.#paused && this.#held.length > 0) {
      const b = this.#held.shift()!;
      this.#heldBytes -= b.length;
      this.#owner.consumed(this, b.length);
      this.emit("data", b);
    }
    if (!this.#paused && this.#readEnded && this.#held.length === 0) this.#emitEnd();
    return this;
  }

  // ---- called by the device ----

  /** @internal The guest accepted the connection. */
  opened(): void {
    if (this.#state !== "connecting") return;
    this.#state = "open";
    this.emit("connect");
    if (this.#endPending) this.#owner.end(this);
  }

  /** @internal Bytes from the guest. */
  received(bytes: Uint8Array): void {
    this.bytesRead += bytes.length;
    if (this.#paused || this.#held.length > 0) {
      this.#held.push(bytes);
      this.#heldBytes += bytes.length;
      return;
    }
    this.#owner.consumed(this, bytes.length);
    this.emit("data", bytes);
  }

  /** @internal Bytes still waiting to be read. */
  get heldBytes(): number {
    return this.#heldBytes;
  }

  /** @internal `n` queued bytes went to the guest. */
  sent(n: number): void {
    this.#queued -= n;
    this.bytesWritten += n;
    if (this.#needDrain && this.#queued < this.#hwm) {
      this.#needDrain = false;
      this.emit("drain");
    }
  }

  /** @internal The guest sends nothing more. */
  peerEnded(): void {
    if (this.#readEnded) return;
    this.#readEnded = true;
    if (!this.#paused && this.#held.length === 0) this.#emitEnd();
  }

  #endEmitted = false;
  #emitEnd(): void {
    if (this.#endEmitted) return;
    this.#endEmitted = true;
    this.emit("end");
  }

  /** @internal The connection failed. */
  fail(error: VsockError): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#queued = 0;
    this.emit("error", error);
    this.emit("close", true);
  }

  /** @internal The connection is gone (orderly). */
  closed(): void {
    if (this.#state === "closed") return;
    this.#state = "closed";
    this.#queued = 0;
    this.peerEnded();
    this.emit("close", false);
  }
}

/** A host port the guest can connect to ({@link VsockDevice.listen}), like a `net.Server`. */
export class VsockServer extends VsockEmitter<VsockServerEvents> {
  /** The host port. */
  readonly port: number;
  readonly #close: (s: VsockServer) => void;
  #listening = true;

  /** @internal */
  constructor(port: number, close: (s: VsockServer) => void, report: (e: unknown) => void) {
    super();
    this.port = port;
    this.#close = close;
    this.setReporter(report);
  }

  /** Whether the server still accepts connections. */
  get listening(): boolean {
    return this.#listening;
  }

  /** Stop accepting connections (existing ones go on). */
  close(): void {
    if (!this.#listening) return;
    this.#listening = false;
    this.#close(this);
    this.emit("close");
  }
}
