/**
 * The back-end request channel (vhost-user.rst "Back-end communication",
 * VHOST_USER_PROTOCOL_F_BACKEND_REQ, `SLAVE_REQ` in QEMU 7.2's text): a second socket the
 * front-end hands over with SET_BACKEND_REQ_FD, on which the back-end sends requests — here
 * CONFIG_CHANGE_MSG, so that a configuration change (a disk that grew) reaches the guest.
 * @module
 */
import { VhostUserConnection } from "./connection.js";
import { VhostUserError } from "./errors.js";
import { VhostUserBackendRequest, VhostUserFlag } from "./messages.js";
import { loadNative } from "./native.js";

/**
 * One back-end request channel. The front-end is untrusted here too: a message that is not a
 * reply, or one with fds, closes the channel (and only the channel) with a
 * {@link VhostUserError}; requests are sent without NEED_REPLY, so no reply is ever awaited.
 */
export class BackendChannel {
  readonly #conn: VhostUserConnection;
  readonly #onClose: (error: VhostUserError | undefined) => void;
  /** Messages sent. */
  sent = 0;

  /**
   * @param fd - the socket from SET_BACKEND_REQ_FD (owned from now on)
   * @param onClose - the channel closed (error undefined for an orderly hang-up)
   */
  constructor(fd: number, onClose: (error: VhostUserError | undefined) => void) {
    this.#onClose = onClose;
    this.#conn = new VhostUserConnection(fd, {
      onMessage: (m) => {
        if (m.fds.length > 0) {
          const n = loadNative();
          for (const fd of m.fds) n.closeFd(fd);
          this.#conn.close(
            new VhostUserError("too-many-fds", "fds on the back-end channel", m.request),
          );
          return;
        }
        if ((m.flags & VhostUserFlag.REPLY) === 0) {
          this.#conn.close(
            new VhostUserError(
              "unexpected-message",
              `the front-end sent request ${m.request} on the back-end channel`,
              m.request,
            ),
          );
        }
        // A reply (to a request a future version sends with NEED_REPLY): nothing waits for it.
      },
      onClose: (e) => this.#onClose(e?.code === "peer-closed" ? undefined : e),
    });
  }

  /** Whether the channel is closed. */
  get closed(): boolean {
    return this.#conn.closed;
  }

  /**
   * VHOST_USER_BACKEND_CONFIG_CHANGE_MSG (2): the configuration space changed; the front-end
   * reads it again with GET_CONFIG and notifies the guest.
   * @returns false if the channel is closed
   */
  configChanged(): boolean {
    const ok = this.#conn.send(VhostUserBackendRequest.CONFIG_CHANGE_MSG, 0);
    if (ok) this.sent++;
    return ok;
  }

  /** Close the channel (idempotent). */
  close(): void {
    this.#conn.close();
  }
}
