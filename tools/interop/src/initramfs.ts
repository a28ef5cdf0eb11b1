import { createHash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";
import { gzipSync } from "node:zlib";

/** One member of an initramfs (a cpio "newc" archive). Paths are absolute (`/bin/sh`). */
export type InitramfsEntry =
  | {
      /** A directory. */
      readonly kind: "dir";
      /** Absolute path in the guest. */
      readonly path: string;
      /** Permission bits. Default 0o755. */
      readonly mode?: number;
    }
  | {
      /** A regular file. */
      readonly kind: "file";
      /** Absolute path in the guest. */
      readonly path: string;
      /** Contents; a string is written as UTF-8. */
      readonly data: Uint8Array | string;
      /** Permission bits. Default 0o644. */
      readonly mode?: number;
    }
  | {
      /** A symbolic link. */
      readonly kind: "symlink";
      /** Absolute path in the guest. */
      readonly path: string;
      /** What the link points to. */
      readonly target: string;
    }
  | {
      /** A character device node. */
      readonly kind: "chardev";
      /** Absolute path in the guest. */
      readonly path: string;
      /** Device major number. */
      readonly major: number;
      /** Device minor number. */
      readonly minor: number;
      /** Permission bits. Default 0o600. */
      readonly mode?: number;
    };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function hex8(n: number): string {
  return (n >>> 0).toString(16).padStart(8, "0");
}

function pad4(n: number): number {
  return (4 - (n & 3)) & 3;
}

/**
 * Write a cpio archive in the "newc" format (magic `070701`), the format the Linux kernel
 * unpacks as an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst): a
 * 110-byte ASCII header per member, the NUL-terminated name and the data, each padded to 4
 * bytes, ended by a `TRAILER!!!` member. Owners are root, timestamps 0, so the same entries
 * always give the same bytes.
 *
 * @param entries - the members, written in order (a directory before what it contains)
 * @returns the uncompressed archive
 * @throws RangeError naming a path that is not absolute
 */
export function cpioNewc(entries: readonly InitramfsEntry[]): Uint8Array {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  let ino = 1;
  const member = (
    name: string,
    mode: number,
    data: Uint8Array,
    nlink: number,
    rdev: [number, number],
  ): void => {
    const nameBytes = enc.encode(`${name}\0`);
    const header =
      "070701" +
      hex8(name === "TRAILER!!!" ? 0 : ino++) +
      hex8(mode) +
      hex8(0) + // uid
      hex8(0) + // gid
      hex8(nlink) +
      hex8(0) + // mtime
      hex8(data.length) +
      hex8(0) + // devmajor
      hex8(0) + // devminor
      hex8(rdev[0]) +
      hex8(rdev[1]) +
      hex8(nameBytes.length) +
      hex8(0); // check (only used by the "crc" format)
    parts.push(enc.encode(header), nameBytes, new Uint8Array(pad4(110 + nameBytes.length)));
    if (data.length > 0) parts.push(data, new Uint8Array(pad4(data.length)));
  };
  for (const e of entries) {
    if (!e.path.startsWith("/")) throw new RangeError(`entry path must be absolute, got ${e.path}`);
    const name = e.path.slice(1);
    switch (e.kind) {
      case "dir":
        member(name, S_IFDIR | (e.mode ?? 0o755), new Uint8Array(0), 2, [0, 0]);
        break;
      case "file":
        member(
          name,
          S_IFREG | (e.mode ?? 0o644),
          typeof e.data === "string" ? enc.encode(e.data) : e.data,
          1,
          [0, 0],
        );
        break;
      case "symlink":
        member(name, S_IFLNK | 0o777, enc.encode(e.target), 1, [0, 0]);
        break;
      case "chardev":
        member(name, S_IFCHR | (e.mode ?? 0o600), new Uint8Array(0), 1, [e.major, e.minor]);
        break;
    }
  }
  member("TRAILER!!!", 0, new Uint8Array(0), 1, [0, 0]);
  const total = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** A Linux kernel image and the modules built with it. */
export interface KernelInfo {
  /** Path of the bootable image (`/boot/vmlinuz-<version>`). */
  readonly image: string;
  /** The release string `uname -r` prints in the guest. */
  readonly version: string;
  /** `/lib/modules/<version>`. */
  readonly modulesDir: string;
}

/**
 * apt packages the interop tests need (Debian 12 names): QEMU (its Depends bring SeaBIOS and
 * qboot), a kernel with modules, static BusyBox, tshark, and cpio (an independent reader of
 * the archives we write).
 */
export const INTEROP_APT_PACKAGES: readonly string[] = [
  "qemu-system-x86",
  "linux-image-amd64",
  "busybox-static",
  "tshark",
  "cpio",
];

const APT_HINT = `install them with: apt-get install -y --no-install-recommends ${INTEROP_APT_PACKAGES.join(" ")} (see tools/interop/README.md)`;

/**
 * The installed kernel: the newest `/boot/vmlinuz-*` whose `/lib/modules/<version>` exists.
 * @param bootDir - where to look (default `/boot`)
 * @throws Error saying which package to install when no kernel (or its modules) is found
 */
export function findKernel(bootDir = "/boot"): KernelInfo {
  const images = existsSync(bootDir)
    ? readdirSync(bootDir)
        .filter((f) => f.startsWith("vmlinuz-"))
        .sort()
        .reverse()
    : [];
  for (const f of images) {
    const version = f.slice("vmlinuz-".length);
    const modulesDir = join("/lib/modules", version);
    if (existsSync(join(modulesDir, "modules.dep"))) {
      return { image: join(bootDir, f), version, modulesDir };
    }
  }
  throw new Error(
    `no Linux kernel with modules found (${bootDir}/vmlinuz-* and /lib/modules/<version>/modules.dep); ${APT_HINT}`,
  );
}

function moduleName(path: string): string {
  return basename(path)
    .replace(/\.ko(\.(xz|zst|gz))?$/, "")
    .replaceAll("-", "_");
}

/** A kernel module file chosen by {@link resolveModules}. */
export interface ModuleFile {
  /** Module name (`virtio_net`; dashes read as underscores). */
  readonly name: string;
  /** Absolute path of the `.ko` file. */
  readonly path: string;
}

/**
 * The `depends=` field of a module's `.modinfo` section: the modules whose symbols it uses. The
 * section is a run of NUL-terminated `key=value` strings, so the field is found by scanning the
 * file's bytes (no ELF parsing needed; `depends=` is always present, empty when there are none).
 *
 * @param ko - the module file's bytes
 * @returns the module names (dashes read as underscores)
 */
export function moduleDepends(ko: Uint8Array): string[] {
  const key = new TextEncoder().encode("depends=");
  outer: for (let i = 0; i + key.length <= ko.length; i++) {
    for (let j = 0; j < key.length; j++) if (ko[i + j] !== key[j]) continue outer;
    // Only a field at the start of a modinfo string counts (after a NUL).
    if (i > 0 && ko[i - 1] !== 0) continue;
    let end = i + key.length;
    while (end < ko.length && ko[end] !== 0) end++;
    const value = new TextDecoder().decode(ko.subarray(i + key.length, end));
    return value
      .split(",")
      .filter((s) => s !== "")
      .map((s) => s.replaceAll("-", "_"));
  }
  return [];
}

/** Every `.ko*` file under `dir`, by module name, paths relative to `root`. */
function scanModuleTree(root: string, dir: string, out: Map<string, string>): void {
  for (const e of readdirSync(join(root, dir), { withFileTypes: true })) {
    const rel = dir === "" ? e.name : `${dir}/${e.name}`;
    if (e.isDirectory()) scanModuleTree(root, rel, out);
    else if (/\.ko(\.(xz|zst|gz))?$/.test(e.name)) out.set(moduleName(e.name), rel);
  }
}

/**
 * The modules `names` need, dependencies first (the order `insmod` must load them in), read
 * from `modules.dep` the way `modprobe` does. Each module appears once. A module tree without
 * `modules.dep` (a kernel package unpacked with `dpkg -x`, where `depmod` never ran) is indexed
 * by walking it and reading each needed module's `depends=` field ({@link moduleDepends}).
 *
 * @param modulesDir - `/lib/modules/<version>`
 * @param names - modules wanted (built-in ones, absent from the tree, are an error: there
 *   is nothing to load, so the caller should drop them)
 * @returns the files to load, in order
 * @throws Error naming a module that is not in the tree, or one that is compressed
 *   (BusyBox `insmod` loads plain `.ko` only)
 */
export function resolveModules(modulesDir: string, names: readonly string[]): ModuleFile[] {
  const depFile = join(modulesDir, "modules.dep");
  const index = new Map<string, string>();
  const deps = new Map<string, string[]>();
  if (existsSync(depFile)) {
    for (const line of readFileSync(depFile, "utf8").split("\n")) {
      const colon = line.indexOf(":");
      if (colon < 0) continue;
      const path = line.slice(0, colon);
      const rest = line
        .slice(colon + 1)
        .trim()
        .split(/\s+/)
        .filter((s) => s !== "");
      index.set(moduleName(path), path);
      deps.set(moduleName(path), rest.map(moduleName));
    }
  } else if (existsSync(join(modulesDir, "kernel"))) {
    scanModuleTree(modulesDir, "", index);
  }
  const where = existsSync(depFile) ? depFile : `${modulesDir} (no modules.dep)`;
  const out: ModuleFile[] = [];
  const done = new Set<string>();
  const visiting = new Set<string>();
  const visit = (name: string): void => {
    if (done.has(name) || visiting.has(name)) return;
    const path = index.get(name);
    if (path === undefined) throw new Error(`module ${name} is not in ${where}`);
    if (!path.endsWith(".ko")) {
      throw new Error(`module ${name} is compressed (${path}); BusyBox insmod needs a plain .ko`);
    }
    let needs = deps.get(name);
    if (needs === undefined) {
      needs = moduleDepends(readFileSync(join(modulesDir, path)));
      deps.set(name, needs);
    }
    visiting.add(name);
    for (const d of needs) visit(d);
    visiting.delete(name);
    done.add(name);
    out.push({ name, path: join(modulesDir, path) });
  };
  for (const n of names) visit(n.replaceAll("-", "_"));
  return out;
}

/** Options of {@link buildInitramfs}. */
export interface InitramfsOptions {
  /**
   * The test, run by `/bin/sh` after the modules are loaded. Its exit status is printed as
   * `@@INTEROP-EXIT <status>@@` (read back as `GuestResult.guestExit`); then the guest
   * powers off.
   */
  readonly script: string;
  /** Kernel modules to load (their dependencies are added, in order). Default none. */
  readonly modules?: readonly string[];
  /** More members (files the script uses...). */
  readonly files?: readonly InitramfsEntry[];
  /** The kernel whose modules are used. Default {@link findKernel}. */
  readonly kernel?: KernelInfo;
  /** The static BusyBox binary. Default `/bin/busybox`. */
  readonly busybox?: string;
  /** Where built images are kept, by content hash. Default `<tmpdir>/virtio-ts-interop`. */
  readonly cacheDir?: string;
}

/** What {@link buildInitramfs} made. */
export interface Initramfs {
  /** Path of the gzip-compressed newc archive, for QEMU's `-initrd`. */
  readonly path: string;
  /** SHA-256 (hex) of the uncompressed archive; also in the file name. */
  readonly hash: string;
  /** Whether the file was already in the cache. */
  readonly cached: boolean;
  /** Modules `/init` loads, in order. */
  readonly modules: readonly string[];
}

/** Printed by `/init` before the test script runs. */
export const START_MARKER = "@@INTEROP-START@@";
/** Printed by `/init` after the test script, with its exit status: `@@INTEROP-EXIT 0@@`. */
export const EXIT_MARKER = "@@INTEROP-EXIT";

/**
 * The `/init` script: mount proc, sysfs and devtmpfs (the kernel does not mount devtmpfs in
 * an initramfs), install the BusyBox applets, load the modules in order, run `/test.sh`, print
 * its status and power off (QEMU exits; with `-no-reboot` a panic also ends QEMU).
 */
function initScript(modules: readonly ModuleFile[]): string {
  const loads = modules
    .map((m) => `insmod /lib/modules/${m.name}.ko || echo "@@INTEROP-INSMOD-FAILED ${m.name}@@"`)
    .join("\n");
  return `#!/bin/sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
${loads}
echo ${START_MARKER}
/bin/sh /test.sh
echo "${EXIT_MARKER} $?@@"
poweroff -f
`;
}

/**
 * Build (or take from the cache) a gzip-compressed initramfs: static BusyBox, the requested
 * kernel modules, an `/init` that loads them and runs `script`. Written with Node only (no
 * `cpio`/`gzip` binaries). Images are cached by the hash of their contents, so a test that
 * boots the same guest twice builds it once; concurrent builders race harmlessly (write to a
 * temporary name, then rename).
 *
 * @param options - the script, modules, extra files
 * @returns where the image is and what it holds
 * @throws Error naming a missing BusyBox, kernel or module (with the apt packages to install)
 */
export function buildInitramfs(options: InitramfsOptions): Initramfs {
  const kernel = options.kernel ?? findKernel();
  const busyboxPath = options.busybox ?? "/bin/busybox";
  if (!existsSync(busyboxPath)) {
    throw new Error(`static BusyBox not found at ${busyboxPath}; ${APT_HINT}`);
  }
  const modules = resolveModules(kernel.modulesDir, options.modules ?? []);
  const entries: InitramfsEntry[] = [
    ...["/bin", "/sbin", "/usr", "/usr/bin", "/usr/sbin", "/dev", "/proc", "/sys", "/tmp"].map(
      (path): InitramfsEntry => ({ kind: "dir", path }),
    ),
    { kind: "dir", path: "/lib" },
    { kind: "dir", path: "/lib/modules" },
    // The kernel opens /dev/console for init's stdio before devtmpfs is mounted.
    { kind: "chardev", path: "/dev/console", major: 5, minor: 1 },
    { kind: "file", path: "/bin/busybox", data: readFileSync(busyboxPath), mode: 0o755 },
    { kind: "symlink", path: "/bin/sh", target: "busybox" },
    ...modules.map(
      (m): InitramfsEntry => ({
        kind: "file",
        path: `/lib/modules/${m.name}.ko`,
        data: readFileSync(m.path),
      }),
    ),
    { kind: "file", path: "/init", data: initScript(modules), mode: 0o755 },
    { kind: "file", path: "/test.sh", data: options.script, mode: 0o755 },
    ...(options.files ?? []),
  ];
  const archive = cpioNewc(entries);
  const hash = createHash("sha256").update(archive).digest("hex");
  const dir = options.cacheDir ?? join(tmpdir(), "virtio-ts-interop");
  const path = join(dir, `initramfs-${hash.slice(0, 32)}.cpio.gz`);
  const names = modules.map((m) => m.name);
  if (existsSync(path)) return { path, hash, cached: true, modules: names };
  mkdirSync(dir, { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, gzipSync(archive, { level: 6 }));
  renameSync(tmp, path);
  return { path, hash, cached: false, modules: names };
}
