/**
 * The native addon (`native/vhost_user.c`), typed and loaded lazily: importing this package
 * never loads it, so the message codec works where no compiler ever ran. The first call that
 * needs a system call Node lacks (SCM_RIGHTS, memfd, mmap, eventfd) loads it, or throws
 * {@link NativeAddonMissingError} saying how to build it.
 * @module
 */
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";

/** An opaque uv_poll watcher handle returned by {@link VhostUserNative.watch}. */
export interface NativeWatch {
  /** Never present: the type is a brand for the addon's external handle. */
  readonly __nativeWatch?: never;
}

/**
 * The addon's functions. Every fd it creates is close-on-exec; sockets and eventfds are
 * non-blocking. Failures throw an `Error` whose `code` is `E<errno>`.
 *
 * These are thin system-call wrappers: they check only what they need not to crash. Code
 * outside this package should use {@link EventFd}, {@link createSharedMemory} and
 * {@link VhostUserConnection}, which validate their arguments.
 */
export interface VhostUserNative {
  /** `memfd_create(name, MFD_CLOEXEC)` then `ftruncate(size)`: a new fd. */
  memfdCreate(name: string, size: number): number;
  /** `mmap(MAP_SHARED, RW)` of `size` bytes at `offset` of `fd`: the buffer (munmapped when collected) and its address. */
  mmapShared(fd: number, size: number, offset: number): [ArrayBuffer, bigint];
  /** `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`: a new fd. */
  eventfdCreate(): number;
  /** Add `value` to the eventfd counter; false if it would overflow. */
  eventfdWrite(fd: number, value: number): boolean;
  /** Read and reset the eventfd counter; null if it was 0. */
  eventfdRead(fd: number): bigint | null;
  /** `close(fd)`. */
  closeFd(fd: number): void;
  /** Connect an AF_UNIX stream socket to `path`: a non-blocking fd. */
  connectUnix(path: string): number;
  /** `socketpair(AF_UNIX, SOCK_STREAM)`: two connected non-blocking fds. */
  socketPair(): [number, number];
  /** `sendmsg` of `bytes` with `fds` as SCM_RIGHTS: bytes sent, or -1 if it would block. */
  sendMsg(fd: number, bytes: Uint8Array, fds: readonly number[]): number;
  /**
   * `recvmsg` into `into`, accepting up to `maxFds` fds: [bytes (0 at end of stream, -1 if it
   * would block), fds received (now the caller's to close), whether fds or data were cut off].
   */
  recvMsg(fd: number, into: Uint8Array, maxFds: number): [number, number[], boolean];
  /** Call `callback(status, events)` from the event loop while `fd` is readable or hung up. */
  watch(fd: number, callback: (status: number, events: number) => void): NativeWatch;
  /** Stop a watcher (idempotent; safe inside its own callback). */
  unwatch(handle: NativeWatch): void;
}

/**
 * The command that builds the addon where this package is installed
 * (`node <package directory>/scripts/build-native.mjs`, with the real path), as
 * {@link NativeAddonMissingError} gives it. The package's `install` script runs the same script;
 * it needs a C compiler, make, python3 and Node's headers.
 */
export const BUILD_NATIVE_COMMAND = `node ${fileURLToPath(new URL("../scripts/build-native.mjs", import.meta.url))}`;

/** Why the install step could not build the addon (the first line it recorded), if it said. */
function installFailure(): string {
  try {
    const why = readFileSync(new URL("../native/build-failure.txt", import.meta.url), "utf8");
    return ` The install step said: ${why.split("\n")[0]}`;
  } catch {
    return "";
  }
}

/**
 * The native addon is not built (or cannot be loaded here). Host misconfiguration, not a
 * peer's doing, so it is a plain `Error`; `cause` holds the loader's error.
 */
export class NativeAddonMissingError extends Error {
  /** Always "native-addon-missing". */
  readonly code = "native-addon-missing";

  /** @param cause - why loading failed */
  constructor(cause: unknown) {
    super(
      `@virtio-ts/vhost-user: native addon not built: run \`${BUILD_NATIVE_COMMAND}\` (needs a C compiler, make, python3 and Node's headers; Linux only).${installFailure()} ${String(cause instanceof Error ? cause.message : cause).split("\n")[0]}`,
      { cause },
    );
  }

  /** The class name. */
  override get name(): string {
    return "NativeAddonMissingError";
  }
}

let loaded: VhostUserNative | undefined;
let failure: NativeAddonMissingError | undefined;

/**
 * Load the addon (once) and return it.
 * @returns the addon's functions
 * @throws NativeAddonMissingError if it is not built or cannot be loaded on this platform
 */
export function loadNative(): VhostUserNative {
  if (loaded !== undefined) return loaded;
  if (failure !== undefined) throw failure;
  try {
    // src/native.ts and dist/native.js are both one level below the package root.
    const require = createRequire(import.meta.url);
    loaded = require("../native/build/Release/vhost_user.node") as VhostUserNative;
    return loaded;
  } catch (e) {
    failure = new NativeAddonMissingError(e);
    throw failure;
  }
}

/**
 * Whether the addon can be loaded here (loading it if so). Never throws.
 * @returns true if {@link loadNative} succeeds
 */
export function nativeAvailable(): boolean {
  try {
    loadNative();
    return true;
  } catch {
    return false;
  }
}
