// Mode 1, full emulation: a legacy, register-level disk controller with no shared-memory rings,
// modelled on the ATA task file in PIO mode (ATA/ATAPI-6 §6.2, "PIO data-in / data-out"). The
// guest programs count and LBA registers, writes a command, and moves every data byte through a
// 4-byte data register: 128 trapped reads per 512-byte sector, one interrupt per sector. It is
// an illustration of what virtio replaces, not a package: no DMA, no queueing, LBA28 only.
import type { BlockBackend } from "@virtio-ts/devices";

/** Register offsets of the emulated controller (ATA task file registers, 4 bytes apart). */
export const AtaReg = {
  /** Data: 2 or 4 bytes of the current sector per access (read: data-in, write: data-out). */
  DATA: 0x00,
  /** Error (read) / Features (write; ignored). */
  ERROR: 0x04,
  /** Sector count (0 means 256). */
  SECTOR_COUNT: 0x08,
  /** LBA bits 0–7. */
  LBA_LOW: 0x0c,
  /** LBA bits 8–15. */
  LBA_MID: 0x10,
  /** LBA bits 16–23. */
  LBA_HIGH: 0x14,
  /** Device: bit 6 = LBA addressing, bits 0–3 = LBA bits 24–27. */
  DEVICE: 0x18,
  /** Status (read; acknowledges the interrupt) / Command (write). */
  STATUS_COMMAND: 0x1c,
  /** Alternate status (read; does not acknowledge) / Device control (write: nIEN, SRST). */
  ALT_STATUS_CONTROL: 0x20,
} as const;

/** Names under which exits are counted, by register index (offset / 4), then "Invalid". */
export const ATA_REGISTER_NAMES = [
  "Data",
  "Error",
  "SectorCount",
  "LbaLow",
  "LbaMid",
  "LbaHigh",
  "Device",
  "Status/Command",
  "AltStatus/Control",
  "Invalid",
] as const;

/** One name of {@link ATA_REGISTER_NAMES}. */
export type AtaRegisterName = (typeof ATA_REGISTER_NAMES)[number];

/** Status register bits. */
export const AtaStatus = {
  /** An error: see the Error register. */
  ERR: 0x01,
  /** Data request: the data register holds (read) or wants (write) a sector. */
  DRQ: 0x08,
  /** Device ready. */
  DRDY: 0x40,
  /** Busy: other registers must not be accessed. */
  BSY: 0x80,
} as const;

/** Error register bits. */
export const AtaError = {
  /** Command aborted (unknown command, CHS addressing, access while busy). */
  ABRT: 0x04,
  /** ID not found: the LBA range passes the end of the disk. */
  IDNF: 0x10,
  /** Uncorrectable: the back-end failed. */
  UNC: 0x40,
} as const;

/** Commands the controller implements. */
export const AtaCommand = {
  /** READ SECTORS (PIO data-in). */
  READ_SECTORS: 0x20,
  /** WRITE SECTORS (PIO data-out). */
  WRITE_SECTORS: 0x30,
  /** FLUSH CACHE. */
  FLUSH_CACHE: 0xe7,
} as const;

const SECTOR = 512;
const MAX_SECTORS = 256;
const N_REG = 9;
const INVALID = 9;
const PHASE_IDLE = 0;
const PHASE_BUSY = 1;
const PHASE_DATA_IN = 2;
const PHASE_DATA_OUT = 3;

/** Options of an {@link AtaPioDevice}. */
export interface AtaPioDeviceOptions {
  /** The interrupt line (INTRQ): called whenever the device asserts it. */
  readonly interrupt?: () => void;
}

/**
 * The emulated ATA-PIO-like controller: the register file a VMM's trap handler calls on each
 * exit. Every access is counted by register ({@link AtaPioDevice.exitCounts}); data moves only
 * through the data register, so the VMM copies every byte of every sector itself
 * ({@link AtaPioDevice.bytesCopied}).
 *
 * Protocol: write SectorCount, LbaLow/Mid/High, Device (bit 6 set), then Command. READ SECTORS:
 * the device turns busy, reads the whole range from the back-end into its buffer, then for each
 * sector sets DRQ and asserts the interrupt; the guest reads Status (which acknowledges it) and
 * 128 4-byte words of Data. WRITE SECTORS: DRQ is set at once (no interrupt for the first
 * sector); after each sector the device asserts the interrupt with DRQ for the next one, and after
 * the last it writes the range to the back-end and asserts it with DRDY. FLUSH CACHE flushes.
 *
 * Hostile input never throws: an offset that is no register, a bad width, the wrong direction,
 * data accesses without DRQ, and writes while busy read 0 / are ignored and counted in
 * `invalidAccesses`; a range past the disk fails with ERR + IDNF, an unknown command or CHS
 * addressing with ERR + ABRT, a back-end failure with ERR + UNC. Only impossible arguments from
 * the VMM itself (a negative offset, a width not 1, 2 or 4) are `RangeError`s.
 */
export class AtaPioDevice {
  /** The disk behind the controller. */
  readonly backend: BlockBackend;
  /** Accesses that were not valid (see the class comment). */
  invalidAccesses = 0;
  /** Interrupts asserted (one per data block of a command, one per completion). */
  interruptsRaised = 0;
  /** Bytes the VMM moved through the data register (guest ↔ its sector buffer). */
  bytesCopied = 0;
  readonly #counts = new Float64Array(N_REG + 1);
  readonly #irq: (() => void) | undefined;
  readonly #buf = new Uint8Array(MAX_SECTORS * SECTOR);
  #status: number = AtaStatus.DRDY;
  #error = 0;
  #count = 0;
  #lba = new Uint8Array(3);
  #device = 0;
  #nIEN = false;
  #phase = PHASE_IDLE;
  #pos = 0;
  #end = 0;
  #sector = 0;
  #epoch = 0;

  /**
   * @param backend - the disk (sectors of 512 bytes)
   * @param options - interrupt line
   */
  constructor(backend: BlockBackend, options: AtaPioDeviceOptions = {}) {
    this.backend = backend;
    this.#irq = options.interrupt;
  }

  /** Total exits since construction or {@link AtaPioDevice.resetCounters}. */
  get exits(): number {
    let n = 0;
    for (const c of this.#counts) n += c;
    return n;
  }

  /** Exits by register name, only the registers that were accessed. */
  exitCounts(): Partial<Record<AtaRegisterName, number>> {
    const out: Partial<Record<AtaRegisterName, number>> = {};
    for (let i = 0; i <= N_REG; i++) {
      if (this.#counts[i]! > 0) out[ATA_REGISTER_NAMES[i]!] = this.#counts[i]!;
    }
    return out;
  }

  /** Zero the exit, interrupt, copy and invalid-access counters. */
  resetCounters(): void {
    this.#counts.fill(0);
    this.invalidAccesses = 0;
    this.interruptsRaised = 0;
    this.bytesCopied = 0;
  }

  /** The status register as it reads now, without acknowledging anything. */
  get status(): number {
    return this.#status;
  }

  #decode(offset: number, size: number): number {
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new RangeError(`offset must be a non-negative safe integer, got ${offset}`);
    }
    if (size !== 1 && size !== 2 && size !== 4) {
      throw new RangeError(`size must be 1, 2 or 4, got ${size}`);
    }
    const reg = (offset & 3) === 0 && offset < N_REG * 4 ? offset >>> 2 : INVALID;
    this.#counts[reg]!++;
    // Data takes 2 or 4 bytes; the 8-bit task file registers take 1 or 4 (low byte used).
    if (reg === INVALID || (reg === 0 ? size === 1 : size === 2)) {
      this.invalidAccesses++;
      return -1;
    }
    return reg;
  }

  /**
   * Handle a guest read (one exit).
   * @param offset - byte offset from the controller's base
   * @param size - 1, 2 or 4
   * @returns the register value (0 for an invalid access)
   * @throws RangeError naming `offset` or `size` for impossible arguments (VMM bugs)
   */
  read(offset: number, size: number): number {
    const reg = this.#decode(offset, size);
    switch (reg) {
      case 0:
        return this.#dataIn(size);
      case 1:
        return this.#error;
      case 2:
        return this.#count;
      case 3:
      case 4:
      case 5:
        return this.#lba[reg - 3]!;
      case 6:
        return this.#device;
      case 7:
        // Reading Status acknowledges INTRQ (nothing to clear here: the line is edge-modelled).
        return this.#status;
      case 8:
        return this.#status;
      default:
        return 0;
    }
  }

  /**
   * Handle a guest write (one exit).
   * @param offset - byte offset from the controller's base
   * @param size - 1, 2 or 4
   * @param value - the value written (the low `size` bytes count)
   * @throws RangeError naming `offset` or `size` for impossible arguments; never for values
   */
  write(offset: number, size: number, value: number): void {
    const reg = this.#decode(offset, size);
    if (reg < 0) return;
    if (reg === 0) {
      this.#dataOut(size, value >>> 0);
      return;
    }
    if (reg === 8) {
      // Device control: bit 1 nIEN (interrupts off), bit 2 SRST (software reset).
      this.#nIEN = (value & 0x02) !== 0;
      if ((value & 0x04) !== 0) this.#softReset();
      return;
    }
    if ((this.#status & (AtaStatus.BSY | AtaStatus.DRQ)) !== 0) {
      // ATA: the task file is not writable while busy or transferring.
      this.invalidAccesses++;
      return;
    }
    const v = value & 0xff;
    switch (reg) {
      case 1:
        return; // Features: nothing implemented uses them.
      case 2:
        this.#count = v;
        return;
      case 3:
      case 4:
      case 5:
        this.#lba[reg - 3] = v;
        return;
      case 6:
        this.#device = v;
        return;
      case 7:
        this.#command(v);
        return;
    }
  }

  #softReset(): void {
    this.#epoch++;
    this.#phase = PHASE_IDLE;
    this.#status = AtaStatus.DRDY;
    this.#error = 0;
  }

  #raise(): void {
    this.interruptsRaised++;
    if (!this.#nIEN) this.#irq?.();
  }

  #fail(error: number): void {
    this.#phase = PHASE_IDLE;
    this.#error = error;
    this.#status = AtaStatus.DRDY | AtaStatus.ERR;
    this.#raise();
  }

  #command(cmd: number): void {
    this.#error = 0;
    if (cmd === AtaCommand.FLUSH_CACHE) {
      this.#busy(
        this.#call(() => this.backend.flush()),
        () => this.#done(),
      );
      return;
    }
    if (cmd !== AtaCommand.READ_SECTORS && cmd !== AtaCommand.WRITE_SECTORS) {
      this.#fail(AtaError.ABRT);
      return;
    }
    if ((this.#device & 0x40) === 0) {
      this.#fail(AtaError.ABRT); // CHS addressing is not emulated
      return;
    }
    const n = this.#count === 0 ? MAX_SECTORS : this.#count;
    const lba =
      this.#lba[0]! | (this.#lba[1]! << 8) | (this.#lba[2]! << 16) | ((this.#device & 0xf) << 24);
    if (lba + n > this.backend.capacity) {
      this.#fail(AtaError.IDNF);
      return;
    }
    this.#sector = lba;
    this.#end = n * SECTOR;
    this.#pos = 0;
    if (cmd === AtaCommand.READ_SECTORS) {
      const view = this.#buf.subarray(0, this.#end);
      this.#busy(
        this.#call(() => this.backend.read(lba, [view])),
        () => this.#drq(PHASE_DATA_IN),
      );
    } else {
      // PIO data-out: the first sector is requested at once, without an interrupt.
      this.#phase = PHASE_DATA_OUT;
      this.#status = AtaStatus.DRDY | AtaStatus.DRQ;
    }
  }

  #call(fn: () => Promise<void>): Promise<void> {
    try {
      return fn();
    } catch (e) {
      return Promise.reject(e);
    }
  }

  /** Go busy until `p` settles; then `next`, or ERR + UNC. Dropped after a reset. */
  #busy(p: Promise<void>, next: () => void): void {
    const epoch = this.#epoch;
    this.#phase = PHASE_BUSY;
    this.#status = AtaStatus.BSY;
    p.then(
      () => {
        if (epoch === this.#epoch) next();
      },
      () => {
        if (epoch === this.#epoch) this.#fail(AtaError.UNC);
      },
    );
  }

  #drq(phase: number): void {
    this.#phase = phase;
    this.#status = AtaStatus.DRDY | AtaStatus.DRQ;
    this.#raise();
  }

  #done(): void {
    this.#phase = PHASE_IDLE;
    this.#status = AtaStatus.DRDY;
    this.#raise();
  }

  #dataIn(size: number): number {
    if (this.#phase !== PHASE_DATA_IN) {
      this.invalidAccesses++;
      return 0;
    }
    const b = this.#buf;
    const p = this.#pos;
    const v =
      size === 4
        ? (b[p]! | (b[p + 1]! << 8) | (b[p + 2]! << 16) | (b[p + 3]! << 24)) >>> 0
        : b[p]! | (b[p + 1]! << 8);
    this.#pos = p + size;
    this.bytesCopied += size;
    if (this.#pos % SECTOR === 0) {
      if (this.#pos >= this.#end) this.#dataInDone();
      else this.#drq(PHASE_DATA_IN); // next DRQ data block: one interrupt per sector
    }
    return v;
  }

  /** End of a data-in command: DRDY, no interrupt (ATA: none after the last data block). */
  #dataInDone(): void {
    this.#phase = PHASE_IDLE;
    this.#status = AtaStatus.DRDY;
  }

  #dataOut(size: number, v: number): void {
    if (this.#phase !== PHASE_DATA_OUT) {
      this.invalidAccesses++;
      return;
    }
    const b = this.#buf;
    const p = this.#pos;
    b[p] = v & 0xff;
    b[p + 1] = (v >>> 8) & 0xff;
    if (size === 4) {
      b[p + 2] = (v >>> 16) & 0xff;
      b[p + 3] = v >>> 24;
    }
    this.#pos = p + size;
    this.bytesCopied += size;
    if (this.#pos % SECTOR !== 0) return;
    if (this.#pos < this.#end) {
      this.#drq(PHASE_DATA_OUT);
      return;
    }
    const view = this.#buf.subarray(0, this.#end);
    const lba = this.#sector;
    this.#busy(
      this.#call(() => this.backend.write(lba, [view])),
      () => this.#done(),
    );
  }
}

/** The bus a guest driver reaches the controller through (a trap per access). */
export interface AtaBus {
  /** A trapped read. */
  read(offset: number, size: 1 | 2 | 4): number;
  /** A trapped write. */
  write(offset: number, size: 1 | 2 | 4, value: number): void;
}

/** A command failed: the Error register's bits, and the Status it came with. */
export class AtaCommandError extends Error {
  /** Error register value. */
  readonly error: number;
  /** Status register value. */
  readonly status: number;

  /**
   * @param error - Error register
   * @param status - Status register
   */
  constructor(error: number, status: number) {
    super(`ATA command failed: status 0x${status.toString(16)}, error 0x${error.toString(16)}`);
    this.error = error;
    this.status = status;
  }
}

interface AtaRequest {
  readonly write: boolean;
  readonly lba: number;
  readonly count: number;
  readonly data: Uint8Array;
  sector: number;
  readonly resolve: (v: Uint8Array) => void;
  readonly reject: (e: unknown) => void;
}

/**
 * The guest's driver for {@link AtaPioDevice}: one command at a time (the controller cannot
 * queue), a FIFO for the rest. `read` / `write` return promises settled by
 * {@link AtaPioDriver.onInterrupt}, the interrupt handler, which reads Status and moves one
 * sector through the data register in 4-byte accesses, as `insl` / `outsl` do.
 */
export class AtaPioDriver {
  readonly #bus: AtaBus;
  readonly #queue: AtaRequest[] = [];
  #head = 0;
  #cur: AtaRequest | undefined;

  /** @param bus - the trapped register window */
  constructor(bus: AtaBus) {
    this.#bus = bus;
  }

  /**
   * Read `count` sectors (1–256) from `lba`.
   * @returns the data
   * @throws RangeError naming `lba` or `count`; rejects with AtaCommandError
   */
  read(lba: number, count: number): Promise<Uint8Array> {
    return this.#submit(false, lba, count, new Uint8Array(count * SECTOR));
  }

  /**
   * Write `data` (1–256 whole sectors) at `lba`.
   * @throws RangeError naming `lba` or `data`; rejects with AtaCommandError
   */
  async write(lba: number, data: Uint8Array): Promise<void> {
    if (data.length === 0 || data.length % SECTOR !== 0) {
      throw new RangeError(`data must be 1 to 256 whole sectors, got ${data.length} bytes`);
    }
    await this.#submit(true, lba, data.length / SECTOR, data);
  }

  #submit(write: boolean, lba: number, count: number, data: Uint8Array): Promise<Uint8Array> {
    if (!Number.isInteger(lba) || lba < 0 || lba >= 1 << 28) {
      throw new RangeError(`lba must be an integer in [0, 2^28), got ${lba}`);
    }
    if (!Number.isInteger(count) || count < 1 || count > MAX_SECTORS) {
      throw new RangeError(`count must be an integer in [1, 256], got ${count}`);
    }
    return new Promise<Uint8Array>((resolve, reject) => {
      this.#queue.push({ write, lba, count, data, sector: 0, resolve, reject });
      if (this.#cur === undefined) this.#next();
    });
  }

  #next(): void {
    if (this.#head >= this.#queue.length) {
      this.#queue.length = 0;
      this.#head = 0;
      this.#cur = undefined;
      return;
    }
    const r = this.#queue[this.#head++]!;
    this.#cur = r;
    const b = this.#bus;
    b.write(AtaReg.SECTOR_COUNT, 1, r.count & 0xff);
    b.write(AtaReg.LBA_LOW, 1, r.lba & 0xff);
    b.write(AtaReg.LBA_MID, 1, (r.lba >>> 8) & 0xff);
    b.write(AtaReg.LBA_HIGH, 1, (r.lba >>> 16) & 0xff);
    b.write(AtaReg.DEVICE, 1, 0x40 | ((r.lba >>> 24) & 0xf));
    b.write(AtaReg.STATUS_COMMAND, 1, r.write ? AtaCommand.WRITE_SECTORS : AtaCommand.READ_SECTORS);
    if (r.write) {
      // PIO data-out: poll Alternate Status for DRQ, then send the first sector.
      const s = b.read(AtaReg.ALT_STATUS_CONTROL, 1);
      if ((s & AtaStatus.ERR) !== 0) this.#error(r, s);
      else if ((s & AtaStatus.DRQ) !== 0) this.#sendSector(r);
    }
  }

  #error(r: AtaRequest, status: number): void {
    r.reject(new AtaCommandError(this.#bus.read(AtaReg.ERROR, 1), status));
    this.#next();
  }

  #sendSector(r: AtaRequest): void {
    const b = this.#bus;
    const d = r.data;
    for (let p = r.sector * SECTOR, end = p + SECTOR; p < end; p += 4) {
      b.write(
        AtaReg.DATA,
        4,
        (d[p]! | (d[p + 1]! << 8) | (d[p + 2]! << 16) | (d[p + 3]! << 24)) >>> 0,
      );
    }
    r.sector++;
  }

  /**
   * The interrupt handler: read Status (acknowledging the interrupt), then move one sector or
   * finish the command.
   * @returns whether a command completed
   */
  onInterrupt(): boolean {
    const r = this.#cur;
    const b = this.#bus;
    const s = b.read(AtaReg.STATUS_COMMAND, 1);
    if (r === undefined || (s & AtaStatus.BSY) !== 0) return false;
    if ((s & AtaStatus.ERR) !== 0) {
      this.#error(r, s);
      return true;
    }
    if ((s & AtaStatus.DRQ) !== 0) {
      if (r.write) {
        this.#sendSector(r);
        return false;
      }
      const d = r.data;
      for (let p = r.sector * SECTOR, end = p + SECTOR; p < end; p += 4) {
        const v = b.read(AtaReg.DATA, 4);
        d[p] = v & 0xff;
        d[p + 1] = (v >>> 8) & 0xff;
        d[p + 2] = (v >>> 16) & 0xff;
        d[p + 3] = v >>> 24;
      }
      r.sector++;
      if (r.sector < r.count) return false;
    }
    r.resolve(r.data);
    this.#next();
    return true;
  }
}
