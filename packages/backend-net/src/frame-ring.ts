/**
 * A bounded FIFO of frames stored in one preallocated byte arena: pushing copies the frame in,
 * nothing is allocated per frame. Frames are contiguous; a frame that does not fit between the
 * newest frame and the end of the arena goes to offset 0 if the oldest frame leaves room there,
 * so fragmentation can refuse a frame slightly before `maxBytes` are queued (never after).
 *
 * @internal
 */
export class FrameRing {
  readonly maxFrames: number;
  readonly maxBytes: number;
  #arena: Uint8Array | undefined;
  readonly #offsets: Uint32Array;
  readonly #lengths: Uint32Array;
  #head = 0;
  #count = 0;
  #bytes = 0;

  constructor(maxFrames: number, maxBytes: number) {
    this.maxFrames = maxFrames;
    this.maxBytes = maxBytes;
    this.#offsets = new Uint32Array(maxFrames);
    this.#lengths = new Uint32Array(maxFrames);
  }

  /** Frames queued. */
  get length(): number {
    return this.#count;
  }

  /** Bytes queued. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Copy `frame` in; false (nothing changed) when the frame or byte budget is exhausted. */
  push(frame: Uint8Array): boolean {
    const len = frame.length;
    if (this.#count === this.maxFrames || len > this.maxBytes || len === 0) return false;
    let at: number;
    if (this.#count === 0) {
      at = 0;
    } else {
      const head = this.#offsets[this.#head]!;
      const tail = (this.#head + this.#count - 1) % this.maxFrames;
      const end = this.#offsets[tail]! + this.#lengths[tail]!;
      if (end > head) {
        // Not wrapped: free space is [end, maxBytes) and [0, head).
        if (end + len <= this.maxBytes) at = end;
        else if (len <= head) at = 0;
        else return false;
      } else if (end + len <= head) {
        // Wrapped: free space is [end, head).
        at = end;
      } else {
        return false;
      }
    }
    // The arena is allocated once, on first use, so idle ports cost no memory.
    this.#arena ??= new Uint8Array(this.maxBytes);
    this.#arena.set(frame, at);
    const slot = (this.#head + this.#count) % this.maxFrames;
    this.#offsets[slot] = at;
    this.#lengths[slot] = len;
    this.#count++;
    this.#bytes += len;
    return true;
  }

  /** A view of the oldest frame (valid until the next push), or undefined when empty. */
  peek(): Uint8Array | undefined {
    if (this.#count === 0) return undefined;
    const at = this.#offsets[this.#head]!;
    return this.#arena!.subarray(at, at + this.#lengths[this.#head]!);
  }

  /** Drop the oldest frame. */
  shift(): void {
    if (this.#count === 0) return;
    this.#bytes -= this.#lengths[this.#head]!;
    this.#head = (this.#head + 1) % this.maxFrames;
    this.#count--;
  }

  /** Drop everything; returns the number of frames dropped. */
  clear(): number {
    const n = this.#count;
    this.#head = 0;
    this.#count = 0;
    this.#bytes = 0;
    return n;
  }
}
