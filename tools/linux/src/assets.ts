import { existsSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { homedir } from "node:os";
import { dirname, join } from "node:path";

/** The bytes of the file at `path` in an ArrayBuffer of their own (what v86 takes for images). */
export function readArrayBuffer(path: string): ArrayBuffer {
  const b = readFileSync(path);
  return b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer;
}

/** Everything a v86 boot of the i686 guest needs from outside the repository. */
export interface GuestAssets {
  /** The cache folder scripts/linux-guest.sh fills. */
  readonly cacheDir: string;
  /** `uname -r` of the guest kernel (6.1.0-NN-686). */
  readonly kernelVersion: string;
  /** The bzImage (`boot/vmlinuz-<version>`). */
  readonly kernel: string;
  /** `lib/modules/<version>` of the unpacked kernel package. */
  readonly modulesDir: string;
  /** The static i386 BusyBox. */
  readonly busybox: string;
  /** SeaBIOS `bios.bin`. */
  readonly bios: string;
  /** SeaBIOS `vgabios-stdvga.bin`. */
  readonly vgaBios: string;
  /** v86's `build/v86.wasm`. */
  readonly v86Wasm: string;
  /** v86's ES module entry (`build/libv86.mjs`). */
  readonly v86Module: string;
}

/** The command that fetches the guest (run from the repository root). */
export const FETCH_COMMAND = "bash scripts/linux-guest.sh";

/**
 * A file the guest needs is missing. The message names the package that provides it and the
 * command that fetches it.
 */
export class MissingAssetError extends Error {
  /** Literal code for callers that branch on it. */
  readonly code = "missing-asset" as const;
  /** What is missing (a path or a package). */
  readonly what: string;
  /** The package that provides it. */
  readonly package: string;
  /** The command that installs or fetches it. */
  readonly command: string;

  constructor(what: string, pkg: string, command: string) {
    super(`${what} is missing (package ${pkg}); fetch it with: ${command}`);
    this.name = "MissingAssetError";
    this.what = what;
    this.package = pkg;
    this.command = command;
  }
}

/** Options of {@link findGuestAssets}. */
export interface FindAssetsOptions {
  /** Cache folder (default `$VIRTIO_TS_LINUX_ASSETS`, else `$XDG_CACHE_HOME` or `~/.cache`, `/virtio-ts/linux-i686`). */
  readonly cacheDir?: string;
  /** Folder of SeaBIOS images (default `/usr/share/seabios`). */
  readonly biosDir?: string;
  /** Where to resolve the `v86` package from (default: this module). */
  readonly resolveFrom?: string;
}

/** The default cache folder, as scripts/linux-guest.sh computes it. */
export function defaultCacheDir(): string {
  const env = process.env.VIRTIO_TS_LINUX_ASSETS;
  if (env !== undefined && env !== "") return env;
  const xdg = process.env.XDG_CACHE_HOME;
  return join(
    xdg !== undefined && xdg !== "" ? xdg : join(homedir(), ".cache"),
    "virtio-ts",
    "linux-i686",
  );
}

/**
 * Locate the guest kernel, its modules, BusyBox, SeaBIOS and v86.
 * @param options - where to look
 * @returns the paths
 * @throws MissingAssetError naming the first missing piece, its package and the command that
 *   fetches it
 */
export function findGuestAssets(options: FindAssetsOptions = {}): GuestAssets {
  const cacheDir = options.cacheDir ?? defaultCacheDir();
  const fetch = `${FETCH_COMMAND} (cache: ${cacheDir})`;
  const ready = join(cacheDir, "READY");
  if (!existsSync(ready)) {
    throw new MissingAssetError(`the i686 guest kernel (${ready})`, "linux-image-686:i386", fetch);
  }
  const kernelVersion = readFileSync(ready, "utf8").trim();
  const kernel = join(cacheDir, "kernel", "boot", `vmlinuz-${kernelVersion}`);
  if (!existsSync(kernel)) {
    throw new MissingAssetError(`the kernel ${kernel}`, `linux-image-${kernelVersion}:i386`, fetch);
  }
  const modulesDir = join(cacheDir, "kernel", "lib", "modules", kernelVersion);
  if (!existsSync(join(modulesDir, "kernel"))) {
    throw new MissingAssetError(
      `the kernel modules ${modulesDir}`,
      `linux-image-${kernelVersion}:i386`,
      fetch,
    );
  }
  const busybox = join(cacheDir, "busybox", "bin", "busybox");
  if (!existsSync(busybox)) {
    throw new MissingAssetError(`BusyBox ${busybox}`, "busybox-static:i386", fetch);
  }
  const biosDir = options.biosDir ?? "/usr/share/seabios";
  const bios = join(biosDir, "bios.bin");
  const vgaBios = join(biosDir, "vgabios-stdvga.bin");
  for (const f of [bios, vgaBios]) {
    if (!existsSync(f)) {
      throw new MissingAssetError(
        `the BIOS image ${f}`,
        "seabios",
        `apt-get install seabios (as root), or ${FETCH_COMMAND}`,
      );
    }
  }
  let v86Module: string;
  try {
    const req = createRequire(options.resolveFrom ?? import.meta.url);
    v86Module = req.resolve("v86");
  } catch {
    throw new MissingAssetError(
      "the v86 emulator (npm package v86)",
      "v86@0.5.462 (npm)",
      "pnpm install",
    );
  }
  const v86Wasm = join(dirname(v86Module), "v86.wasm");
  if (!existsSync(v86Wasm)) {
    throw new MissingAssetError(`v86's ${v86Wasm}`, "v86@0.5.462 (npm)", "pnpm install");
  }
  return {
    cacheDir,
    kernelVersion,
    kernel,
    modulesDir,
    busybox,
    bios,
    vgaBios,
    v86Wasm,
    v86Module,
  };
}
