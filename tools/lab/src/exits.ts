// VM exits between two threads: the vCPU thread (a worker running the guest's drivers) and the
// VMM thread (the main thread running the register files and device models), as in the KVM
// picture where a trapped register access stops the vCPU until the VMM has handled it.
//
// One exit slot (a few Int32 words in a SharedArrayBuffer) carries one access at a time: the
// vCPU writes the access, bumps REQ and blocks in Atomics.wait on REP; the VMM, woken by
// Atomics.waitAsync on REQ, performs the access on the register file, writes the value and
// stores REQ's number into REP. No sleeps, no polling: the cost of an exit is the cost of two
// thread hand-offs plus the handler, as a VM exit costs a world switch plus the handler.
import { SharedDoorbell, type SharedDoorbellHandle } from "@virtio-ts/transport";

type WaitAsync = (
  array: Int32Array,
  index: number,
  value: number,
) => { async: false; value: string } | { async: true; value: Promise<string> };
// Atomics.waitAsync is ES2024 (Node 16+); typed here for code checked against ES2022.
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

/** Word indices of an exit slot. */
const REQ = 0;
const REP = 1;
const KIND = 2;
const OFFSET = 3;
const SIZE = 4;
const VALUE = 5;
const WORDS = 8;

/** What an exit asks of the VMM. */
export const ExitKind = {
  /** A trapped register read (`offset`, `size`); the reply is the value. */
  READ: 0,
  /** A trapped register write (`offset`, `size`, `value`). */
  WRITE: 1,
  /** A hypercall (`offset` is the call number, `value` its argument); the reply is a number. */
  HYPERCALL: 2,
} as const;

/** Hypercalls the lab's guests make (outside the timed part of a run). */
export const Hypercall = {
  /** Zero the VMM's counters (the timed part starts). */
  RESET_COUNTERS: 1,
  /** Snapshot the VMM's counters (the timed part ended). */
  SNAPSHOT: 2,
} as const;

/** A new exit slot. */
export function createExitSlot(): SharedArrayBuffer {
  return new SharedArrayBuffer(WORDS * 4);
}

/** The register file (or anything) the VMM runs an exit against. */
export interface ExitHandler {
  /** A register read. */
  read(offset: number, size: number): number;
  /** A register write. */
  write(offset: number, size: number, value: number): void;
  /** A hypercall. */
  hypercall(call: number, arg: number): number;
}

/**
 * The vCPU's side of the exit slot: each access blocks the calling thread (a worker: the
 * browser's and Node's main threads may not block) until the VMM has answered.
 */
export class VcpuExits {
  /** Exits taken. */
  count = 0;
  readonly #s: Int32Array;
  #seq = 0;

  /** @param slot - the slot from {@link createExitSlot}, shared with the VMM */
  constructor(slot: SharedArrayBuffer) {
    this.#s = new Int32Array(slot);
  }

  #exit(kind: number, offset: number, size: number, value: number): number {
    const s = this.#s;
    const seq = (this.#seq + 1) | 0;
    this.#seq = seq;
    this.count++;
    s[KIND] = kind;
    s[OFFSET] = offset;
    s[SIZE] = size;
    s[VALUE] = value | 0;
    // seq-cst store: the fields above are visible to the VMM once it sees the new REQ.
    Atomics.store(s, REQ, seq);
    Atomics.notify(s, REQ, 1);
    const prev = (seq - 1) | 0;
    // Sleep while REP still holds the previous number (the VMM has not answered this one).
    while (Atomics.load(s, REP) !== seq) Atomics.wait(s, REP, prev);
    return s[VALUE]!;
  }

  /** Trapped register read. */
  readonly read = (offset: number, size: number): number =>
    this.#exit(ExitKind.READ, offset, size, 0) >>> 0;

  /** Trapped register write. */
  readonly write = (offset: number, size: number, value: number): void => {
    this.#exit(ExitKind.WRITE, offset, size, value);
  };

  /** A hypercall (not counted as a register exit by the VMM). */
  hypercall(call: number, arg = 0): number {
    this.count--;
    return this.#exit(ExitKind.HYPERCALL, call, 0, arg);
  }
}

/**
 * The VMM's side: a loop on the VMM thread that sleeps in `Atomics.waitAsync` (so the thread's
 * event loop keeps running the device models' asynchronous back-end work) and serves each exit
 * as it comes.
 */
export class VmmExitServer {
  /** Exits served (hypercalls included). */
  served = 0;
  readonly #s: Int32Array;
  readonly #handler: ExitHandler;
  #stopped = false;
  readonly #done: Promise<void>;

  /**
   * Start serving.
   * @param slot - the slot shared with the vCPU
   * @param handler - what each exit runs against
   */
  constructor(slot: SharedArrayBuffer, handler: ExitHandler) {
    this.#s = new Int32Array(slot);
    this.#handler = handler;
    this.#done = this.#loop();
  }

  async #loop(): Promise<void> {
    const s = this.#s;
    let seen = Atomics.load(s, REQ);
    while (!this.#stopped) {
      const w = waitAsync(s, REQ, seen);
      if (w.async) await w.value;
      const q = Atomics.load(s, REQ);
      if (q === seen) continue;
      seen = q;
      const kind = s[KIND]!;
      const offset = s[OFFSET]!;
      const size = s[SIZE]!;
      let v = 0;
      if (kind === ExitKind.READ) v = this.#handler.read(offset, size);
      else if (kind === ExitKind.WRITE) this.#handler.write(offset, size, s[VALUE]! >>> 0);
      else v = this.#handler.hypercall(offset, s[VALUE]!);
      this.served++;
      s[VALUE] = v | 0;
      Atomics.store(s, REP, q);
      Atomics.notify(s, REP, 1);
    }
  }

  /** Stop the loop (after the vCPU is done). */
  async stop(): Promise<void> {
    this.#stopped = true;
    Atomics.notify(this.#s, REQ);
    await this.#done;
  }
}

/**
 * The vCPU's interrupt controller: an interrupt is a ring of a {@link SharedDoorbell} (injected
 * by the VMM thread, or straight by a vhost worker, irqfd-style); the vCPU takes it when it is
 * not inside an exit, and runs the guest's handler once per take.
 */
export class VcpuInterrupts {
  /** Handler runs. */
  taken = 0;
  /** The guest's handler. */
  handler: () => void = () => {};
  readonly #line: SharedDoorbell;
  #running = true;
  readonly #done: Promise<void>;

  /** @param line - the doorbell the interrupt sources ring */
  constructor(line: SharedDoorbellHandle) {
    this.#line = SharedDoorbell.from(line);
    this.#done = this.#loop();
  }

  async #loop(): Promise<void> {
    while (this.#running) {
      await this.#line.wait();
      if (!this.#running) break;
      if (this.#line.take() === 0) continue;
      this.taken++;
      this.handler();
    }
  }

  /** Stop taking interrupts. */
  async stop(): Promise<void> {
    this.#running = false;
    this.#line.ring();
    await this.#done;
  }
}
