import {
  accessSync,
  constants,
  mkdirSync,
  readFileSync,
  renameSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { findKernel, type KernelInfo } from "./initramfs.js";

/** A QEMU accelerator the harness can use. */
export type Accelerator = "kvm" | "tcg";

/** Which accelerator guests use, and why. */
export interface AcceleratorChoice {
  /** The accelerator for `-accel`. */
  readonly accel: Accelerator;
  /**
   * One line saying why, for the run's log: `INTEROP_ACCEL=tcg forces it`, `KVM probe: guest
   * reached init in 1.2 s`, `KVM probe: no marker after 10 s (...)`, `/dev/kvm cannot be opened`.
   */
  readonly reason: string;
  /** Whether this verdict came from the cache of an earlier probe in this boot. */
  readonly cached: boolean;
}

/** Options of {@link chooseAccelerator}. */
export interface ChooseAcceleratorOptions {
  /** The kernel the probe boots. Default {@link findKernel}. */
  readonly kernel?: KernelInfo;
  /** The QEMU binary. Default `qemu-system-x86_64` on PATH. */
  readonly qemu?: string;
  /**
   * How long the probe guest may take to reach init and power off. Default
   * `INTEROP_KVM_PROBE_TIMEOUT_MS` or 15 000 ms. A Linux guest under working KVM does it in
   * 1–3 s (6 s on a loaded 2-core machine); under TCG the same boot takes 5–25 s.
   */
  readonly timeoutMs?: number;
  /** Probe again even when a verdict is cached for this boot. Default false. */
  readonly reprobe?: boolean;
  /** Where the verdict is cached. Default `<tmpdir>/virtio-ts-interop`. */
  readonly cacheDir?: string;
  /** The KVM device node that must open read/write before a probe is tried. Default `/dev/kvm`. */
  readonly kvmDevice?: string;
  /**
   * Boots the probe guest: resolves with whether the guest printed the marker, and what
   * happened otherwise. Default: a real QEMU boot of `kernel` under `-accel kvm` with an
   * initramfs whose init prints a marker and powers off (see {@link startGuest}). Tests
   * inject a fake to simulate a machine whose KVM is broken.
   */
  readonly probe?: (timeoutMs: number) => Promise<KvmProbeResult>;
}

/** What one KVM boot probe saw. */
export interface KvmProbeResult {
  /** The guest reached init and printed the marker. */
  readonly ok: boolean;
  /** Wall-clock time of the probe (ms). */
  readonly ms: number;
  /** When not ok: what happened (last serial line, QEMU's exit status or its error). */
  readonly detail: string;
}

interface CacheEntry {
  readonly key: string;
  readonly accel: Accelerator;
  readonly reason: string;
}

let inProcess: Promise<AcceleratorChoice> | undefined;
let probeImpl:
  | ((timeoutMs: number, kernel: KernelInfo, qemu: string) => Promise<KvmProbeResult>)
  | undefined;

/**
 * Install the function that boots the real probe guest. `guest.ts` registers it at load, so
 * this module does not import the guest runner (which imports this module).
 * @internal
 */
export function registerKvmProbe(
  fn: (timeoutMs: number, kernel: KernelInfo, qemu: string) => Promise<KvmProbeResult>,
): void {
  probeImpl = fn;
}

function kvmOpens(device: string): boolean {
  try {
    accessSync(device, constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

function bootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown-boot";
  }
}

function mtime(path: string): number {
  return statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? 0;
}

function probeTimeout(option: number | undefined): number {
  if (option !== undefined) return option;
  const env = Number(process.env.INTEROP_KVM_PROBE_TIMEOUT_MS);
  return Number.isFinite(env) && env > 0 ? env : 15_000;
}

/**
 * Decide once which accelerator QEMU guests use: KVM only when a real Linux boot under KVM is
 * proven to work, TCG otherwise. A `/dev/kvm` that opens (and even creates VMs) is no proof:
 * on some nested machines a tiny real-mode guest runs under KVM while Linux hangs right after
 * `Probing EDD`. So, unless `INTEROP_ACCEL=kvm|tcg` forces a choice, this boots the kernel
 * under KVM with an initramfs that prints a marker and powers off, under a tight timeout, and
 * uses KVM only if the marker arrived in time.
 *
 * The verdict is cached for the machine's boot (a file in `cacheDir` keyed by the boot id, the
 * kernel and the QEMU binary), so the test files of a run, and later runs, probe once; the
 * interop tests' global setup probes afresh at the start of every run (`reprobe`). Within a
 * process the first call's promise is shared.
 *
 * @param options - kernel, QEMU binary, probe timeout, cache, probe override
 * @returns the accelerator and a one-line reason
 */
export function chooseAccelerator(
  options: ChooseAcceleratorOptions = {},
): Promise<AcceleratorChoice> {
  const forced = process.env.INTEROP_ACCEL;
  if (forced === "kvm" || forced === "tcg") {
    return Promise.resolve({
      accel: forced,
      reason: `INTEROP_ACCEL=${forced} forces it`,
      cached: false,
    });
  }
  if (forced !== undefined && forced !== "") {
    return Promise.reject(
      new RangeError(`INTEROP_ACCEL must be "kvm" or "tcg" (or unset to probe), not "${forced}"`),
    );
  }
  const custom =
    options.probe !== undefined ||
    options.reprobe === true ||
    options.cacheDir !== undefined ||
    options.kvmDevice !== undefined;
  if (!custom && inProcess !== undefined) return inProcess;
  const p = decide(options);
  if (!custom) inProcess = p;
  return p;
}

async function decide(options: ChooseAcceleratorOptions): Promise<AcceleratorChoice> {
  const device = options.kvmDevice ?? "/dev/kvm";
  if (!kvmOpens(device)) {
    return {
      accel: "tcg",
      reason: `${device} is missing or cannot be opened read/write`,
      cached: false,
    };
  }
  const kernel = options.kernel ?? findKernel();
  const qemu = options.qemu ?? "qemu-system-x86_64";
  const dir = options.cacheDir ?? join(tmpdir(), "virtio-ts-interop");
  const key = [bootId(), kernel.image, mtime(kernel.image), qemu, device, mtime(device)].join("|");
  const file = join(dir, "kvm-probe.json");
  if (options.reprobe !== true) {
    try {
      const entry = JSON.parse(readFileSync(file, "utf8")) as CacheEntry;
      if (entry.key === key && (entry.accel === "kvm" || entry.accel === "tcg")) {
        return { accel: entry.accel, reason: entry.reason, cached: true };
      }
    } catch {
      // no verdict yet for this boot
    }
  }
  const timeoutMs = probeTimeout(options.timeoutMs);
  const run =
    options.probe ??
    ((ms: number) => {
      if (probeImpl === undefined) throw new Error("no KVM probe registered (import guest.js)");
      return probeImpl(ms, kernel, qemu);
    });
  let result: KvmProbeResult;
  try {
    result = await run(timeoutMs);
  } catch (e) {
    result = { ok: false, ms: 0, detail: `probe failed to run: ${(e as Error).message}` };
  }
  const secs = (result.ms / 1000).toFixed(1);
  const choice: AcceleratorChoice = result.ok
    ? { accel: "kvm", reason: `KVM probe: guest reached init in ${secs} s`, cached: false }
    : {
        accel: "tcg",
        reason: `KVM probe: no marker after ${secs} s (${result.detail}), using TCG`,
        cached: false,
      };
  try {
    mkdirSync(dir, { recursive: true });
    const tmp = `${file}.${process.pid}`;
    writeFileSync(tmp, JSON.stringify({ key, accel: choice.accel, reason: choice.reason }));
    renameSync(tmp, file);
  } catch {
    // an unwritable cache only costs a probe per process
  }
  return choice;
}
