// A scriptable vhost-user back-end on one end of a socketpair, for front-end tests. It answers
// with whatever bytes a test gives it, including hostile ones.
import { readdirSync } from "node:fs";
import {
  encodeMessage,
  loadNative,
  VhostUserConnection,
  type VhostUserError,
  VhostUserFlag,
  VhostUserFrontend,
  type VhostUserFrontendOptions,
  type VhostUserMessage,
} from "../src/index.js";

export class FakeBackend {
  readonly received: VhostUserMessage[] = [];
  readonly conn: VhostUserConnection;
  readonly fd: number;
  closedWith: VhostUserError | undefined | "open" = "open";
  /** Called for each request; default: nothing (the test replies by hand). */
  onRequest: (m: VhostUserMessage) => void = () => {};
  #waiters: (() => void)[] = [];

  constructor(fd: number) {
    this.fd = fd;
    this.conn = new VhostUserConnection(fd, {
      onMessage: (m) => {
        this.received.push(m);
        this.onRequest(m);
        for (const w of this.#waiters.splice(0)) w();
      },
      onClose: (e) => {
        this.closedWith = e;
        for (const w of this.#waiters.splice(0)) w();
      },
    });
  }

  /** Resolve once `n` requests have arrived (or the connection closed). */
  async waitFor(n: number): Promise<VhostUserMessage[]> {
    while (this.received.length < n && this.closedWith === "open") {
      await new Promise<void>((r) => this.#waiters.push(r));
    }
    return this.received;
  }

  /** Reply properly: flags VERSION|REPLY. */
  reply(request: number, payload?: Uint8Array): void {
    this.conn.send(request, VhostUserFlag.REPLY, payload);
  }

  /** Send raw bytes (a hand-made, possibly hostile header and payload) with optional fds. */
  raw(bytes: Uint8Array, fds: number[] = []): void {
    loadNative().sendMsg(this.fd, bytes, fds);
  }

  /** Send a message with arbitrary flags (version bits included as given). */
  rawMessage(request: number, flags: number, payload?: Uint8Array, fds: number[] = []): void {
    this.raw(encodeMessage(request, flags, payload), fds);
  }
}

/** A front-end and a fake back-end on a socketpair. */
export function pair(options: VhostUserFrontendOptions = {}): {
  fe: VhostUserFrontend;
  be: FakeBackend;
} {
  const [a, b] = loadNative().socketPair();
  return { fe: VhostUserFrontend.fromFd(a, options), be: new FakeBackend(b) };
}

/** Open file descriptors of this process (Linux). */
export function openFds(): number {
  return readdirSync("/proc/self/fd").length;
}

/** Settle a promise into {value} or {error} without throwing. */
export async function outcome<T>(p: Promise<T>): Promise<{ value?: T; error?: unknown }> {
  try {
    return { value: await p };
  } catch (error) {
    return { error };
  }
}
