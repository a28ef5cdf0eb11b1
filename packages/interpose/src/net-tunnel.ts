import {
  createCipheriv,
  createDecipheriv,
  createSecretKey,
  hkdfSync,
  type KeyObject,
  randomBytes,
} from "node:crypto";
import type { NetBackend, NetFrameSink } from "@virtio-ts/devices";

/** EtherType of sealed frames: IEEE 802 "Local Experimental Ethertype 1". */
export const LINK_ETHERTYPE = 0x88b5;
/** Wire format version in byte 14: one frame per carrier frame. */
export const LINK_VERSION = 1;
/**
 * Wire format version in byte 14 of a sealed batch (see {@link EncryptedLinkOptions.batchBytes}):
 * the plaintext is a sequence of frames, each after its length as a u32 big-endian.
 */
export const LINK_VERSION_BATCH = 2;
/** Bytes before each frame inside a sealed batch (its length, u32 big-endian). */
export const LINK_BATCH_ENTRY_LEN = 4;
/** Bytes before the ciphertext: outer Ethernet header (14) + version, role, reserved (4) + session (8) + sequence (8). */
export const LINK_HEADER_LEN = 34;
/** AES-GCM tag length. */
export const LINK_TAG_LEN = 16;
/** Bytes a sealed frame adds to the plaintext frame. */
export const LINK_OVERHEAD = LINK_HEADER_LEN + LINK_TAG_LEN;
/** Frames one direction of one session may seal; {@link EncryptedLinkEnd.rekey} starts a new session. */
export const LINK_MAX_FRAMES = 0x1_0000_0000;

/** Which end of a link: the two ends must have different roles. */
export type LinkRole = "a" | "b";

/** Options of an {@link EncryptedLinkEnd}. */
export interface EncryptedLinkOptions {
  /** This end's role; the peer must have the other one. */
  readonly role: LinkRole;
  /** Width of the replay window in frames (multiple of 32, 32 to 65536). Default 1024. */
  readonly replayWindow?: number;
  /** Largest plaintext frame sealed (bytes). Default 65535. */
  readonly maxFrameSize?: number;
  /** Outer destination MAC on the carrier, `aa:bb:cc:dd:ee:ff`. Default broadcast. */
  readonly outerDst?: string;
  /** Outer source MAC on the carrier. Default a random locally administered address. */
  readonly outerSrc?: string;
  /**
   * Milliseconds since the Unix epoch, used only to pick session ids that grow across restarts.
   * Default `Date.now`.
   */
  readonly now?: () => number;
  /**
   * Seal the frames transmitted in one burst together: frames are gathered (each with a
   * 4-byte length) until this many plaintext bytes or the end of the current task (a
   * microtask), then sealed with one AES-GCM operation into one carrier frame of format
   * {@link LINK_VERSION_BATCH}. node:crypto cannot re-key a GCM context with a new nonce, so a
   * per-frame seal costs a cipher set-up (several µs); a batch pays it once. `transmit` then
   * returns true when the frame is queued, and a carrier that refuses the batch counts all its
   * frames as dropped. A frame too large for a batch is sealed alone. 0 (default): every frame
   * is sealed alone (format {@link LINK_VERSION}). Either end receives both formats. At most
   * the carrier's frame size minus {@link LINK_OVERHEAD} (65503 for the backend-net default).
   */
  readonly batchBytes?: number;
}

/** Counters of one {@link EncryptedLinkEnd}. Counters only grow. */
export interface EncryptedLinkStats {
  /** Frames sealed and accepted by the carrier. */
  readonly txFrames: number;
  /** Frames the device transmitted that were not sent (see the `tx…` drop counters). */
  readonly txDropped: number;
  /** Frames longer than `maxFrameSize`. */
  readonly txOversize: number;
  /** Frames refused because this session sealed {@link LINK_MAX_FRAMES} (call `rekey`). */
  readonly txExhausted: number;
  /** Frames opened and delivered to the device. */
  readonly rxFrames: number;
  /** Carried frames too short, of another EtherType or version, or with a bad header. */
  readonly malformed: number;
  /** Carried frames whose authentication tag did not verify (tampered or wrong key). */
  readonly tampered: number;
  /** Carried frames whose sequence number was already accepted. */
  readonly replayed: number;
  /** Carried frames older than the replay window, or from an earlier session. */
  readonly tooOld: number;
  /** Authentic frames refused because no device was attached. */
  readonly noSink: number;
  /** Sessions the peer started (first one included). */
  readonly peerSessions: number;
}

const ROLE_BYTE: Record<LinkRole, number> = { a: 0x61, b: 0x62 };
const INFO_PREFIX = "virtio-ts encrypted link v1 ";

function parseMac(name: string, mac: string): Uint8Array {
  if (typeof mac !== "string" || !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) {
    throw new RangeError(`${name} must look like aa:bb:cc:dd:ee:ff, got ${JSON.stringify(mac)}`);
  }
  return Uint8Array.from(mac.split(":"), (h) => Number.parseInt(h, 16));
}

function checkBackend(name: string, b: unknown): NetBackend {
  const n = b as NetBackend;
  if (
    typeof b !== "object" ||
    b === null ||
    typeof n.transmit !== "function" ||
    typeof n.attach !== "function" ||
    typeof n.detach !== "function"
  ) {
    throw new TypeError(`${name} must be a NetBackend (transmit, attach, detach)`);
  }
  return n;
}

interface DirectionKeys {
  readonly key: KeyObject;
  /** 4-byte per-session nonce prefix. */
  readonly salt: Uint8Array;
}

/** Per-direction, per-session key and nonce salt: HKDF-SHA256(key, session, label ‖ role). */
function derive(master: Uint8Array, session: Uint8Array, sender: number): DirectionKeys {
  const info = new TextEncoder().encode(INFO_PREFIX + String.fromCharCode(sender));
  const okm = new Uint8Array(hkdfSync("sha256", master, session, info, 36));
  return { key: createSecretKey(okm.subarray(0, 32)), salt: okm.slice(32, 36) };
}

/**
 * One end of an encrypted point-to-point link (a small VPN): a {@link NetBackend} on its
 * plaintext side, wrapping a `carrier` `NetBackend` (a veth end, a socket tunnel, a switch
 * port of an untrusted underlay) that only ever sees sealed frames. Plug the plaintext side into
 * a switch with {@link patchBackends} or hand it to a device.
 *
 * **Sealing.** Each Ethernet frame becomes one carrier frame: an outer Ethernet header with
 * EtherType {@link LINK_ETHERTYPE}, then version, sender role, the sender's 64-bit session id
 * and 64-bit sequence number in clear (all authenticated as AAD), then the frame encrypted with
 * AES-256-GCM and the 16-byte tag. The GCM key and a 4-byte nonce salt are derived per
 * direction and per session with HKDF-SHA256 from the link key; the 96-bit nonce is salt ‖
 * sequence number, so no nonce repeats under a key. A session seals at most
 * {@link LINK_MAX_FRAMES} frames, then refuses to send until {@link EncryptedLinkEnd.rekey}.
 *
 * **Receiving (hostile input).** Every carried frame is checked before it costs a decryption:
 * short, foreign, wrong-role or wrong-version frames count as `malformed`; frames of an earlier
 * peer session or behind the sliding replay window as `tooOld`; already seen sequence numbers
 * as `replayed`; failed tags as `tampered`. A newer peer session (a restarted or rekeyed peer)
 * is adopted only after one of its frames authenticates. All drops are counted, nothing throws,
 * and the receive state is a fixed bitmap.
 *
 * Allocation: Node's GCM needs a cipher object and output buffers per frame; headers are
 * written into one scratch buffer per end.
 */
export class EncryptedLinkEnd implements NetBackend {
  /** The carrier this end sends sealed frames over. */
  readonly carrier: NetBackend;
  /** This end's role. */
  readonly role: LinkRole;
  readonly #master: Uint8Array;
  readonly #now: () => number;
  readonly #maxFrame: number;
  readonly #scratch: Uint8Array;
  readonly #nonce = new Uint8Array(12);
  readonly #stats = {
    txFrames: 0,
    txDropped: 0,
    txOversize: 0,
    txExhausted: 0,
    rxFrames: 0,
    malformed: 0,
    tampered: 0,
    replayed: 0,
    tooOld: 0,
    noSink: 0,
    peerSessions: 0,
  };
  readonly #myRole: number;
  readonly #peerRole: number;
  // Transmit state.
  #txSession = new Uint8Array(8);
  #txKeys: DirectionKeys;
  #txSeq = 0;
  // Receive state: the current peer session, its keys and a replay bitmap.
  readonly #rxSession = new Uint8Array(8);
  #rxKeys: DirectionKeys | undefined;
  /** Cache of the last newer session tried, so a flood of one bad session costs one HKDF. */
  readonly #candSession = new Uint8Array(8);
  #candKeys: DirectionKeys | undefined;
  readonly #window: Uint32Array;
  readonly #windowBits: number;
  /** Highest sequence number accepted in the current peer session, -1 before the first. */
  #top = -1;
  #sink: NetFrameSink | undefined;
  readonly #fromCarrier: NetFrameSink = { deliver: (f) => this.#open(f) };
  // Transmit batching (options.batchBytes): frames with their lengths, gathered in place after
  // the header room of #batchBuf, sealed into #scratch.
  readonly #batchCap: number;
  readonly #batchBuf: Uint8Array;
  #batchLen = 0;
  #batchFrames = 0;
  #batchScheduled = false;
  readonly #flushBatchBound = (): void => {
    this.#batchScheduled = false;
    this.#flushBatch();
  };
  // Receive: the frames of an opened batch the device had no room for yet.
  #held: Uint8Array | undefined = undefined;
  #heldOff = 0;

  /**
   * @param carrier - the back-end sealed frames travel over; this end attaches to it at once
   * @param key - the 32-byte link key shared with the peer (copied)
   * @param options - role (required), replay window, maximum frame size, outer MACs
   * @throws RangeError naming `key` if it is not 32 bytes; RangeError / TypeError naming the
   *   bad option or `carrier`
   */
  constructor(carrier: NetBackend, key: Uint8Array, options: EncryptedLinkOptions) {
    this.carrier = checkBackend("carrier", carrier);
    if (!(key instanceof Uint8Array)) throw new TypeError("key must be a Uint8Array");
    if (key.length !== 32) {
      throw new RangeError(`key must be 32 bytes (AES-256), got ${key.length}`);
    }
    if (typeof options !== "object" || options === null) {
      throw new TypeError("options must be an object with a role");
    }
    if (options.role !== "a" && options.role !== "b") {
      throw new RangeError(`options.role must be "a" or "b", got ${String(options.role)}`);
    }
    const win = options.replayWindow ?? 1024;
    if (!Number.isInteger(win) || win < 32 || win > 65_536 || win % 32 !== 0) {
      throw new RangeError(
        `options.replayWindow must be a multiple of 32 in [32, 65536], got ${win}`,
      );
    }
    const max = options.maxFrameSize ?? 65_535;
    if (!Number.isInteger(max) || max < 14 || max > 1 << 24) {
      throw new RangeError(`options.maxFrameSize must be an integer in [14, 16777216], got ${max}`);
    }
    if (options.now !== undefined && typeof options.now !== "function") {
      throw new TypeError("options.now must be a function");
    }
    this.role = options.role;
    this.#myRole = ROLE_BYTE[options.role];
    this.#peerRole = ROLE_BYTE[options.role === "a" ? "b" : "a"];
    this.#master = key.slice();
    this.#now = options.now ?? Date.now;
    this.#maxFrame = max;
    this.#windowBits = win;
    this.#window = new Uint32Array(win / 32);
    const batch = options.batchBytes ?? 0;
    if (!Number.isInteger(batch) || batch < 0 || batch > 1 << 24) {
      throw new RangeError(`options.batchBytes must be an integer in [0, 16777216], got ${batch}`);
    }
    this.#batchCap = batch;
    this.#batchBuf = new Uint8Array(batch);
    this.#scratch = new Uint8Array(Math.max(max, batch) + LINK_OVERHEAD);
    const dst = parseMac("options.outerDst", options.outerDst ?? "ff:ff:ff:ff:ff:ff");
    let src: Uint8Array;
    if (options.outerSrc !== undefined) {
      src = parseMac("options.outerSrc", options.outerSrc);
    } else {
      src = randomBytes(6);
      src[0] = (src[0]! & 0xfc) | 0x02; // locally administered, unicast
    }
    const s = this.#scratch;
    s.set(dst, 0);
    s.set(src, 6);
    s[12] = LINK_ETHERTYPE >>> 8;
    s[13] = LINK_ETHERTYPE & 0xff;
    s[14] = LINK_VERSION;
    s[15] = this.#myRole;
    s[16] = 0;
    s[17] = 0;
    this.#txKeys = this.#newSession(new Uint8Array(8));
    carrier.attach(this.#fromCarrier);
  }

  /** Counters (a live view). */
  get stats(): EncryptedLinkStats {
    return this.#stats;
  }

  /** Frames this session can still seal before {@link EncryptedLinkEnd.rekey} is needed. */
  get framesLeft(): number {
    return LINK_MAX_FRAMES - this.#txSeq;
  }

  /**
   * Start a new sending session: a new session id (larger than every earlier one), fresh
   * derived keys, sequence numbers from 0. The peer switches over when the first frame of the
   * new session authenticates; frames of the old session still in flight are then dropped as
   * `tooOld`.
   */
  rekey(): void {
    this.#txKeys = this.#newSession(this.#txSession);
  }

  /** Session ids are ms time ‖ 16 random bits, and always grow, so a replayed old session loses. */
  #newSession(previous: Uint8Array): DirectionKeys {
    const prev = new DataView(previous.buffer, previous.byteOffset, 8);
    const prevHigh = prev.getUint32(0);
    const prevLow = prev.getUint32(4);
    const ms = Math.max(0, Math.floor(this.#now()));
    let high = Math.floor(ms / 0x1_0000) >>> 0;
    let low = (((ms & 0xffff) << 16) | (randomBytes(2).readUInt16BE(0) & 0xffff)) >>> 0;
    if (high < prevHigh || (high === prevHigh && low <= prevLow)) {
      high = prevHigh;
      low = prevLow + 1;
      if (low > 0xffff_ffff) {
        low = 0;
        high++;
      }
    }
    const next = new Uint8Array(8);
    const v = new DataView(next.buffer);
    v.setUint32(0, high >>> 0);
    v.setUint32(4, low >>> 0);
    this.#txSession = next;
    this.#txSeq = 0;
    this.#scratch.set(next, 18);
    return derive(this.#master, next, this.#myRole);
  }

  /**
   * Seal one frame and send it over the carrier.
   * @param frame - the plaintext Ethernet frame, valid only during the call
   * @returns false if dropped (oversize, session exhausted, carrier refused)
   */
  transmit(frame: Uint8Array): boolean {
    const st = this.#stats;
    if (frame.length > this.#maxFrame) {
      st.txOversize++;
      st.txDropped++;
      return false;
    }
    const need = LINK_BATCH_ENTRY_LEN + frame.length;
    if (need > this.#batchCap) {
      // Alone (no batching, or too large for a batch), after what is gathered: in order.
      this.#flushBatch();
      if (!this.#seal(LINK_VERSION, frame)) {
        st.txDropped++;
        return false;
      }
      st.txFrames++;
      return true;
    }
    if (this.#batchLen + need > this.#batchCap) this.#flushBatch();
    const b = this.#batchBuf;
    const at = this.#batchLen;
    const n = frame.length;
    b[at] = n >>> 24;
    b[at + 1] = (n >>> 16) & 0xff;
    b[at + 2] = (n >>> 8) & 0xff;
    b[at + 3] = n & 0xff;
    b.set(frame, at + LINK_BATCH_ENTRY_LEN);
    this.#batchLen = at + need;
    this.#batchFrames++;
    if (!this.#batchScheduled) {
      this.#batchScheduled = true;
      queueMicrotask(this.#flushBatchBound);
    }
    return true;
  }

  /** Seal and send the gathered batch, if any; count its frames as sent or dropped. */
  #flushBatch(): void {
    const frames = this.#batchFrames;
    if (frames === 0) return;
    const ok = this.#seal(LINK_VERSION_BATCH, this.#batchBuf.subarray(0, this.#batchLen));
    this.#batchLen = 0;
    this.#batchFrames = 0;
    const st = this.#stats;
    if (ok) st.txFrames += frames;
    else st.txDropped += frames;
  }

  /**
   * Seal `plain` as one carrier frame of format `version` under the next sequence number and
   * send it. False if the session is exhausted or the carrier refused it.
   */
  #seal(version: number, plain: Uint8Array): boolean {
    if (this.#txSeq >= LINK_MAX_FRAMES) {
      this.#stats.txExhausted++;
      return false;
    }
    const seq = this.#txSeq++;
    const s = this.#scratch;
    s[14] = version;
    // Sequence numbers stay below 2^32, so the high word is zero.
    s[26] = 0;
    s[27] = 0;
    s[28] = 0;
    s[29] = 0;
    s[30] = seq >>> 24;
    s[31] = (seq >>> 16) & 0xff;
    s[32] = (seq >>> 8) & 0xff;
    s[33] = seq & 0xff;
    const n = this.#nonce;
    n.set(this.#txKeys.salt, 0);
    n.set(s.subarray(26, 34), 4);
    const c = createCipheriv("aes-256-gcm", this.#txKeys.key, n, { authTagLength: LINK_TAG_LEN });
    c.setAAD(s.subarray(12, LINK_HEADER_LEN));
    let o = LINK_HEADER_LEN;
    const body = c.update(plain);
    s.set(body, o);
    o += body.length;
    const fin = c.final();
    s.set(fin, o);
    o += fin.length;
    s.set(c.getAuthTag(), o);
    o += LINK_TAG_LEN;
    return this.carrier.transmit(s.subarray(0, o));
  }

  /**
   * Deliver opened frames to `sink`.
   * @param sink - the receive path of the device (or switch port patch)
   * @throws TypeError if `sink` has no `deliver` method
   */
  attach(sink: NetFrameSink): void {
    if (typeof sink !== "object" || sink === null || typeof sink.deliver !== "function") {
      throw new TypeError("sink must have a deliver method");
    }
    this.#sink = sink;
  }

  /** Stop delivering (the carrier stays attached; frames arriving meanwhile are counted as `noSink`). */
  detach(): void {
    this.#sink = undefined;
  }

  /**
   * The device has receive buffers again: deliver what is left of a batch it had no room for,
   * then pass the news on to the carrier.
   */
  rxReady(): void {
    if (this.#held !== undefined && !this.#deliverHeld()) return;
    this.carrier.rxReady?.();
  }

  /**
   * Deliver the frames of the held batch from `#heldOff` on. True when all are delivered (or
   * there is no device to deliver to: they are counted `noSink`); false when the device is
   * full again (the rest stays held).
   */
  #deliverHeld(): boolean {
    const b = this.#held!;
    const st = this.#stats;
    let off = this.#heldOff;
    while (off < b.length) {
      const n = ((b[off]! << 24) | (b[off + 1]! << 16) | (b[off + 2]! << 8) | b[off + 3]!) >>> 0;
      const f = b.subarray(off + LINK_BATCH_ENTRY_LEN, off + LINK_BATCH_ENTRY_LEN + n);
      const sink = this.#sink;
      if (sink === undefined) st.noSink++;
      else if (!sink.deliver(f)) {
        this.#heldOff = off;
        return false;
      } else st.rxFrames++;
      off += LINK_BATCH_ENTRY_LEN + n;
    }
    this.#held = undefined;
    this.#heldOff = 0;
    return true;
  }

  /** Returns whether the frame was consumed; false only when the device had no room (retry). */
  #open(f: Uint8Array): boolean {
    const st = this.#stats;
    // The device is still taking a held batch: the carrier keeps this frame and offers it again.
    if (this.#held !== undefined) return false;
    const version = f[14];
    if (
      f.length < LINK_OVERHEAD ||
      f[12] !== LINK_ETHERTYPE >>> 8 ||
      f[13] !== (LINK_ETHERTYPE & 0xff) ||
      (version !== LINK_VERSION && version !== LINK_VERSION_BATCH) ||
      f[15] !== this.#peerRole ||
      f[16] !== 0 ||
      f[17] !== 0 ||
      (f[26]! | f[27]! | f[28]! | f[29]!) !== 0
    ) {
      st.malformed++;
      return true;
    }
    const seq = ((f[30]! << 24) | (f[31]! << 16) | (f[32]! << 8) | f[33]!) >>> 0;
    // Which peer session: current (compare = 0), newer (> 0), or older (< 0).
    let cmp = 0;
    if (this.#rxKeys === undefined) cmp = 1;
    else {
      for (let i = 0; i < 8; i++) {
        const d = f[18 + i]! - this.#rxSession[i]!;
        if (d !== 0) {
          cmp = d;
          break;
        }
      }
    }
    if (cmp < 0) {
      st.tooOld++;
      return true;
    }
    let keys: DirectionKeys;
    if (cmp === 0) {
      const top = this.#top;
      if (seq <= top) {
        if (top - seq >= this.#windowBits) {
          st.tooOld++;
          return true;
        }
        const bit = seq % this.#windowBits;
        if ((this.#window[bit >>> 5]! & (1 << (bit & 31))) !== 0) {
          st.replayed++;
          return true;
        }
      }
      keys = this.#rxKeys as DirectionKeys;
    } else {
      let same = this.#candKeys !== undefined;
      for (let i = 0; same && i < 8; i++) same = f[18 + i] === this.#candSession[i];
      if (!same) {
        this.#candSession.set(f.subarray(18, 26));
        this.#candKeys = derive(this.#master, this.#candSession, this.#peerRole);
      }
      keys = this.#candKeys as DirectionKeys;
    }
    const n = this.#nonce;
    n.set(keys.salt, 0);
    n.set(f.subarray(26, 34), 4);
    let plain: Uint8Array;
    try {
      const d = createDecipheriv("aes-256-gcm", keys.key, n, { authTagLength: LINK_TAG_LEN });
      d.setAAD(f.subarray(12, LINK_HEADER_LEN));
      d.setAuthTag(f.subarray(f.length - LINK_TAG_LEN));
      const a = d.update(f.subarray(LINK_HEADER_LEN, f.length - LINK_TAG_LEN));
      const b = d.final(); // throws on a bad tag
      plain = b.length === 0 ? a : Buffer.concat([a, b]);
    } catch {
      st.tampered++;
      return true;
    }
    if (version === LINK_VERSION_BATCH) {
      // Authentic, so the peer built it; still check that the entries tile the plaintext.
      let off = 0;
      while (off < plain.length) {
        if (plain.length - off < LINK_BATCH_ENTRY_LEN) break;
        const n =
          ((plain[off]! << 24) |
            (plain[off + 1]! << 16) |
            (plain[off + 2]! << 8) |
            plain[off + 3]!) >>>
          0;
        if (n > plain.length - off - LINK_BATCH_ENTRY_LEN) break;
        off += LINK_BATCH_ENTRY_LEN + n;
      }
      if (off !== plain.length || plain.length === 0) {
        st.malformed++;
        return true;
      }
      this.#accept(cmp, f, keys, seq);
      // Delivered from here; what the device cannot take yet waits for its rxReady. As a plain
      // Uint8Array: each frame is a `subarray` of it, and Buffer's own `subarray` (node:buffer)
      // costs far more per call than the typed array's.
      this.#held = new Uint8Array(plain.buffer, plain.byteOffset, plain.length);
      this.#heldOff = 0;
      this.#deliverHeld();
      return true;
    }
    const sink = this.#sink;
    if (sink === undefined) {
      st.noSink++;
      return true;
    }
    if (!sink.deliver(plain)) return false; // not marked seen: the carrier may offer it again
    this.#accept(cmp, f, keys, seq);
    st.rxFrames++;
    return true;
  }

  /** An authentic carrier frame was taken: adopt a newer session, mark its number seen. */
  #accept(cmp: number, f: Uint8Array, keys: DirectionKeys, seq: number): void {
    if (cmp > 0) {
      // An authentic frame of a newer session: adopt it and start a fresh window.
      this.#rxSession.set(f.subarray(18, 26));
      this.#rxKeys = keys;
      this.#candKeys = undefined;
      this.#window.fill(0);
      this.#top = -1;
      this.#stats.peerSessions++;
    }
    this.#markSeen(seq);
  }

  #markSeen(seq: number): void {
    const w = this.#window;
    const bits = this.#windowBits;
    if (seq > this.#top) {
      // Slide: clear the bits of the numbers skipped between the old top and seq.
      if (this.#top < 0 || seq - this.#top >= bits) w.fill(0);
      else {
        for (let s = this.#top + 1; s < seq; s++) {
          const b = s % bits;
          w[b >>> 5] = w[b >>> 5]! & ~(1 << (b & 31));
        }
      }
      this.#top = seq;
    }
    const b = seq % bits;
    w[b >>> 5] = w[b >>> 5]! | (1 << (b & 31));
  }
}

/**
 * Two {@link EncryptedLinkEnd}s, roles `a` and `b`, over two carriers that reach each other
 * (the ends of a veth pair, two sides of a socket tunnel).
 * @param key - the 32-byte link key
 * @param carriers - the carrier under end `a` and the carrier under end `b`
 * @param options - shared options of both ends (role excluded)
 * @returns `[a, b]`
 * @throws RangeError naming `key` if it is not 32 bytes
 *
 * @example
 * ```ts
 * import { encryptedLink } from "@virtio-ts/interpose/node";
 * import type { NetBackend } from "@virtio-ts/devices";
 *
 * declare const carrierA: NetBackend, carrierB: NetBackend;
 * const key = crypto.getRandomValues(new Uint8Array(32));
 * const [a, b] = encryptedLink(key, [carrierA, carrierB]);
 * ```
 */
export function encryptedLink(
  key: Uint8Array,
  carriers: readonly [NetBackend, NetBackend],
  options: Omit<EncryptedLinkOptions, "role"> = {},
): [EncryptedLinkEnd, EncryptedLinkEnd] {
  if (!Array.isArray(carriers) || carriers.length !== 2) {
    throw new TypeError("carriers must be a pair of NetBackends");
  }
  return [
    new EncryptedLinkEnd(carriers[0], key, { ...options, role: "a" }),
    new EncryptedLinkEnd(carriers[1], key, { ...options, role: "b" }),
  ];
}

/**
 * Cable two back-ends together the way a device would use each: frames `a` delivers are
 * transmitted on `b` and the other way round (e.g. a switch port and an
 * {@link EncryptedLinkEnd}). Deliveries are always accepted; a frame the other side drops is
 * counted there.
 * @param a - one back-end
 * @param b - the other
 * @returns a function that detaches both
 * @throws TypeError if either is not a NetBackend
 */
export function patchBackends(a: NetBackend, b: NetBackend): () => void {
  checkBackend("a", a);
  checkBackend("b", b);
  a.attach({
    deliver: (f) => {
      b.transmit(f);
      return true;
    },
  });
  b.attach({
    deliver: (f) => {
      a.transmit(f);
      return true;
    },
  });
  return () => {
    a.detach();
    b.detach();
  };
}
