/**
 * The virtio-net receive filter: the RX modes and the unicast and multicast MAC tables the
 * driver sets through the control queue, and the decision for each received frame.
 * @see VIRTIO 1.3 §5.1.6.5.1, §5.1.6.5.2
 * @module
 */
import type { GuestMemory } from "@virtio-ts/memory";
import { ETH_ALEN, NetCtrlCmd } from "@virtio-ts/spec";
import type { DescriptorChain } from "@virtio-ts/virtqueue";

const MAC_LEN = ETH_ALEN;

/** The receive filter state set through the control queue (§5.1.6.5.1, §5.1.6.5.2). */
export interface NetRxFilter {
  /** VIRTIO_NET_CTRL_RX_PROMISC. */
  readonly promisc: boolean;
  /** VIRTIO_NET_CTRL_RX_ALLMULTI. */
  readonly allmulti: boolean;
  /** VIRTIO_NET_CTRL_RX_ALLUNI. */
  readonly alluni: boolean;
  /** VIRTIO_NET_CTRL_RX_NOMULTI. */
  readonly nomulti: boolean;
  /** VIRTIO_NET_CTRL_RX_NOUNI. */
  readonly nouni: boolean;
  /** VIRTIO_NET_CTRL_RX_NOBCAST. */
  readonly nobcast: boolean;
  /** Unicast MAC table entries (copies). */
  readonly unicast: readonly Uint8Array[];
  /** Multicast MAC table entries (copies). */
  readonly multicast: readonly Uint8Array[];
  /** The unicast table overflowed: every unicast frame passes. */
  readonly unicastOverflow: boolean;
  /** The multicast table overflowed: every multicast frame passes. */
  readonly multicastOverflow: boolean;
}

/** Whether the destination MAC of `f` is one of the first `n` entries of `table`. */
function inTable(table: Uint8Array, n: number, f: Uint8Array): boolean {
  for (let i = 0, at = 0; i < n; i++, at += MAC_LEN) {
    if (
      table[at] === f[0] &&
      table[at + 1] === f[1] &&
      table[at + 2] === f[2] &&
      table[at + 3] === f[3] &&
      table[at + 4] === f[4] &&
      table[at + 5] === f[5]
    ) {
      return true;
    }
  }
  return false;
}

/** The filter (internal to the device). Tables hold at most `entries` addresses each. */
export class RxFilter {
  /** Entries of each table. */
  readonly entries: number;
  promisc = false;
  allmulti = false;
  alluni = false;
  nomulti = false;
  nouni = false;
  nobcast = false;
  #uni: Uint8Array;
  #uniCount = 0;
  #uniOverflow = false;
  #multi: Uint8Array;
  #multiCount = 0;
  #multiOverflow = false;
  /** Staging tables for MAC_TABLE_SET (swapped in on success, so a bad command changes nothing). */
  #uniStage: Uint8Array;
  #multiStage: Uint8Array;
  readonly #count = new Uint8Array(4);

  /** @param entries - entries of each table */
  constructor(entries: number) {
    this.entries = entries;
    this.#uni = new Uint8Array(entries * MAC_LEN);
    this.#multi = new Uint8Array(entries * MAC_LEN);
    this.#uniStage = new Uint8Array(entries * MAC_LEN);
    this.#multiStage = new Uint8Array(entries * MAC_LEN);
  }

  /**
   * Whether the filter passes `f` for a device whose address is `mac`: promiscuous passes all;
   * broadcast passes unless NOBCAST; other multicast fails with NOMULTI, passes with ALLMULTI,
   * a table overflow or a table match; unicast fails with NOUNI, passes with ALLUNI, a table
   * overflow, the device MAC or a table match.
   */
  accepts(f: Uint8Array, mac: Uint8Array): boolean {
    if (this.promisc) return true;
    if ((f[0]! & 1) !== 0) {
      if (
        f[0] === 0xff &&
        f[1] === 0xff &&
        f[2] === 0xff &&
        f[3] === 0xff &&
        f[4] === 0xff &&
        f[5] === 0xff
      ) {
        return !this.nobcast;
      }
      if (this.nomulti) return false;
      if (this.allmulti || this.#multiOverflow) return true;
      return inTable(this.#multi, this.#multiCount, f);
    }
    if (this.nouni) return false;
    if (this.alluni || this.#uniOverflow) return true;
    return inTable(mac, 1, f) || inTable(this.#uni, this.#uniCount, f);
  }

  /**
   * One VIRTIO_NET_CTRL_RX command: set mode `cmd` on or off.
   * @returns false for an unknown command
   */
  setMode(cmd: number, on: boolean): boolean {
    switch (cmd) {
      case NetCtrlCmd.RX_PROMISC:
        this.promisc = on;
        return true;
      case NetCtrlCmd.RX_ALLMULTI:
        this.allmulti = on;
        return true;
      case NetCtrlCmd.RX_ALLUNI:
        this.alluni = on;
        return true;
      case NetCtrlCmd.RX_NOMULTI:
        this.nomulti = on;
        return true;
      case NetCtrlCmd.RX_NOUNI:
        this.nouni = on;
        return true;
      case NetCtrlCmd.RX_NOBCAST:
        this.nobcast = on;
        return true;
      default:
        return false;
    }
  }

  /**
   * MAC_TABLE_SET (§5.1.6.5.2): two `virtio_net_ctrl_mac { le32 entries; u8 macs[entries][6] }`
   * (unicast, then multicast) filling the command's data (from byte 2 of the chain) exactly.
   * Counts are distrusted: each must fit in the bytes left, and entries past the table size set
   * the overflow flag instead of being stored. Parsed into staging tables and swapped in only
   * on success.
   * @returns whether the command was well-formed (and applied)
   */
  setTables(mem: GuestMemory, chain: DescriptorChain): boolean {
    const total = chain.readableBytes;
    const b = this.#count;
    let at = 2;
    let uniCount = 0;
    let uniOverflow = false;
    let multiCount = 0;
    let multiOverflow = false;
    for (let t = 0; t < 2; t++) {
      if (total - at < 4) return false;
      chain.copyFromReadable(mem, at, b);
      at += 4;
      const n = (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
      // n < 2^32, so n * 6 is exact.
      if (n * MAC_LEN > total - at) return false;
      const stage = t === 0 ? this.#uniStage : this.#multiStage;
      const kept = Math.min(n, this.entries);
      for (let i = 0; i < kept; i++) {
        chain.copyFromReadable(mem, at + i * MAC_LEN, stage.subarray(i * MAC_LEN, i * MAC_LEN + 6));
      }
      at += n * MAC_LEN;
      if (t === 0) {
        uniCount = kept;
        uniOverflow = n > kept;
      } else {
        multiCount = kept;
        multiOverflow = n > kept;
      }
    }
    if (at !== total) return false;
    [this.#uni, this.#uniStage] = [this.#uniStage, this.#uni];
    [this.#multi, this.#multiStage] = [this.#multiStage, this.#multi];
    this.#uniCount = uniCount;
    this.#uniOverflow = uniOverflow;
    this.#multiCount = multiCount;
    this.#multiOverflow = multiOverflow;
    return true;
  }

  /** A copy of the state (allocates; for tests, diagnostics and saving). */
  snapshot(): NetRxFilter {
    const list = (t: Uint8Array, n: number): Uint8Array[] =>
      Array.from({ length: n }, (_, i) => t.slice(i * MAC_LEN, i * MAC_LEN + MAC_LEN));
    return {
      promisc: this.promisc,
      allmulti: this.allmulti,
      alluni: this.alluni,
      nomulti: this.nomulti,
      nouni: this.nouni,
      nobcast: this.nobcast,
      unicast: list(this.#uni, this.#uniCount),
      multicast: list(this.#multi, this.#multiCount),
      unicastOverflow: this.#uniOverflow,
      multicastOverflow: this.#multiOverflow,
    };
  }

  /**
   * Take back a state from {@link RxFilter.snapshot} (a resumed device). Tables longer than
   * this filter's are cut and marked overflowed, as MAC_TABLE_SET would.
   */
  restore(s: NetRxFilter): void {
    this.promisc = s.promisc;
    this.allmulti = s.allmulti;
    this.alluni = s.alluni;
    this.nomulti = s.nomulti;
    this.nouni = s.nouni;
    this.nobcast = s.nobcast;
    const fill = (t: Uint8Array, list: readonly Uint8Array[]): number => {
      const n = Math.min(list.length, this.entries);
      for (let i = 0; i < n; i++) t.set(list[i]!.subarray(0, MAC_LEN), i * MAC_LEN);
      return n;
    };
    this.#uniCount = fill(this.#uni, s.unicast);
    this.#uniOverflow = s.unicastOverflow || s.unicast.length > this.entries;
    this.#multiCount = fill(this.#multi, s.multicast);
    this.#multiOverflow = s.multicastOverflow || s.multicast.length > this.entries;
  }

  /** Back to the state after a reset: all modes off, tables empty. */
  reset(): void {
    this.promisc = false;
    this.allmulti = false;
    this.alluni = false;
    this.nomulti = false;
    this.nouni = false;
    this.nobcast = false;
    this.#uniCount = 0;
    this.#multiCount = 0;
    this.#uniOverflow = false;
    this.#multiOverflow = false;
  }
}
