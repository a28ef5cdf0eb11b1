/**
 * The back-end of a virtio-rng device: {@link EntropySource}, where the device gets its random
 * bytes, and the default one, {@link CryptoEntropySource} (Web Crypto).
 * @see VIRTIO 1.3 §5.4 "Entropy Device"
 * @module
 */

/**
 * Where the entropy device gets its random bytes.
 *
 * Implementer contract: `fill(buf)` overwrites every byte of `buf` with random bytes, or
 * throws. `buf` may be a view of guest memory (possibly over a `SharedArrayBuffer`) and is
 * valid only during the call; it is at most `RNG_MAX_REQUEST_BYTES` (1 MiB) long. Never keep it,
 * never block for long (the device calls it from its queue loop).
 */
export interface EntropySource {
  /**
   * Fill `buf` with random bytes.
   * @param buf - the bytes to overwrite (all of them)
   */
  fill(buf: Uint8Array): void;
}

/** `crypto.getRandomValues` fills at most this many bytes per call (Web Crypto quota). */
const CRYPTO_QUOTA = 65536;

/** The part of Web Crypto a {@link CryptoEntropySource} uses (`globalThis.crypto` has it). */
export interface CryptoLike {
  /**
   * Fill `a` (at most 65536 bytes) with random bytes and return it.
   * @param a - the bytes to overwrite
   */
  getRandomValues(a: Uint8Array): Uint8Array;
}

/**
 * The default {@link EntropySource}: `globalThis.crypto.getRandomValues`, called in chunks of at
 * most 65536 bytes (the Web Crypto quota). Views over a `SharedArrayBuffer` (shared guest
 * memory) are filled through a private 64 KiB scratch buffer, because `getRandomValues` may
 * refuse shared memory; nothing else is allocated after construction.
 */
export class CryptoEntropySource implements EntropySource {
  readonly #crypto: CryptoLike;
  #scratch: Uint8Array | undefined;

  /**
   * @param crypto - an object with `getRandomValues` (default `globalThis.crypto`)
   * @throws TypeError naming `crypto` if there is none
   */
  constructor(crypto?: CryptoLike) {
    const c = crypto ?? (globalThis as { crypto?: CryptoLike }).crypto;
    if (c === undefined || typeof c.getRandomValues !== "function") {
      throw new TypeError("crypto must provide getRandomValues (globalThis.crypto is missing)");
    }
    this.#crypto = c;
  }

  /** @inheritdoc */
  fill(buf: Uint8Array): void {
    const shared =
      typeof SharedArrayBuffer !== "undefined" && buf.buffer instanceof SharedArrayBuffer;
    for (let at = 0; at < buf.length; at += CRYPTO_QUOTA) {
      const n = Math.min(CRYPTO_QUOTA, buf.length - at);
      if (shared) {
        this.#scratch ??= new Uint8Array(CRYPTO_QUOTA);
        const s = n === CRYPTO_QUOTA ? this.#scratch : this.#scratch.subarray(0, n);
        this.#crypto.getRandomValues(s);
        buf.set(s, at);
      } else {
        this.#crypto.getRandomValues(at === 0 && n === buf.length ? buf : buf.subarray(at, at + n));
      }
    }
  }
}
