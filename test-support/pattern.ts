// Test data shared by the suites: deterministic bytes a guest (or a device) can check.
import { createHash } from "node:crypto";

/** `n` deterministic pseudo-random bytes (xorshift32 from `seed`): data a guest can check. */
export function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** The MD5 of `b` as hex, what `md5sum` prints in the guest. */
export const md5 = (b: Uint8Array): string => createHash("md5").update(b).digest("hex");
