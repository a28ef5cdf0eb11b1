import type { BlockBackend } from "@virtio-ts/devices";

/**
 * One layer of a stack of interposers: takes the back-end below it and returns the back-end the
 * layer above (or the device) sees. {@link rateLimit} returns one; {@link layer} makes one from
 * any factory that takes the inner back-end as its first argument (`encrypt`, `slice`, …).
 */
export type BlockWrapper = (inner: BlockBackend) => BlockBackend;

/**
 * A layer whose construction is asynchronous (it reads a header or opens a file, like
 * `snapshotLog` or `openEncrypted`). Used with {@link composeAsync}.
 */
export type AsyncBlockWrapper = (inner: BlockBackend) => BlockBackend | Promise<BlockBackend>;

/**
 * Stack `wrappers` over `backend`. **The first wrapper is closest to the disk**, the last is
 * what the device sees: `compose(disk, a, b, c)` is `c(b(a(disk)))`, so a request from the
 * device passes through `c`, then `b`, then `a`, then reaches `disk` — the list reads from the
 * disk upwards, the way the layers are drawn in a storage stack. With no wrapper, `backend`
 * itself is returned (the one-one case: one device, one back-end, nothing in between).
 *
 * Order matters: put `rateLimit` last (outermost) so the guest's requests are charged as the
 * guest sees them, before encryption or logging multiply them; put `encrypt` above a
 * `snapshotLog` when the log file must hold ciphertext too.
 *
 * @param backend - the back-end at the bottom
 * @param wrappers - layers, from the one closest to `backend` outwards
 * @returns the outermost back-end
 * @throws TypeError naming `wrappers[i]` when an element is not a function or returns
 *   something that is not a back-end (a promise: use {@link composeAsync})
 * @example
 * ```ts
 * const group = new RateLimitGroup({ bytesPerSecond: 50 << 20 });
 * const disk = compose(MemoryDisk.ofSize(1 << 30), layer(slice, { offset: 0, length: 1 << 20 }), rateLimit(group));
 * ```
 */
export function compose(backend: BlockBackend, ...wrappers: readonly BlockWrapper[]): BlockBackend {
  let b = backend;
  for (let i = 0; i < wrappers.length; i++) {
    const w = wrappers[i];
    if (typeof w !== "function") throw new TypeError(`wrappers[${i}] must be a function`);
    const next: unknown = w(b);
    if (!isBlockBackend(next)) {
      throw new TypeError(
        `wrappers[${i}] must return a BlockBackend${next instanceof Promise ? " (it returned a promise: use composeAsync)" : ""}`,
      );
    }
    b = next;
  }
  return b;
}

/**
 * {@link compose} for layers that are built asynchronously: each wrapper may return a promise,
 * which is awaited before the next layer is built (first wrapper closest to the disk).
 *
 * @param backend - the back-end at the bottom
 * @param wrappers - layers, from the one closest to `backend` outwards
 * @returns the outermost back-end
 * @throws TypeError (as a rejection) naming `wrappers[i]` when an element is not a function or
 *   does not produce a back-end; whatever a wrapper's construction rejects with
 * @example
 * ```ts
 * const disk = await composeAsync(base, layer(snapshotLog, "disk.log", { create: true }), layer(encrypt, key));
 * ```
 */
export async function composeAsync(
  backend: BlockBackend,
  ...wrappers: readonly AsyncBlockWrapper[]
): Promise<BlockBackend> {
  let b = backend;
  for (let i = 0; i < wrappers.length; i++) {
    const w = wrappers[i];
    if (typeof w !== "function") throw new TypeError(`wrappers[${i}] must be a function`);
    const next: unknown = await w(b);
    if (!isBlockBackend(next)) throw new TypeError(`wrappers[${i}] must produce a BlockBackend`);
    b = next;
  }
  return b;
}

/**
 * Curry a factory whose first parameter is the inner back-end into a wrapper for
 * {@link compose} / {@link composeAsync}: `layer(encrypt, key)` is
 * `(inner) => encrypt(inner, key)`. The other arguments are bound now, the inner back-end
 * when the stack is built.
 *
 * @param factory - e.g. `encrypt`, `snapshotLog`, `slice`, `mirror`-style constructors
 * @param args - the factory's arguments after the inner back-end
 * @returns a wrapper returning what `factory` returns
 */
export function layer<A extends readonly unknown[], R extends BlockBackend | Promise<BlockBackend>>(
  factory: (inner: BlockBackend, ...args: A) => R,
  ...args: A
): (inner: BlockBackend) => R {
  if (typeof factory !== "function") throw new TypeError("factory must be a function");
  return (inner) => factory(inner, ...args);
}

function isBlockBackend(x: unknown): x is BlockBackend {
  if (typeof x !== "object" || x === null) return false;
  const b = x as Partial<Record<keyof BlockBackend, unknown>>;
  return (
    typeof b.read === "function" &&
    typeof b.write === "function" &&
    typeof b.flush === "function" &&
    typeof b.discard === "function" &&
    typeof b.writeZeroes === "function" &&
    typeof b.capacity === "number"
  );
}
