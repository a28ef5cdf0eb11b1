import { VirtioError } from "@virtio-ts/memory";

/** Why a vhost-user connection was closed, or a request failed. */
export type VhostUserErrorCode =
  /** The header's version bits (flags & 3) are not 1. */
  | "bad-version"
  /** The header's flags are not what this side expects (a reply without REPLY, unknown bits). */
  | "bad-flags"
  /** The header announces a payload larger than this side ever accepts (checked before reading it). */
  | "payload-too-large"
  /** The payload size does not match the layout of the message type (or a count inside it). */
  | "bad-size"
  /** More file descriptors than one message may carry, or fds on a message that takes none. */
  | "too-many-fds"
  /** A message this side did not ask for, or a reply to a different request. */
  | "unexpected-message"
  /** A reply whose content is invalid (a GET_VRING_BASE reply for another ring, an empty GET_CONFIG). */
  | "bad-reply"
  /** The back-end lacks a (protocol) feature this side needs. */
  | "unsupported"
  /** REPLY_ACK: the back-end answered a request with a non-zero status. */
  | "nack"
  /** No reply within the reply timeout. */
  | "timeout"
  /** The peer closed the connection (possibly in the middle of a message). */
  | "peer-closed"
  /** The socket failed, or the peer stopped reading and the send buffer is full. */
  | "io-error"
  /** This side closed the connection; requests still waiting are rejected with this. */
  | "closed";

/**
 * A vhost-user peer broke the protocol (QEMU docs/interop/vhost-user.rst), or the connection
 * ended. Everything read from the socket is untrusted: any violation closes that connection
 * (and only that one) with this error. `request` is the message type involved (0 if none),
 * `value` the offending number (a size, a flags word, an fd count, a status).
 */
export class VhostUserError extends VirtioError {
  /** What went wrong. */
  readonly code: VhostUserErrorCode;
  /** The message type (`VhostUserRequest`) involved, or 0. */
  readonly request: number;
  /** The offending value, when there is one (otherwise 0). */
  readonly value: number;

  /**
   * @param code - what went wrong
   * @param message - human-readable detail
   * @param request - message type involved (0 if none)
   * @param value - offending value (0 if none)
   */
  constructor(code: VhostUserErrorCode, message: string, request = 0, value = 0) {
    super(`vhost-user ${code}: ${message}`);
    this.code = code;
    this.request = request;
    this.value = value;
  }
}

/**
 * Why the back-end closed a connection: the base {@link VhostUserError} code, plus a finer
 * `reason` for what the front-end did wrong.
 */
export type VhostUserBackendReason =
  /** A request that needs SET_OWNER (or other set-up) first, or one not allowed while the ring runs. */
  | "bad-state"
  /** SET_MEM_TABLE regions that overlap, are empty, exceed their fd, or cannot be mapped. */
  | "bad-region"
  /** A vring address outside every memory region, or a ring that does not fit in one. */
  | "bad-address"
  /** A number out of range: ring index, size, base, feature bits. */
  | "bad-value"
  /** A request or feature this back-end does not implement. */
  | "unsupported"
  /** Another connection is serving the device. */
  | "busy"
  /** The device model threw something other than a VirtioError (a bug), or a system call failed. */
  | "internal";

/** A front-end broke vhost-user.rst; the connection was closed with this error. */
export class VhostUserBackendError extends VhostUserError {
  /** What the front-end did wrong. */
  readonly reason: VhostUserBackendReason;

  /**
   * @param reason - the finer reason
   * @param message - human-readable detail
   * @param request - message type involved
   * @param value - offending value
   */
  constructor(reason: VhostUserBackendReason, message: string, request = 0, value = 0) {
    const code: VhostUserErrorCode =
      reason === "unsupported"
        ? "unsupported"
        : reason === "internal"
          ? "io-error"
          : "unexpected-message";
    super(code, `${reason}: ${message}`, request, value);
    this.reason = reason;
  }
}
