import { type ChildProcess, spawn } from "node:child_process";
import {
  accessSync,
  closeSync,
  constants,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { type Accelerator, chooseAccelerator, registerKvmProbe } from "./accel.js";
import {
  buildInitramfs,
  EXIT_MARKER,
  findKernel,
  INTEROP_APT_PACKAGES,
  type InitramfsEntry,
  type KernelInfo,
  START_MARKER,
} from "./initramfs.js";

/** QEMU machine types the harness knows how to boot. */
export type GuestMachine = "pc" | "microvm";

/** Options of {@link startGuest} / {@link runGuest}. */
export interface GuestOptions {
  /** The test, a `/bin/sh` script run by `/init` after the modules are loaded. */
  readonly script: string;
  /**
   * `pc` (virtio-pci, default) or `microvm` (virtio-mmio; `tsc_early_khz=2000000` is added to
   * the command line, without it the kernel sometimes hangs calibrating the TSC under TCG).
   */
  readonly machine?: GuestMachine;
  /**
   * Kernel modules to load, dependencies added in order. Default: the virtio transport of the
   * machine (`virtio_pci` or `virtio_mmio`).
   */
  readonly modules?: readonly string[];
  /** More initramfs members (files the script uses). */
  readonly files?: readonly InitramfsEntry[];
  /**
   * More QEMU arguments, appended as given: `-device`, `-netdev`, `-chardev`, `-object`,
   * `-drive`, `-global`, `-numa`...
   */
  readonly args?: readonly string[];
  /** Guest RAM in MiB. Default 256. */
  readonly memoryMiB?: number;
  /**
   * Back guest RAM with a shared memfd (`-object memory-backend-memfd,id=mem,share=on -numa
   * node,memdev=mem`), as vhost-user back-ends need to map it. Default false.
   */
  readonly sharedMemory?: boolean;
  /**
   * Modern virtio-mmio devices on `microvm` (`-global virtio-mmio.force-legacy=false`; QEMU 7.2
   * defaults to legacy). Default true; ignored on `pc`.
   */
  readonly modernMmio?: boolean;
  /** More kernel command-line words. */
  readonly append?: readonly string[];
  /** Kill QEMU after this long (a hang guard, not a measurement). Default 60 000 ms. */
  readonly timeoutMs?: number;
  /** Called with every serial line (escape sequences stripped) as it arrives. */
  readonly onLine?: (line: string) => void;
  /** The kernel. Default {@link findKernel}. */
  readonly kernel?: KernelInfo;
  /** The QEMU binary. Default `qemu-system-x86_64` on PATH. */
  readonly qemu?: string;
  /**
   * The accelerator. Default: the verdict of {@link chooseAccelerator} (KVM only after a real
   * boot under KVM has been proven to work on this machine; `INTEROP_ACCEL` forces one).
   */
  readonly accel?: Accelerator;
  /**
   * How long to wait for a guest slot (see {@link startGuest}) before giving up. Default
   * 300 000 ms.
   */
  readonly slotTimeoutMs?: number;
  /** Where the guest-slot lock files live. Default `<tmpdir>/virtio-ts-interop`. */
  readonly slotDir?: string;
  /**
   * The caller already holds a guest slot ({@link acquireGuestSlot}) for this guest: take no
   * other. For guests that must run at the same time (two guests talking to each other), which
   * would otherwise wait for each other's slot. Default false.
   */
  readonly slotHeld?: boolean;
}

/** How a guest run ended. */
export interface GuestResult {
  /** The serial console output, escape sequences and carriage returns removed. */
  readonly log: string;
  /** QEMU's standard error (its own warnings and errors). */
  readonly stderr: string;
  /** QEMU's exit code (null when it was killed). */
  readonly qemuExit: number | null;
  /** The signal that ended QEMU, if any. */
  readonly signal: NodeJS.Signals | null;
  /**
   * The exit status of the test script, from the `@@INTEROP-EXIT <status>@@` line; undefined
   * when the guest never got there (panic, hang, missing module).
   */
  readonly guestExit: number | undefined;
  /** Whether the hang guard killed QEMU. */
  readonly timedOut: boolean;
  /** Wall-clock time from spawn to exit (ms), for reports only. */
  readonly durationMs: number;
  /** The full QEMU command line used. */
  readonly argv: readonly string[];
  /** The accelerator QEMU ran with. */
  readonly accel: Accelerator;
  /** Why that accelerator (see {@link chooseAccelerator}). */
  readonly accelReason: string;
  /** The serial output between `@@INTEROP-START@@` and the exit marker: what the script printed. */
  readonly output: string;
}

/** A running guest, from {@link startGuest}. */
export interface GuestHandle {
  /** The QEMU process (already spawned). */
  readonly process: ChildProcess;
  /** The full QEMU command line. */
  readonly argv: readonly string[];
  /** Settles when QEMU exits (never rejects: a spawn failure is in `stderr`). */
  readonly result: Promise<GuestResult>;
  /**
   * Resolves with the first serial line (seen so far or later) matching `pattern`; rejects if
   * QEMU exits first.
   */
  waitForLine(pattern: RegExp): Promise<string>;
  /** Kill QEMU (SIGKILL). */
  kill(): void;
}

// CSI (ESC [ ... final), OSC/charset selections and two-byte escapes: SeaBIOS, iPXE and the
// kernel's console may emit them; they are never part of what a test prints.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching terminal escapes is the point
const ESCAPES = /\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[@-Z\\-_])/g;

/**
 * Remove terminal escape sequences, carriage returns and NULs from serial output.
 * @param text - raw console output
 * @returns plain text
 */
export function stripEscapes(text: string): string {
  return text.replace(ESCAPES, "").replace(/[\r\0]/g, "");
}

/**
 * Arguments that back guest RAM with a shared memfd, for vhost-user: the back-end receives the
 * memfd and maps the guest's memory. (`-M microvm,memory-backend=mem` hangs in QEMU 7.2; the
 * NUMA form works on both machines.)
 * @param sizeMiB - guest RAM, equal to `-m`
 * @returns `-object memory-backend-memfd,... -numa node,memdev=mem`
 */
export function sharedMemoryArgs(sizeMiB: number): string[] {
  return [
    "-object",
    `memory-backend-memfd,id=mem,size=${sizeMiB}M,share=on`,
    "-numa",
    "node,memdev=mem",
  ];
}

function onPath(bin: string): string | undefined {
  if (bin.includes("/")) {
    try {
      accessSync(bin, constants.X_OK);
      return bin;
    } catch {
      return undefined;
    }
  }
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    const p = join(dir, bin);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * Check that the programs the interop tests run are installed: QEMU, tshark, a kernel with
 * modules and a static BusyBox. Call it in `beforeAll` so a machine without them fails with
 * this message rather than skipping.
 * @param programs - executables needed besides the kernel and BusyBox (default
 *   `qemu-system-x86_64` and `tshark`)
 * @throws Error listing what is missing and the apt packages to install
 */
export function requireTools(
  programs: readonly string[] = ["qemu-system-x86_64", "tshark"],
): KernelInfo {
  const missing = programs.filter((p) => onPath(p) === undefined);
  if (onPath("/bin/busybox") === undefined) missing.push("/bin/busybox");
  let kernel: KernelInfo | undefined;
  try {
    kernel = findKernel();
  } catch {
    missing.push("/boot/vmlinuz-* with /lib/modules/<version>");
  }
  if (missing.length > 0 || kernel === undefined) {
    throw new Error(
      `interop tests need ${missing.join(", ")}: apt-get install -y --no-install-recommends ${INTEROP_APT_PACKAGES.join(" ")} (see tools/interop/README.md)`,
    );
  }
  return kernel;
}

const live = new Set<ChildProcess>();
const heldSlots = new Set<string>();
let exitHook = false;

function installExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  process.once("exit", () => {
    for (const c of live) c.kill("SIGKILL");
    for (const s of heldSlots) rmSync(s, { force: true });
  });
}

/** Guests allowed to run at once on this machine: `INTEROP_MAX_GUESTS`, default 1. */
function maxGuests(): number {
  const n = Number(process.env.INTEROP_MAX_GUESTS ?? "1");
  return Number.isInteger(n) && n >= 1 ? n : 1;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Take one of the machine-wide guest slots: a lock file `qemu-slot-<i>.lock` holding our pid,
 * created with O_EXCL. A lock whose process is gone is removed. TCG guests are CPU-bound, so
 * test files running in parallel (vitest workers, other packages' suites) would otherwise slow
 * every boot down together.
 */
async function acquireSlot(dir: string, timeoutMs: number): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    for (let i = 0; i < maxGuests(); i++) {
      const path = join(dir, `qemu-slot-${i}.lock`);
      try {
        const fd = openSync(path, "wx");
        writeSync(fd, `${process.pid}`);
        closeSync(fd);
        heldSlots.add(path);
        installExitHook();
        return path;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        let holder = Number.NaN;
        try {
          holder = Number(readFileSync(path, "utf8"));
        } catch {
          continue; // released meanwhile
        }
        // A dead pid is a stale lock; an empty file is a lock being written right now, or
        // (if it stays empty) one whose writer died before writing its pid.
        const stale =
          Number.isInteger(holder) && holder > 0
            ? !pidAlive(holder)
            : Date.now() - (statSync(path, { throwIfNoEntry: false })?.mtimeMs ?? Date.now()) >
              10_000;
        if (stale) rmSync(path, { force: true });
      }
    }
    if (performance.now() > deadline) {
      throw new Error(
        `waited ${timeoutMs} ms for a QEMU slot (${maxGuests()} at a time; INTEROP_MAX_GUESTS raises it)`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function releaseSlot(path: string): void {
  if (heldSlots.delete(path)) rmSync(path, { force: true });
}

/**
 * Take one of the machine-wide guest slots that QEMU guests of {@link startGuest} also use,
 * for another CPU-bound guest (a Linux boot in the v86 emulator): at most
 * `INTEROP_MAX_GUESTS` (default 1) such guests run at once across processes.
 * @param timeoutMs - how long to wait for a slot (default 10 minutes)
 * @returns a release function (idempotent; the slot is also freed when the process exits)
 * @throws Error after `timeoutMs` without a slot
 */
export async function acquireGuestSlot(timeoutMs = 600_000): Promise<() => void> {
  const path = await acquireSlot(join(tmpdir(), "virtio-ts-interop"), timeoutMs);
  return () => releaseSlot(path);
}

/**
 * Build the guest's initramfs (cached) and boot it under QEMU, with KVM when a boot probe has
 * shown that Linux really boots under KVM here and TCG otherwise ({@link chooseAccelerator};
 * `INTEROP_ACCEL=tcg|kvm` forces one):
 * `qemu-system-x86_64 -accel <kvm|tcg> -M <machine> -m <mem> -nodefaults -serial stdio -display none
 * -no-reboot -kernel ... -initrd ... -append 'console=ttyS0 quiet panic=-1 ...' <args>`.
 * A kernel panic reboots at once (`panic=-1`), which `-no-reboot` turns into QEMU exiting; a
 * hang is killed after `timeoutMs` (counted from spawn). QEMU processes still running when
 * Node exits are killed.
 *
 * At most `INTEROP_MAX_GUESTS` (default 1) guests run at once on the machine, across
 * processes: a TCG guest keeps a core busy, and parallel test files would otherwise slow every
 * boot down together. Waiting for a slot happens before spawning.
 *
 * @param options - script, machine, modules, extra QEMU arguments, timeout
 * @returns a handle, once QEMU is spawned: the process, a line waiter and the result promise
 * @throws Error naming a missing kernel, BusyBox or module, or after `slotTimeoutMs` without a
 *   slot
 */
export async function startGuest(options: GuestOptions): Promise<GuestHandle> {
  const machine = options.machine ?? "pc";
  const kernel = options.kernel ?? findKernel();
  const mem = options.memoryMiB ?? 256;
  const initrd = buildInitramfs({
    script: options.script,
    modules: options.modules ?? [machine === "pc" ? "virtio_pci" : "virtio_mmio"],
    kernel,
    ...(options.files === undefined ? {} : { files: options.files }),
  });
  const append = ["console=ttyS0", "quiet", "panic=-1"];
  if (machine === "microvm") append.push("tsc_early_khz=2000000");
  append.push(...(options.append ?? []));
  const choice =
    options.accel === undefined
      ? await chooseAccelerator({
          kernel,
          ...(options.qemu === undefined ? {} : { qemu: options.qemu }),
        })
      : { accel: options.accel, reason: "chosen by the caller", cached: false };
  if (options.accel === undefined) announce(choice.accel, choice.reason, choice.cached);
  const argv = [
    options.qemu ?? "qemu-system-x86_64",
    "-accel",
    choice.accel,
    "-M",
    machine,
    "-m",
    `${mem}`,
    "-nodefaults",
    "-serial",
    "stdio",
    "-display",
    "none",
    "-no-reboot",
    "-kernel",
    kernel.image,
    "-initrd",
    initrd.path,
    "-append",
    append.join(" "),
    ...(machine === "microvm" && options.modernMmio !== false
      ? ["-global", "virtio-mmio.force-legacy=false"]
      : []),
    ...(options.sharedMemory === true ? sharedMemoryArgs(mem) : []),
    ...(options.args ?? []),
  ];
  const slot =
    options.slotHeld === true
      ? undefined
      : await acquireSlot(
          options.slotDir ?? join(tmpdir(), "virtio-ts-interop"),
          options.slotTimeoutMs ?? 300_000,
        );
  const started = performance.now();
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ["pipe", "pipe", "pipe"] });
  live.add(child);
  let raw = "";
  let stderr = "";
  let partial = "";
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: (l: string) => void; reject: (e: Error) => void }[] =
    [];
  const onLine = (line: string): void => {
    lines.push(line);
    options.onLine?.(line);
    for (let i = waiters.length - 1; i >= 0; i--) {
      const w = waiters[i]!;
      if (w.pattern.test(line)) {
        waiters.splice(i, 1);
        w.resolve(line);
      }
    }
  };
  child.stdout!.setEncoding("latin1");
  child.stdout!.on("data", (chunk: string) => {
    raw += chunk;
    partial += chunk;
    const parts = partial.split("\n");
    partial = parts.pop()!;
    for (const p of parts) onLine(stripEscapes(p));
  });
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    stderr += chunk;
  });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill("SIGKILL");
  }, options.timeoutMs ?? 60_000);
  const result = new Promise<GuestResult>((resolve) => {
    let finished = false;
    const finish = (code: number | null, signal: NodeJS.Signals | null): void => {
      // A failed spawn emits both "error" and "close".
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      live.delete(child);
      if (slot !== undefined) releaseSlot(slot);
      if (partial !== "") onLine(stripEscapes(partial));
      partial = "";
      const log = stripEscapes(raw);
      const exit = new RegExp(`${EXIT_MARKER} (\\d+)@@`).exec(log);
      const start = log.indexOf(START_MARKER);
      const output =
        start < 0
          ? ""
          : log.slice(start + START_MARKER.length + 1, exit === null ? undefined : exit.index);
      for (const w of waiters.splice(0)) {
        w.reject(
          new Error(
            `QEMU exited (code ${code}, signal ${signal}) before a line matched ${w.pattern}`,
          ),
        );
      }
      resolve({
        log,
        stderr,
        qemuExit: code,
        signal,
        guestExit: exit === null ? undefined : Number(exit[1]),
        timedOut,
        durationMs: performance.now() - started,
        argv,
        accel: choice.accel,
        accelReason: choice.reason,
        output,
      });
    };
    child.once("error", (err) => {
      stderr += `spawn failed: ${err.message}\n`;
      finish(null, null);
    });
    child.once("close", finish);
  });
  return {
    process: child,
    argv,
    result,
    waitForLine(pattern: RegExp): Promise<string> {
      const seen = lines.find((l) => pattern.test(l));
      if (seen !== undefined) return Promise.resolve(seen);
      if (!live.has(child)) return Promise.reject(new Error("QEMU has exited"));
      return new Promise((resolve, reject) => waiters.push({ pattern, resolve, reject }));
    },
    kill(): void {
      child.kill("SIGKILL");
    },
  };
}

/**
 * Boot a guest and wait until QEMU exits. See {@link startGuest}.
 * @param options - script, machine, modules, extra QEMU arguments, timeout
 * @returns the log, the script's exit status and QEMU's
 * @throws Error naming a missing kernel, BusyBox or module, or after `slotTimeoutMs` without a
 *   slot
 */
export async function runGuest(options: GuestOptions): Promise<GuestResult> {
  return (await startGuest(options)).result;
}

let announced = false;

/** Print the accelerator choice once per process: which one, and why. */
function announce(accel: Accelerator, reason: string, cached: boolean): void {
  if (announced) return;
  announced = true;
  console.log(
    `[interop] accelerator: ${accel} (${reason}${cached ? "; cached verdict of an earlier probe in this boot" : ""})`,
  );
}

/** Printed by the KVM probe guest. */
const PROBE_MARKER = "@@KVM-PROBE-REACHED-INIT@@";

registerKvmProbe(async (timeoutMs, kernel, qemu) => {
  const r = await runGuest({
    script: `echo ${PROBE_MARKER}`,
    modules: [],
    accel: "kvm",
    kernel,
    qemu,
    memoryMiB: 128,
    timeoutMs,
  });
  const ok = !r.timedOut && r.guestExit === 0 && r.output.includes(PROBE_MARKER);
  const last = lastLines(r.log, 1)[0] ?? "(no serial output)";
  const detail = r.timedOut
    ? `killed after ${timeoutMs} ms; last serial line: ${JSON.stringify(last)}`
    : `QEMU exited with ${r.signal ?? r.qemuExit}; last serial line: ${JSON.stringify(last)}${r.stderr.trim() === "" ? "" : `; stderr: ${r.stderr.trim().split("\n").pop()}`}`;
  return { ok, ms: r.durationMs, detail };
});

function lastLines(log: string, n: number): string[] {
  return log
    .split("\n")
    .filter((l) => l.trim() !== "")
    .slice(-n);
}

/**
 * Say what happened to a guest, for an assertion message: how it ended (exit status, timeout,
 * signal), the accelerator and why it was chosen, the script's exit status, QEMU's standard
 * error and the last serial lines.
 * @param result - the guest run
 * @param lines - how many serial lines to include (default 30)
 * @returns a multi-line explanation
 */
export function explainGuest(result: GuestResult, lines = 30): string {
  const ending = result.timedOut
    ? `killed by the hang guard after ${Math.round(result.durationMs)} ms`
    : `QEMU exited with ${result.signal === null ? `code ${result.qemuExit}` : `signal ${result.signal}`} after ${Math.round(result.durationMs)} ms`;
  const serial = lastLines(result.log, lines);
  const hint =
    result.accel === "kvm" && result.timedOut && result.guestExit === undefined
      ? [
          "hint: a guest that never reaches its script under KVM usually means this machine's KVM cannot run Linux (seen on nested machines); unset INTEROP_ACCEL to let the boot probe decide, or set INTEROP_ACCEL=tcg",
        ]
      : [];
  return [
    `guest ${ending}; accelerator ${result.accel} (${result.accelReason}); script exit status ${result.guestExit ?? "never printed"}`,
    ...hint,
    `--- last ${serial.length} serial lines ---`,
    ...serial,
    "--- QEMU stderr ---",
    result.stderr.trim() === "" ? "(empty)" : result.stderr.trim(),
  ].join("\n");
}
