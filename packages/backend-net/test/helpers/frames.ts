import type { NetFrameSink } from "@virtio-ts/devices";

/** "02:00:00:00:00:0n" style addresses as bytes. */
export function mac(s: string): number[] {
  return s.split(":").map((h) => Number.parseInt(h, 16));
}

export const BROADCAST = "ff:ff:ff:ff:ff:ff";

/** An Ethernet frame dst|src|0x88b5|payload where payload bytes are `tag`. */
export function frame(dst: string, src: string, tag = 0, length = 60): Uint8Array {
  const f = new Uint8Array(length).fill(tag);
  f.set(mac(dst), 0);
  f.set(mac(src), 6);
  f[12] = 0x88;
  f[13] = 0xb5;
  return f;
}

/** A sink that copies what it gets; `accept` decides whether it has room. */
export class RecordingSink implements NetFrameSink {
  readonly frames: Uint8Array[] = [];
  accept = true;
  deliver(f: Uint8Array): boolean {
    if (!this.accept) return false;
    this.frames.push(f.slice());
    return true;
  }
  /** The payload tag (byte 14) of each received frame. */
  get tags(): number[] {
    return this.frames.map((f) => f[14]!);
  }
}
