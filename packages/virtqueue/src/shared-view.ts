/**
 * Whether `view` lies in a SharedArrayBuffer, i.e. another thread may read or write it.
 *
 * The rings order their index and flag words with `Atomics` only where this is true: memory in
 * a plain `ArrayBuffer` (or a non-shared `WebAssembly.Memory`, as a one-thread emulator's guest
 * RAM) is seen by one thread only, where program order is all the ordering there is, and in
 * V8 11.3 every `Atomics.load` / `Atomics.store` is a builtin call of 7–8 ns rather than an
 * instruction. Internal (not exported from the package).
 */
export function inSharedMemory(view: ArrayBufferView): boolean {
  // "Not an ArrayBuffer of this realm" rather than "a SharedArrayBuffer": a SharedArrayBuffer
  // made in another realm (a vm context, an iframe) fails `instanceof SharedArrayBuffer`, and
  // must still get Atomics; an ArrayBuffer from another realm merely pays for them.
  return !(view.buffer instanceof ArrayBuffer);
}
