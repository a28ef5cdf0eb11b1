import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";
import {
  checkCount,
  DEFAULT_MAX_FRAME_SIZE,
  Endpoint,
  ETH_HEADER_LEN,
  type NetPortStats,
  type NetQueueOptions,
} from "./endpoint.js";

/** Options of a {@link Switch}. */
export interface SwitchOptions {
  /** Longest frame accepted (bytes, Ethernet header included, no FCS). Default 65553. */
  readonly maxFrameSize?: number;
  /**
   * A learned address is forgotten this long after it was last seen as a source (ms). Default
   * 300 000, the Linux bridge and IEEE 802.1D default.
   */
  readonly agingTimeMs?: number;
  /**
   * Size of the MAC table. When full, learning a new address evicts the one least recently
   * seen (to within an eighth of the aging time). Default 4096.
   */
  readonly maxMacEntries?: number;
  /** Millisecond clock used for aging; inject a fake one in tests. Default `performance.now`. */
  readonly now?: () => number;
  /**
   * How deep forwarding may re-enter the switch (a device transmitting from inside `deliver`)
   * before frames are dropped as `loop`. Default 8.
   */
  readonly maxForwardDepth?: number;
}

/** Options of one {@link SwitchPort}. */
export interface SwitchPortOptions extends NetQueueOptions {
  /** A label for diagnostics. Default `port<N>`. */
  readonly name?: string;
}

/** One learned address, as returned by {@link Switch.macTable}. */
export interface MacTableEntry {
  /** The address, `aa:bb:cc:dd:ee:ff`. */
  readonly mac: string;
  /** The port it was last seen on. */
  readonly port: SwitchPort;
  /** Milliseconds since it was last seen. */
  readonly ageMs: number;
}

/** Switch-wide counters. Counters only grow. */
export interface SwitchStats {
  /** New addresses learned. */
  readonly learned: number;
  /** Addresses evicted because the table was full. */
  readonly evicted: number;
  /** Addresses forgotten because they aged out. */
  readonly aged: number;
  /** Frames sent to exactly one port (known unicast). */
  readonly forwarded: number;
  /** Frames flooded to every other port (broadcast, multicast, unknown unicast). */
  readonly flooded: number;
}

interface MacEntry {
  port: SwitchPort;
  lastSeen: number;
  /** When the entry was last moved to the end of the map's insertion order. */
  orderedAt: number;
}

const defaultNow = (): number => performance.now();

/**
 * A 48-bit MAC as a number (exact: below 2^53), read from `frame` at `at`. Cannot read past the
 * end: callers checked the frame is at least {@link ETH_HEADER_LEN} bytes.
 */
function macKey(frame: Uint8Array, at: number): number {
  return (
    ((frame[at]! << 8) | frame[at + 1]!) * 0x1_0000_0000 +
    ((frame[at + 2]! << 24) >>> 0) +
    (frame[at + 3]! << 16) +
    (frame[at + 4]! << 8) +
    frame[at + 5]!
  );
}

function macString(key: number): string {
  return key
    .toString(16)
    .padStart(12, "0")
    .replace(/(..)(?!$)/g, "$1:");
}

function parseMac(mac: string): number {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) {
    throw new RangeError(`mac must look like aa:bb:cc:dd:ee:ff, got ${JSON.stringify(mac)}`);
  }
  return Number.parseInt(mac.replaceAll(":", ""), 16);
}

/**
 * An L2 learning switch (IEEE 802.1D transparent bridging, without spanning tree). Each
 * {@link Switch.createPort} returns a {@link SwitchPort}, a `NetBackend` to hand to one
 * device (a virtio-net device, a tunnel, a veth end).
 *
 * - **Learning.** The source address of every accepted frame is recorded against its ingress
 *   port (multicast sources are never learned). Entries age out after `agingTimeMs`; the table
 *   holds at most `maxMacEntries`, evicting the least recently seen, so a MAC flood from a
 *   hostile guest costs bounded memory (and degrades to flooding, like a hardware switch).
 * - **Forwarding.** Known unicast goes to the one port that address was learned on (dropped as
 *   `sameSegment` if that is the ingress port); broadcast, multicast and unknown unicast are
 *   flooded to every other port, never back to the ingress port.
 * - **Receive queues.** A port whose device refuses a frame (no receive buffers) keeps it in a
 *   bounded queue until {@link SwitchPort.rxReady}; beyond the bound frames are dropped and
 *   counted. One slow port never holds up the others.
 *
 * Everything runs synchronously inside {@link SwitchPort.transmit}. The forwarding path
 * allocates no buffers or objects per frame (MACs are looked up as numbers, queued frames are
 * copied into a preallocated arena); learning a new address allocates its table entry.
 *
 * @example
 * ```ts
 * import { Switch } from "@virtio-ts/backend-net";
 *
 * const sw = new Switch({ agingTimeMs: 60_000 });
 * const a = sw.createPort({ name: "vm-a" });
 * const b = sw.createPort({ name: "vm-b" });
 * b.attach({ deliver: (frame) => (console.log("b got", frame.length), true) });
 * const frame = new Uint8Array(60).fill(0xff, 0, 6); // broadcast
 * a.transmit(frame); // flooded to b
 * ```
 */
export class Switch {
  readonly #maxFrameSize: number;
  readonly #agingMs: number;
  readonly #refreshMs: number;
  readonly #maxEntries: number;
  readonly #maxDepth: number;
  readonly #now: () => number;
  readonly #macs = new Map<number, MacEntry>();
  /** Replaced, never mutated, so a flood iterating it survives a port closing mid-flood. */
  #ports: readonly SwitchPort[] = [];
  #depth = 0;
  #nextPort = 0;
  readonly #stats = { learned: 0, evicted: 0, aged: 0, forwarded: 0, flooded: 0 };

  /**
   * @param options - frame size, aging, table size, clock
   * @throws RangeError / TypeError naming the bad option
   */
  constructor(options: SwitchOptions = {}) {
    this.#maxFrameSize = checkCount(
      "options.maxFrameSize",
      options.maxFrameSize ?? DEFAULT_MAX_FRAME_SIZE,
      ETH_HEADER_LEN,
      1 << 24,
    );
    const aging = options.agingTimeMs ?? 300_000;
    if (typeof aging !== "number" || !(aging > 0) || !Number.isFinite(aging)) {
      throw new RangeError(`options.agingTimeMs must be a positive finite number, got ${aging}`);
    }
    this.#agingMs = aging;
    this.#refreshMs = aging / 8;
    this.#maxEntries = checkCount(
      "options.maxMacEntries",
      options.maxMacEntries ?? 4096,
      1,
      1 << 24,
    );
    this.#maxDepth = checkCount("options.maxForwardDepth", options.maxForwardDepth ?? 8, 1, 1024);
    const now = options.now ?? defaultNow;
    if (typeof now !== "function") throw new TypeError("options.now must be a function");
    this.#now = now;
  }

  /** The largest frame the switch accepts. */
  get maxFrameSize(): number {
    return this.#maxFrameSize;
  }

  /** The open ports, in creation order. */
  get ports(): readonly SwitchPort[] {
    return this.#ports;
  }

  /** Switch-wide counters (a live view). */
  get stats(): Readonly<SwitchStats> {
    return this.#stats;
  }

  /**
   * Add a port.
   * @param options - name and receive-queue bounds
   * @returns the new port, a `NetBackend`
   * @throws RangeError / TypeError naming the bad option
   */
  createPort(options: SwitchPortOptions = {}): SwitchPort {
    const name = options.name ?? `port${this.#nextPort}`;
    if (typeof name !== "string") throw new TypeError("options.name must be a string");
    this.#nextPort++;
    const port = new SwitchPort(this, name, new Endpoint(options), PORT_TOKEN);
    this.#ports = [...this.#ports, port];
    return port;
  }

  /**
   * The port `mac` was learned on, if it has not aged out.
   * @param mac - `aa:bb:cc:dd:ee:ff`
   * @throws RangeError if `mac` is malformed
   */
  lookup(mac: string): SwitchPort | undefined {
    const key = parseMac(mac);
    const entry = this.#macs.get(key);
    if (entry === undefined) return undefined;
    if (this.#now() - entry.lastSeen > this.#agingMs) {
      this.#macs.delete(key);
      this.#stats.aged++;
      return undefined;
    }
    return entry.port;
  }

  /** A snapshot of the MAC table (aged entries are removed first), oldest first. */
  macTable(): MacTableEntry[] {
    this.expire();
    const now = this.#now();
    const out: MacTableEntry[] = [];
    for (const [key, e] of this.#macs) {
      out.push({ mac: macString(key), port: e.port, ageMs: now - e.lastSeen });
    }
    return out;
  }

  /** Forget every address that has aged out (done lazily anyway; call it to reclaim memory). */
  expire(): void {
    const now = this.#now();
    for (const [key, e] of this.#macs) {
      if (now - e.lastSeen > this.#agingMs) {
        this.#macs.delete(key);
        this.#stats.aged++;
      }
    }
  }

  /** Forget every learned address. */
  flushMacTable(): void {
    this.#macs.clear();
  }

  /** @internal Called by {@link SwitchPort.transmit} once the frame passed its checks. */
  forward(ingress: SwitchPort, frame: Uint8Array, endpoint: Endpoint): boolean {
    const len = frame.length;
    if (len < ETH_HEADER_LEN) {
      endpoint.stats.drops.runt++;
      return false;
    }
    if (len > this.#maxFrameSize) {
      endpoint.stats.drops.oversize++;
      return false;
    }
    if (this.#depth >= this.#maxDepth) {
      endpoint.stats.drops.loop++;
      return false;
    }
    endpoint.stats.rxFrames++;
    endpoint.stats.rxBytes += len;
    const now = this.#now();
    // Bit 0 of the first octet is the I/G bit: set for group (multicast/broadcast) addresses.
    if ((frame[6]! & 1) === 0) this.#learn(macKey(frame, 6), ingress, now);
    this.#depth++;
    try {
      if ((frame[0]! & 1) === 0) {
        const key = macKey(frame, 0);
        const entry = this.#macs.get(key);
        if (entry !== undefined) {
          if (now - entry.lastSeen <= this.#agingMs) {
            if (entry.port === ingress) {
              endpoint.stats.drops.sameSegment++;
            } else {
              this.#stats.forwarded++;
              entry.port.offer(frame);
            }
            return true;
          }
          this.#macs.delete(key);
          this.#stats.aged++;
        }
      }
      this.#stats.flooded++;
      const ports = this.#ports;
      for (let i = 0; i < ports.length; i++) {
        const p = ports[i]!;
        if (p !== ingress && !p.closed) p.offer(frame);
      }
      return true;
    } finally {
      this.#depth--;
    }
  }

  #learn(key: number, port: SwitchPort, now: number): void {
    const entry = this.#macs.get(key);
    if (entry !== undefined) {
      // Move to the end of insertion order (the eviction order) at most every refreshMs, so
      // steady traffic from a known address costs no Map churn.
      if (entry.port !== port || now - entry.orderedAt >= this.#refreshMs) {
        this.#macs.delete(key);
        this.#macs.set(key, entry);
        entry.orderedAt = now;
      }
      entry.port = port;
      entry.lastSeen = now;
      return;
    }
    if (this.#macs.size >= this.#maxEntries) {
      const oldest = this.#macs.entries().next().value!;
      this.#macs.delete(oldest[0]);
      if (now - oldest[1].lastSeen > this.#agingMs) this.#stats.aged++;
      else this.#stats.evicted++;
    }
    this.#macs.set(key, { port, lastSeen: now, orderedAt: now });
    this.#stats.learned++;
  }

  /** @internal Called by {@link SwitchPort.close}. */
  removePort(port: SwitchPort): void {
    this.#ports = this.#ports.filter((p) => p !== port);
    for (const [key, e] of this.#macs) if (e.port === port) this.#macs.delete(key);
  }
}

const PORT_TOKEN: unique symbol = Symbol("SwitchPort");

/**
 * One port of a {@link Switch}: the `NetBackend` a device uses. Frames the device
 * transmits enter the switch; frames the switch forwards here are delivered to the attached
 * sink, or queued (bounded) while the sink refuses them, or dropped and counted.
 */
export class SwitchPort implements NetBackend {
  /** The switch this port belongs to. */
  readonly switch: Switch;
  /** The label given at creation. */
  readonly name: string;
  readonly #endpoint: Endpoint;
  #closed = false;

  /** @internal Use {@link Switch.createPort}. */
  constructor(sw: Switch, name: string, endpoint: Endpoint, token: typeof PORT_TOKEN) {
    if (token !== PORT_TOKEN) throw new TypeError("use Switch.createPort to create a port");
    this.switch = sw;
    this.name = name;
    this.#endpoint = endpoint;
  }

  /** Counters of this port (a live view). */
  get stats(): NetPortStats {
    return this.#endpoint.stats;
  }

  /** Frames waiting in the receive queue. */
  get queuedFrames(): number {
    return this.#endpoint.ring.length;
  }

  /** Bytes waiting in the receive queue. */
  get queuedBytes(): number {
    return this.#endpoint.ring.bytes;
  }

  /** Whether {@link SwitchPort.close} was called. */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Forward one frame from the device into the switch (copied wherever it is kept).
   * @param frame - a plain Ethernet frame, valid only during the call
   * @returns false if the frame was dropped at ingress (runt, oversize, loop, port closed)
   */
  transmit(frame: Uint8Array): boolean {
    if (this.#closed) {
      this.#endpoint.stats.drops.down++;
      return false;
    }
    return this.switch.forward(this, frame, this.#endpoint);
  }

  /**
   * Deliver forwarded frames to `sink` from now on; queued frames are delivered at once.
   * @param sink - the device's receive path
   * @throws TypeError if `sink` has no `deliver` method
   */
  attach(sink: NetFrameSink): void {
    if (this.#closed) throw new RangeError("port is closed");
    this.#endpoint.attach(sink);
  }

  /** Stop delivering; queued frames are dropped (counted as `down`). */
  detach(): void {
    this.#endpoint.detach();
  }

  /** The device has receive buffers again: deliver queued frames until it refuses one. */
  rxReady(): void {
    this.#endpoint.flush();
  }

  /** Remove the port from the switch and forget its addresses. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#endpoint.detach();
    this.switch.removePort(this);
  }

  /** @internal */
  offer(frame: Uint8Array): void {
    this.#endpoint.offer(frame);
  }
}
