import { createHmac, randomBytes, scrypt, timingSafeEqual } from "node:crypto";
import { crc32 } from "node:zlib";
import { type BlockBackend, BlockGuard } from "@virtio-ts/devices";
import { XTS_KEY_BYTES, XtsAes256, type XtsJob, type XtsOptions } from "./xts.js";

const SECTOR = 512;

/** Magic at byte 0 of an encrypted disk's header: ASCII `VTS-XTS` and a NUL. */
export const ENCRYPT_HEADER_MAGIC = "VTS-XTS\0";
/** Version of the header format written by {@link formatEncrypted}. */
export const ENCRYPT_HEADER_VERSION = 1;
/**
 * Sectors reserved for the header (4 KiB) at the start of the inner back-end; the encrypted
 * data area starts after them, so 4 KiB-aligned guest I/O stays 4 KiB-aligned on the inner disk.
 */
export const ENCRYPT_HEADER_SECTORS = 8;

const CIPHER_AES_XTS_PLAIN64 = 1;
const KDF_SCRYPT = 1;
const OFF_VERSION = 8;
const OFF_DATA_SECTORS = 10;
const OFF_CIPHER = 12;
const OFF_KDF = 14;
const OFF_LOG2N = 16;
const OFF_R = 18;
const OFF_P = 20;
const OFF_SALT = 24;
const SALT_BYTES = 32;
const OFF_CHECK = 56;
const OFF_CRC = 88;
/** Memory cap for scrypt: 128·N·r bytes, refused above 1 GiB (a hostile header cannot OOM us). */
const SCRYPT_MAX_MEM = 1 << 30;
/** Encrypted zeroes are written this many bytes at a time by `writeZeroes`. */
const ZERO_CHUNK = 64 * 1024;
/** Scratch buffers kept for reuse (each {@link POOL_BYTES}); larger requests allocate. */
const POOL_MAX = 8;
const POOL_BYTES = 128 * 1024;
/** Scratch buffers for requests of up to 16 KiB: enough for a queue of 64 in flight. */
const SMALL_POOL_MAX = 64;
const SMALL_POOL_BYTES = 16 * 1024;

/**
 * scrypt cost parameters (RFC 7914) for deriving the XTS key from a passphrase. Memory is
 * 128·N·r bytes per derivation.
 */
export interface ScryptParams {
  /** log2 of the CPU/memory cost N (N = 2^log2N), 10 to 20. */
  readonly log2N: number;
  /** Block size r, 1 to 32. */
  readonly r: number;
  /** Parallelization p, 1 to 16. */
  readonly p: number;
}

/**
 * Default scrypt parameters: N = 2^17, r = 8, p = 1 — 128 MiB and a few hundred milliseconds
 * per open, the OWASP Password Storage Cheat Sheet's minimum for scrypt.
 */
export const DEFAULT_SCRYPT: ScryptParams = Object.freeze({ log2N: 17, r: 8, p: 1 });

/** Options of {@link encrypt} (raw key, no header). */
export interface EncryptOptions extends XtsOptions {}

/** Options of {@link formatEncrypted}. */
export interface FormatEncryptedOptions extends XtsOptions {
  /** The passphrase (a string is UTF-8 encoded); must not be empty. */
  readonly passphrase: string | Uint8Array;
  /** KDF cost. Default {@link DEFAULT_SCRYPT}. */
  readonly scrypt?: ScryptParams;
  /**
   * Replace an existing header (destroys access to the old data). Default false: formatting a
   * disk that already has one is refused.
   */
  readonly overwrite?: boolean;
}

/** Options of {@link openEncrypted}. */
export interface OpenEncryptedOptions extends XtsOptions {
  /** The passphrase given to {@link formatEncrypted}. */
  readonly passphrase: string | Uint8Array;
  /**
   * Largest scrypt work N·r·p a header may ask for; a costlier one is refused before deriving
   * (EncryptedDiskError "kdf-too-costly"). The header is read from the disk, so whoever wrote
   * the image chooses the cost: within the memory cap, N = 2^20, r = 8, p = 16 is 128 times
   * the default (about a minute of CPU and 1 GiB per open). Default 2^24, 16 times
   * {@link DEFAULT_SCRYPT}'s work.
   */
  readonly maxScryptWork?: number;
}

/** Why an encrypted disk's header was refused, as a literal a caller can switch on. */
export type EncryptedDiskErrorCode =
  /** Sector 0 does not start with {@link ENCRYPT_HEADER_MAGIC}. */
  | "not-formatted"
  /** {@link formatEncrypted} found a header and `overwrite` was not set. */
  | "already-formatted"
  /** A version, cipher or KDF this code does not know. */
  | "unsupported"
  /** The header's scrypt cost N·r·p is above `options.maxScryptWork`. */
  | "kdf-too-costly"
  /** The header's CRC-32 does not match, or its fields are out of range. */
  | "corrupt-header"
  /** The passphrase does not derive the key the header's check value was made with. */
  | "wrong-passphrase";

/**
 * An encrypted disk's header cannot be used (wrong passphrase, corrupt or foreign header).
 * Raised when opening or formatting, never by I/O on an open disk.
 */
export class EncryptedDiskError extends Error {
  /** What went wrong. */
  readonly code: EncryptedDiskErrorCode;

  /**
   * @param code - what went wrong
   * @param message - text for humans, naming the argument at fault
   */
  constructor(code: EncryptedDiskErrorCode, message: string) {
    super(message);
    this.name = "EncryptedDiskError";
    this.code = code;
  }
}

/**
 * A {@link BlockBackend} that encrypts every sector with XTS-AES-256 / plain64 (dm-crypt
 * `aes-xts-plain64`, 512-bit key) before it reaches the inner back-end, and decrypts on the
 * way back. Made by {@link encrypt} (raw key, no header), {@link formatEncrypted} or
 * {@link openEncrypted} (passphrase, header in the first {@link ENCRYPT_HEADER_SECTORS}
 * sectors).
 *
 * - The tweak is the guest's sector number (the data area's sector 0 has tweak 0), as LUKS
 *   does for its data segment; the inner sector is `sector + dataOffset`.
 * - Reads decrypt into the guest's iovecs (any split, not only at sector boundaries). Writes
 *   encrypt into a private scratch buffer and never into guest memory, so the guest never sees
 *   ciphertext and a concurrent guest change cannot tear a sector's encryption.
 * - `writeZeroes` writes *encrypted* zeroes, so the range reads back as zeroes; `unmap` is
 *   ignored. `discard` does nothing (the sectors keep their old contents, which the
 *   {@link BlockBackend} contract allows): passing it through would read back as random
 *   plaintext and would tell the host which sectors the guest does not use.
 * - `flush` is the inner back-end's flush.
 * - Requests that reach the cipher in the same task (a queue's batch of writes, the reads whose
 *   inner data arrived together) are transformed together in a microtask
 *   ({@link XtsAes256.encryptBatch}): node:crypto's cost per call is paid once per batch.
 *
 * No integrity: see the package README, "Threat model".
 */
export class EncryptedDisk implements BlockBackend {
  /** The back-end holding the ciphertext (and the header, if any). */
  readonly inner: BlockBackend;
  /** Inner sectors before the data area: {@link ENCRYPT_HEADER_SECTORS}, or 0 for a raw key. */
  readonly dataOffset: number;
  /** @inheritdoc */
  readonly capacity: number;
  /** @inheritdoc */
  readonly blockSize: number;
  /** @inheritdoc */
  readonly readOnly: boolean;
  readonly #xts: XtsAes256;
  readonly #pool: Uint8Array[] = [];
  readonly #smallPool: Uint8Array[] = [];
  readonly #guard: BlockGuard;
  // The requests waiting for the cipher, and the promise the microtask that runs them settles.
  readonly #encJobs: CipherJob[] = [];
  readonly #decJobs: CipherJob[] = [];
  #encDone: Promise<void> | undefined;
  #decDone: Promise<void> | undefined;

  private constructor(inner: BlockBackend, xts: XtsAes256, dataOffset: number) {
    this.inner = inner;
    this.#xts = xts;
    this.dataOffset = dataOffset;
    this.capacity = inner.capacity - dataOffset;
    this.blockSize = inner.blockSize;
    this.readOnly = inner.readOnly;
    this.#guard = new BlockGuard("EncryptedDisk", this.capacity, this.readOnly);
  }

  /** @internal */
  static create(inner: BlockBackend, xts: XtsAes256, dataOffset: number): EncryptedDisk {
    return new EncryptedDisk(inner, xts, dataOffset);
  }

  /** The XTS engine in use (see {@link XtsEngine}). */
  get engine(): XtsAes256["engine"] {
    return this.#xts.engine;
  }

  /** Decrypts into `iovecs` (directly when there is one, else through a scratch buffer). */
  async read(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    const len = sectorBytes(iovecs);
    this.#guard.span(sector, len);
    const ct = this.#take(len);
    try {
      const view = ct.subarray(0, len);
      await this.inner.read(sector + this.dataOffset, [view]);
      if (iovecs.length === 1) {
        await this.#cipher(view, iovecs[0]!, sector, false);
        return;
      }
      await this.#cipher(view, view, sector, false);
      let at = 0;
      for (const v of iovecs) {
        v.set(view.subarray(at, at + v.length));
        at += v.length;
      }
    } finally {
      this.#give(ct);
    }
  }

  /** Encrypts `iovecs` into a scratch buffer, then writes that to the inner back-end. */
  async write(sector: number, iovecs: readonly Uint8Array[]): Promise<void> {
    this.#guard.writable();
    const len = sectorBytes(iovecs);
    this.#guard.span(sector, len);
    const ct = this.#take(len);
    try {
      const view = ct.subarray(0, len);
      if (iovecs.length === 1) {
        await this.#cipher(iovecs[0]!, view, sector, true);
      } else {
        let at = 0;
        for (const v of iovecs) {
          view.set(v, at);
          at += v.length;
        }
        await this.#cipher(view, view, sector, true);
      }
      await this.inner.write(sector + this.dataOffset, [view]);
    } finally {
      this.#give(ct);
    }
  }

  /** The inner back-end's flush. */
  flush(): Promise<void> {
    return this.inner.flush();
  }

  /**
   * Does nothing after the range check (documented in the class description: discarded
   * sectors keep their contents; nothing about them reaches the inner back-end).
   */
  async discard(sector: number, count: number): Promise<void> {
    this.#guard.writable();
    this.#guard.span(sector, count * SECTOR);
  }

  /** Writes encrypted zeroes, 64 KiB at a time; `unmap` is ignored. */
  async writeZeroes(sector: number, count: number, _unmap: boolean): Promise<void> {
    this.#guard.writable();
    this.#guard.span(sector, count * SECTOR);
    const zero = new Uint8Array(Math.min(ZERO_CHUNK, count * SECTOR));
    const ct = new Uint8Array(zero.length);
    let s = sector;
    let left = count;
    while (left > 0) {
      const n = Math.min(left, ZERO_CHUNK / SECTOR);
      const z = zero.subarray(0, n * SECTOR);
      const c = ct.subarray(0, n * SECTOR);
      this.#xts.encrypt(z, c, s);
      await this.inner.write(s + this.dataOffset, [c]);
      s += n;
      left -= n;
    }
  }

  /**
   * Encipher (or decipher) whole sectors from `src` into `dst` with the other requests of this
   * task: the first one schedules a microtask that transforms every request queued by then in
   * one batch. Should the batch fail (a buffer detached meanwhile: a `WebAssembly.Memory` that
   * grew), each request is redone alone, so only the bad one rejects, with its own error.
   */
  async #cipher(
    src: Uint8Array,
    dst: Uint8Array,
    firstSector: number,
    enc: boolean,
  ): Promise<void> {
    const job: CipherJob = { src, dst, firstSector, error: undefined };
    const jobs = enc ? this.#encJobs : this.#decJobs;
    jobs.push(job);
    await ((enc ? this.#encDone : this.#decDone) ?? this.#schedule(jobs, enc));
    if (job.error !== undefined) throw job.error;
  }

  /** The promise of the batch of `jobs`, run in a microtask. */
  #schedule(jobs: CipherJob[], enc: boolean): Promise<void> {
    const done = new Promise<void>((resolve) => {
      queueMicrotask(() => {
        if (enc) this.#encDone = undefined;
        else this.#decDone = undefined;
        const xts = this.#xts;
        try {
          if (enc) xts.encryptBatch(jobs);
          else xts.decryptBatch(jobs);
        } catch {
          for (const j of jobs) {
            try {
              if (enc) xts.encrypt(j.src, j.dst, j.firstSector);
              else xts.decrypt(j.src, j.dst, j.firstSector);
            } catch (e) {
              j.error = e;
            }
          }
        }
        jobs.length = 0;
        resolve();
      });
    });
    if (enc) this.#encDone = done;
    else this.#decDone = done;
    return done;
  }

  #take(len: number): Uint8Array {
    if (len <= SMALL_POOL_BYTES) return this.#smallPool.pop() ?? new Uint8Array(SMALL_POOL_BYTES);
    if (len > POOL_BYTES) return new Uint8Array(len);
    return this.#pool.pop() ?? new Uint8Array(POOL_BYTES);
  }

  #give(buf: Uint8Array): void {
    if (buf.length === SMALL_POOL_BYTES) {
      if (this.#smallPool.length < SMALL_POOL_MAX) this.#smallPool.push(buf);
    } else if (buf.length === POOL_BYTES && this.#pool.length < POOL_MAX) this.#pool.push(buf);
  }
}

/**
 * Encrypt `inner` with a raw 64-byte key and no header: every inner sector is data, and the
 * layout is exactly dm-crypt plain mode `aes-xts-plain64` with a 512-bit key and no offset
 * (`cryptsetup open --type plain --cipher aes-xts-plain64 --key-size 512 --key-file k`).
 * A wrong key is not detectable here: it reads as random bytes.
 *
 * @param inner - the back-end that receives ciphertext
 * @param key - Key1 ‖ Key2 (64 bytes, halves different); copied
 * @param options - XTS engine
 * @throws RangeError naming `key` (see {@link XtsAes256})
 * @example
 * ```ts
 * const disk = encrypt(MemoryDisk.ofSize(1 << 20), randomBytes(64));
 * const device = new BlkDevice(disk, { serial: "secret" });
 * ```
 */
export function encrypt(
  inner: BlockBackend,
  key: Uint8Array,
  options: EncryptOptions = {},
): EncryptedDisk {
  return EncryptedDisk.create(inner, new XtsAes256(key, options), 0);
}

/**
 * Write a new header to sector 0 of `inner` (fresh random salt, scrypt parameters, key-check
 * value), flush it, and return the encrypted disk over the data area (capacity = inner
 * capacity − {@link ENCRYPT_HEADER_SECTORS}). The data area is not touched: until written,
 * it reads as whatever its old bytes decrypt to.
 *
 * Header (sector 0, little-endian; sectors 1–7 reserved, zero):
 * magic 8 | version u16 | data offset in sectors u16 | cipher u16 (1 = aes-xts-plain64) |
 * kdf u16 (1 = scrypt) | log2N u8 | 0 u8 | r u16 | p u16 | 0 u16 | salt 32 |
 * check = HMAC-SHA-256(checkKey, bytes 0–55) 32 | CRC-32 of bytes 0–87 u32. scrypt derives 96
 * bytes: the XTS key (64) and the check key (32).
 *
 * @param inner - the back-end to format; writable, more than 8 sectors
 * @param options - passphrase, scrypt cost, overwrite permission, XTS engine
 * @throws RangeError naming `options.passphrase`, `options.scrypt` or `inner.capacity`;
 *   TypeError naming `inner` when it is read-only; EncryptedDiskError "already-formatted";
 *   BackendError from the inner back-end
 */
export async function formatEncrypted(
  inner: BlockBackend,
  options: FormatEncryptedOptions,
): Promise<EncryptedDisk> {
  const pass = passphraseBytes(options?.passphrase);
  const params = options.scrypt ?? DEFAULT_SCRYPT;
  checkScrypt(params, "options.scrypt");
  checkInner(inner);
  if (inner.readOnly) throw new TypeError("inner is read-only: cannot write a header");
  const header = new Uint8Array(ENCRYPT_HEADER_SECTORS * SECTOR);
  if (!options.overwrite) {
    const old = header.subarray(0, SECTOR);
    await inner.read(0, [old]);
    if (Buffer.from(old.subarray(0, 8)).toString("latin1") === ENCRYPT_HEADER_MAGIC) {
      throw new EncryptedDiskError(
        "already-formatted",
        "inner already has an encrypted-disk header; pass options.overwrite to replace it",
      );
    }
    old.fill(0);
  }
  const dv = new DataView(header.buffer);
  header.set(Buffer.from(ENCRYPT_HEADER_MAGIC, "latin1"), 0);
  dv.setUint16(OFF_VERSION, ENCRYPT_HEADER_VERSION, true);
  dv.setUint16(OFF_DATA_SECTORS, ENCRYPT_HEADER_SECTORS, true);
  dv.setUint16(OFF_CIPHER, CIPHER_AES_XTS_PLAIN64, true);
  dv.setUint16(OFF_KDF, KDF_SCRYPT, true);
  dv.setUint8(OFF_LOG2N, params.log2N);
  dv.setUint16(OFF_R, params.r, true);
  dv.setUint16(OFF_P, params.p, true);
  header.set(randomBytes(SALT_BYTES), OFF_SALT);
  const dk = await derive(pass, header.subarray(OFF_SALT, OFF_SALT + SALT_BYTES), params);
  try {
    header.set(checkValue(dk, header), OFF_CHECK);
    dv.setUint32(OFF_CRC, crc32(header.subarray(0, OFF_CRC)), true);
    const xts = new XtsAes256(dk.subarray(0, XTS_KEY_BYTES), options);
    await inner.write(0, [header]);
    await inner.flush();
    return EncryptedDisk.create(inner, xts, ENCRYPT_HEADER_SECTORS);
  } finally {
    dk.fill(0);
  }
}

/**
 * Read the header written by {@link formatEncrypted}, derive the key from the passphrase and
 * return the encrypted disk. The scrypt parameters come from the header but are bounded
 * (N ≤ 2^20, 128·N·r ≤ 1 GiB, p ≤ 16), so a hostile header cannot make opening eat the host.
 *
 * @param inner - the formatted back-end
 * @param options - passphrase, XTS engine
 * @throws EncryptedDiskError "not-formatted", "unsupported", "corrupt-header",
 *   "kdf-too-costly" (naming `options.maxScryptWork`) or "wrong-passphrase" (naming
 *   `options.passphrase`); RangeError naming `options.passphrase`, `options.maxScryptWork` or
 *   `inner.capacity`; BackendError from the inner back-end
 */
export async function openEncrypted(
  inner: BlockBackend,
  options: OpenEncryptedOptions,
): Promise<EncryptedDisk> {
  const pass = passphraseBytes(options?.passphrase);
  const maxWork = options.maxScryptWork ?? 2 ** 24;
  if (!Number.isSafeInteger(maxWork) || maxWork < 1) {
    throw new RangeError(`options.maxScryptWork must be a positive integer, got ${maxWork}`);
  }
  checkInner(inner);
  const header = new Uint8Array(SECTOR);
  await inner.read(0, [header]);
  const dv = new DataView(header.buffer);
  if (Buffer.from(header.subarray(0, 8)).toString("latin1") !== ENCRYPT_HEADER_MAGIC) {
    throw new EncryptedDiskError(
      "not-formatted",
      "inner has no encrypted-disk header (magic VTS-XTS missing at byte 0); use formatEncrypted",
    );
  }
  if (dv.getUint32(OFF_CRC, true) !== crc32(header.subarray(0, OFF_CRC))) {
    throw new EncryptedDiskError("corrupt-header", "inner: encrypted-disk header CRC-32 mismatch");
  }
  const version = dv.getUint16(OFF_VERSION, true);
  const cipher = dv.getUint16(OFF_CIPHER, true);
  const kdf = dv.getUint16(OFF_KDF, true);
  if (
    version !== ENCRYPT_HEADER_VERSION ||
    cipher !== CIPHER_AES_XTS_PLAIN64 ||
    kdf !== KDF_SCRYPT
  ) {
    throw new EncryptedDiskError(
      "unsupported",
      `inner: unsupported encrypted-disk header (version ${version}, cipher ${cipher}, kdf ${kdf})`,
    );
  }
  const dataSectors = dv.getUint16(OFF_DATA_SECTORS, true);
  const params: ScryptParams = {
    log2N: dv.getUint8(OFF_LOG2N),
    r: dv.getUint16(OFF_R, true),
    p: dv.getUint16(OFF_P, true),
  };
  if (dataSectors !== ENCRYPT_HEADER_SECTORS || !scryptOk(params)) {
    throw new EncryptedDiskError(
      "corrupt-header",
      `inner: encrypted-disk header fields out of range (data offset ${dataSectors}, scrypt log2N ${params.log2N} r ${params.r} p ${params.p})`,
    );
  }
  const work = 2 ** params.log2N * params.r * params.p;
  if (work > maxWork) {
    throw new EncryptedDiskError(
      "kdf-too-costly",
      `inner: the header asks for scrypt work N·r·p = ${work} (log2N ${params.log2N} r ${params.r} p ${params.p}), above options.maxScryptWork ${maxWork}`,
    );
  }
  const dk = await derive(pass, header.subarray(OFF_SALT, OFF_SALT + SALT_BYTES), params);
  try {
    const want = header.subarray(OFF_CHECK, OFF_CHECK + 32);
    if (!timingSafeEqual(checkValue(dk, header), want)) {
      throw new EncryptedDiskError(
        "wrong-passphrase",
        "options.passphrase is wrong: the derived key does not match the header's check value",
      );
    }
    const xts = new XtsAes256(dk.subarray(0, XTS_KEY_BYTES), options);
    return EncryptedDisk.create(inner, xts, ENCRYPT_HEADER_SECTORS);
  } finally {
    dk.fill(0);
  }
}

function passphraseBytes(p: string | Uint8Array | undefined): Uint8Array {
  const bytes = typeof p === "string" ? Buffer.from(p, "utf8") : p;
  if (!(bytes instanceof Uint8Array) || bytes.length === 0) {
    throw new RangeError("options.passphrase must be a non-empty string or Uint8Array");
  }
  return bytes;
}

function checkInner(inner: BlockBackend): void {
  if (!Number.isSafeInteger(inner?.capacity) || inner.capacity <= ENCRYPT_HEADER_SECTORS) {
    throw new RangeError(
      `inner.capacity must exceed the ${ENCRYPT_HEADER_SECTORS}-sector header, got ${inner?.capacity}`,
    );
  }
}

function scryptOk(p: ScryptParams): boolean {
  return (
    Number.isInteger(p.log2N) &&
    p.log2N >= 10 &&
    p.log2N <= 20 &&
    Number.isInteger(p.r) &&
    p.r >= 1 &&
    p.r <= 32 &&
    Number.isInteger(p.p) &&
    p.p >= 1 &&
    p.p <= 16 &&
    128 * 2 ** p.log2N * p.r <= SCRYPT_MAX_MEM
  );
}

function checkScrypt(p: ScryptParams, name: string): void {
  if (!scryptOk(p)) {
    throw new RangeError(
      `${name} must have integer log2N 10–20, r 1–32, p 1–16 and 128·N·r ≤ 1 GiB, got ${JSON.stringify(p)}`,
    );
  }
}

function derive(pass: Uint8Array, salt: Uint8Array, p: ScryptParams): Promise<Buffer> {
  const N = 2 ** p.log2N;
  return new Promise((resolve, reject) => {
    scrypt(pass, salt, 96, { N, r: p.r, p: p.p, maxmem: 2 * 128 * N * p.r }, (err, key) =>
      err ? reject(err) : resolve(key),
    );
  });
}

function checkValue(dk: Uint8Array, header: Uint8Array): Buffer {
  return createHmac("sha256", dk.subarray(XTS_KEY_BYTES, XTS_KEY_BYTES + 32))
    .update(header.subarray(0, OFF_CHECK))
    .digest();
}

/** A request queued for the cipher, with the error it alone failed with (if the batch failed). */
interface CipherJob extends XtsJob {
  error: unknown;
}

function total(iovecs: readonly Uint8Array[]): number {
  let n = 0;
  for (const v of iovecs) n += v.length;
  return n;
}

/**
 * The bytes of `iovecs`, which must be whole sectors: XTS works on 512-byte data units.
 * @throws RangeError naming `iovecs` otherwise (before anything is queued for the cipher)
 */
function sectorBytes(iovecs: readonly Uint8Array[]): number {
  const n = total(iovecs);
  if (n % SECTOR !== 0) {
    throw new RangeError(`iovecs must hold whole 512-byte sectors, got ${n} bytes`);
  }
  return n;
}
