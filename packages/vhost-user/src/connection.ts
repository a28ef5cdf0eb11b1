/**
 * One vhost-user connection: framing over an AF_UNIX stream socket with SCM_RIGHTS, for either
 * side (front-end or back-end). It reads whole messages (header, then exactly `size` payload
 * bytes, with the fds that came with them) and sends whole messages; what a message means is
 * the caller's business.
 * @module
 */
import { VhostUserError } from "./errors.js";
import {
  decodeHeader,
  encodeMessage,
  requestName,
  VHOST_USER_HEADER_SIZE,
  VHOST_USER_MAX_FDS,
  VHOST_USER_MAX_PAYLOAD,
  VhostUserFlag,
  type VhostUserMessage,
} from "./messages.js";
import { loadNative, type NativeWatch, type VhostUserNative } from "./native.js";

/** Callbacks of a {@link VhostUserConnection}. */
export interface VhostUserConnectionHandlers {
  /**
   * A whole message arrived; its fds are now the handler's (close those it does not keep). The
   * handler may close the connection. Called from the event loop.
   */
  readonly onMessage: (message: VhostUserMessage) => void;
  /**
   * The connection closed, exactly once: `error` says why (undefined when this side closed it
   * without an error). Every fd the connection still held is closed by then.
   */
  readonly onClose: (error: VhostUserError | undefined) => void;
}

/**
 * Messages handled per readiness callback before yielding to the event loop (the watcher is
 * level-triggered, so the rest is read on the next turn): a flooding peer cannot starve others.
 */
const MAX_MESSAGES_PER_TURN = 64;

/**
 * Framing of one vhost-user socket (QEMU docs/interop/vhost-user.rst "Message Specification").
 *
 * The peer is untrusted. Each of these closes this connection, and only this one, with a
 * {@link VhostUserError} passed to `onClose`: version bits other than 1 ("bad-version"), a
 * payload size above {@link VHOST_USER_MAX_PAYLOAD} ("payload-too-large", checked from the
 * header before any payload is read), more than {@link VHOST_USER_MAX_FDS} fds on one message
 * or fds cut off by the kernel ("too-many-fds"), end of stream ("peer-closed"), a socket error
 * or a full send buffer ("io-error"). Buffers are bounded by those limits; fds received with a
 * rejected message are closed. Nothing thrown by the peer's input escapes to the event loop.
 *
 * Sending is synchronous and all-or-nothing: control messages are small, so a send that would
 * block means the peer stopped reading, and the connection is closed ("io-error").
 */
export class VhostUserConnection {
  readonly #n: VhostUserNative;
  readonly #fd: number;
  readonly #handlers: VhostUserConnectionHandlers;
  readonly #watch: NativeWatch;
  readonly #header = new Uint8Array(VHOST_USER_HEADER_SIZE);
  #headerGot = 0;
  #request = 0;
  #flags = 0;
  #payload: Uint8Array | undefined;
  #payloadGot = 0;
  #fds: number[] = [];
  #closed = false;

  /**
   * Take ownership of a connected AF_UNIX stream socket and start reading it.
   * @param fd - the socket (made non-blocking by the addon's `connectUnix` / `socketPair`)
   * @param handlers - message and close callbacks
   * @throws RangeError naming `fd`; NativeAddonMissingError if the addon is not built
   */
  constructor(fd: number, handlers: VhostUserConnectionHandlers) {
    if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
      throw new RangeError(`fd must be a file descriptor number, got ${fd}`);
    }
    if (typeof handlers?.onMessage !== "function" || typeof handlers.onClose !== "function") {
      throw new TypeError("handlers must have onMessage and onClose functions");
    }
    this.#n = loadNative();
    this.#fd = fd;
    this.#handlers = handlers;
    this.#watch = this.#n.watch(fd, (status) => this.#readable(status));
  }

  /**
   * Connect to a vhost-user back-end listening on a unix socket.
   * @param path - socket path
   * @param handlers - message and close callbacks
   * @returns the connection
   * @throws TypeError naming `path`; Error with `code` "E<errno>" if the connect fails
   */
  static connect(path: string, handlers: VhostUserConnectionHandlers): VhostUserConnection {
    if (typeof path !== "string" || path.length === 0 || Buffer.byteLength(path) > 107) {
      throw new TypeError(`path must be a unix socket path of 1 to 107 bytes, got ${String(path)}`);
    }
    const n = loadNative();
    const fd = n.connectUnix(path);
    try {
      return new VhostUserConnection(fd, handlers);
    } catch (e) {
      n.closeFd(fd);
      throw e;
    }
  }

  /** Whether the connection is closed. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Send one message with `fds` attached (they stay open here: the peer gets its own copies).
   * @param request - message type
   * @param flags - flags; the version bits are set to 1 here
   * @param payload - payload bytes
   * @param fds - file descriptors for SCM_RIGHTS (at most 8)
   * @returns true if sent; false if the connection is (now) closed, in which case `onClose`
   *   has been called with the reason
   * @throws RangeError naming `request`, `flags`, `payload` or `fds` (host misuse)
   */
  send(request: number, flags: number, payload?: Uint8Array, fds: readonly number[] = []): boolean {
    if (!Array.isArray(fds) || fds.length > VHOST_USER_MAX_FDS) {
      throw new RangeError(`fds must be an array of at most ${VHOST_USER_MAX_FDS} fds`);
    }
    for (const [i, fd] of fds.entries()) {
      if (!Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff) {
        throw new RangeError(`fds[${i}] must be a file descriptor number, got ${fd}`);
      }
    }
    const bytes = encodeMessage(
      request,
      ((flags >>> 0) & ~VhostUserFlag.VERSION_MASK) | VhostUserFlag.VERSION,
      payload,
    );
    if (this.#closed) return false;
    let sent: number;
    try {
      sent = this.#n.sendMsg(this.#fd, bytes, fds);
    } catch (e) {
      const code = (e as { code?: string }).code;
      this.close(
        code === "E32" || code === "E104"
          ? new VhostUserError(
              "peer-closed",
              `the peer closed the connection (sending ${requestName(request)})`,
              request,
            )
          : new VhostUserError("io-error", `sendmsg failed: ${(e as Error).message}`, request),
      );
      return false;
    }
    if (sent !== bytes.length) {
      this.close(
        new VhostUserError(
          "io-error",
          `the peer is not reading: the socket buffer is full (sending ${requestName(request)})`,
          request,
          Math.max(sent, 0),
        ),
      );
      return false;
    }
    return true;
  }

  /**
   * Close the connection (idempotent): stop reading, close the socket and every fd received
   * but not yet delivered, then call `onClose(error)`.
   * @param error - why, or undefined for an orderly close
   */
  close(error?: VhostUserError): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#n.unwatch(this.#watch);
    this.#closeFds(this.#fds);
    this.#fds = [];
    this.#payload = undefined;
    try {
      this.#n.closeFd(this.#fd);
    } catch {
      // Nothing useful to do: the fd is gone either way on Linux.
    }
    this.#handlers.onClose(error);
  }

  #closeFds(fds: readonly number[]): void {
    for (const fd of fds) {
      try {
        this.#n.closeFd(fd);
      } catch {
        // Already closed (EBADF): nothing to release.
      }
    }
  }

  #readable(status: number): void {
    if (this.#closed) return;
    if (status < 0) {
      this.close(new VhostUserError("io-error", `poll failed (status ${status})`));
      return;
    }
    try {
      for (let i = 0; i < MAX_MESSAGES_PER_TURN && !this.#closed; ) {
        const r = this.#readSome();
        if (r === "wait") return;
        if (r === "message") i++;
      }
    } catch (e) {
      // A bug or an addon failure must not escape into the event loop: end this connection.
      this.close(
        e instanceof VhostUserError
          ? e
          : new VhostUserError("io-error", `reading failed: ${(e as Error).message}`),
      );
    }
  }

  /** One recvmsg: "wait" when nothing is available, "message" when one was delivered. */
  #readSome(): "wait" | "more" | "message" {
    const inHeader = this.#headerGot < VHOST_USER_HEADER_SIZE;
    const into = inHeader
      ? this.#header.subarray(this.#headerGot)
      : (this.#payload as Uint8Array).subarray(this.#payloadGot);
    const [n, fds, truncated] = this.#n.recvMsg(this.#fd, into, VHOST_USER_MAX_FDS);
    // Take ownership first, so every later error path closes them.
    for (const fd of fds) this.#fds.push(fd);
    if (truncated || this.#fds.length > VHOST_USER_MAX_FDS) {
      this.close(
        new VhostUserError(
          "too-many-fds",
          `a message carried more than ${VHOST_USER_MAX_FDS} file descriptors`,
          this.#request,
          this.#fds.length,
        ),
      );
      return "wait";
    }
    if (n < 0) return "wait";
    if (n === 0) {
      const mid = this.#headerGot > 0;
      this.close(
        new VhostUserError(
          "peer-closed",
          mid
            ? "the peer closed the connection in the middle of a message"
            : "the peer closed the connection",
          mid ? this.#request : 0,
        ),
      );
      return "wait";
    }
    if (inHeader) {
      this.#headerGot += n;
      if (this.#headerGot < VHOST_USER_HEADER_SIZE) return "more";
      const h = decodeHeader(this.#header);
      this.#request = h.request;
      this.#flags = h.flags;
      if ((h.flags & VhostUserFlag.VERSION_MASK) !== VhostUserFlag.VERSION) {
        this.close(
          new VhostUserError(
            "bad-version",
            `${requestName(h.request)} has version ${h.flags & VhostUserFlag.VERSION_MASK} (flags 0x${h.flags.toString(16)}), expected 1`,
            h.request,
            h.flags,
          ),
        );
        return "wait";
      }
      if (h.size > VHOST_USER_MAX_PAYLOAD) {
        this.close(
          new VhostUserError(
            "payload-too-large",
            `${requestName(h.request)} announces a ${h.size}-byte payload (max ${VHOST_USER_MAX_PAYLOAD})`,
            h.request,
            h.size,
          ),
        );
        return "wait";
      }
      this.#payload = new Uint8Array(h.size);
      this.#payloadGot = 0;
    } else {
      this.#payloadGot += n;
    }
    const payload = this.#payload as Uint8Array;
    if (this.#payloadGot < payload.length) return "more";
    const message: VhostUserMessage = {
      request: this.#request,
      flags: this.#flags,
      size: payload.length,
      payload,
      fds: this.#fds,
    };
    this.#fds = [];
    this.#headerGot = 0;
    this.#payload = undefined;
    this.#payloadGot = 0;
    this.#handlers.onMessage(message);
    return "message";
  }
}
