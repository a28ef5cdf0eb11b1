import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileDisk } from "@virtio-ts/backend-disk/node";
import { Switch } from "@virtio-ts/backend-net";
import {
  type BalloonDevice,
  BlkDevice,
  type BlockBackend,
  type ConsoleBackend,
  ConsoleDevice,
  type ConsoleInputSink,
  type NetBackend,
  NetDevice,
  RngDevice,
} from "@virtio-ts/devices";
import type { GuestMemory } from "@virtio-ts/memory";
import { Feature, featureMask } from "@virtio-ts/spec";
import { PCI_TRANSPORT_FEATURES } from "@virtio-ts/transport";
import {
  restoreV86,
  type SaveV86Options,
  saveV86,
  type V86Emulator as V86MigrationApi,
  type V86Snapshot,
  V86VirtioBus,
  type V86VirtioDevice,
} from "@virtio-ts/v86";
import { findGuestAssets, type GuestAssets, readArrayBuffer } from "./assets.js";
import { buildGuestInitramfs, EXIT_MARKER, READY_MARKER } from "./initramfs.js";
import { PingPeer, type PingPeerStats } from "./peer.js";

/** What the default disk's first sector starts with. */
export const DEFAULT_DISK_TEXT = "virtio-ts: hello from the host's disk image\n";
/** Size of the default temporary disk (16 MiB). */
export const DEFAULT_DISK_SIZE = 16 * 1024 * 1024;
/** Kernel command line (quiet: the boot log stays short). */
export const KERNEL_CMDLINE = "console=ttyS0 tsc=reliable mitigations=off random.trust_cpu=on";

/** Options of {@link startLinux}. */
export interface LinuxOptions {
  /** Guest assets (default {@link findGuestAssets}). */
  readonly assets?: GuestAssets;
  /**
   * Raw disk image for /dev/vda. Default: a fresh 16 MiB temporary image whose first sector
   * starts with {@link DEFAULT_DISK_TEXT} (removed at the end).
   */
  readonly disk?: string;
  /** Command for `/bin/sh`; undefined: an interactive shell on the serial console. */
  readonly command?: string;
  /** Seconds before the run is stopped (default 300; 0 for none). */
  readonly timeoutSeconds?: number;
  /** Guest RAM in MiB (default 256). */
  readonly memoryMiB?: number;
  /** Offer VIRTIO_F_RING_PACKED (default true; Linux then uses packed rings). */
  readonly packed?: boolean;
  /** Put something between BlkDevice and the FileDisk (an interposer). */
  readonly wrapDisk?: (disk: BlockBackend) => BlockBackend;
  /** Put something between NetDevice and its switch port (a sniffer). */
  readonly wrapNet?: (port: NetBackend) => NetBackend;
  /** Every byte the serial port prints (the interactive console uses it). */
  readonly onSerialByte?: (byte: number) => void;
  /** Each line of the boot log and of the command's output, as it arrives. */
  readonly onSerialLine?: (line: string, phase: "boot" | "command" | "after") => void;
  /** Each line the guest writes to /dev/hvc0. */
  readonly onConsoleLine?: (line: string) => void;
  /**
   * Memory balloons to attach after the four standard devices (none by default), reported as
   * "balloon", "balloon2"…; the caller keeps them to steer them (`setTarget`, stats).
   */
  readonly balloons?: readonly BalloonDevice[];
  /**
   * Resume a guest moved from another run ({@link LinuxGuest.migrate}) instead of booting:
   * the emulator is created and the devices attached as for a boot (the same options give the
   * same slots), then, once this snapshot is there, its state is restored and it runs. The
   * disk given in `disk` must hold the source's image (flushed after the migrate). Output
   * counts as the command's from the start.
   */
  readonly resumeFrom?: V86Snapshot | Promise<V86Snapshot>;
}

/** Per-device figures of a run. */
export interface DeviceReport {
  /** blk, net, console, rng, balloon (balloon2…). */
  readonly name: string;
  /** PCI slot. */
  readonly slot: number;
  /** ISA IRQ its INTx is routed to. */
  readonly irq: number | undefined;
  /** Register accesses (traps), configuration space included. */
  readonly traps: number;
  /** Traps by register. */
  readonly trapCounts: Readonly<Record<string, number>>;
  /** INTx assertions. */
  readonly interrupts: number;
  /** Requests served (blk requests, net frames both ways, console buffers, rng requests). */
  readonly requests: number;
  /** The negotiated feature bits. */
  readonly features: bigint;
  /** Traps while the command ran (from the ready marker to the exit marker). */
  readonly commandTraps: number;
  /** Interrupts while the command ran. */
  readonly commandInterrupts: number;
  /** Requests served while the command ran. */
  readonly commandRequests: number;
}

/** How a run ended. */
export type LinuxEnd = "exit" | "poweroff" | "panic" | "timeout" | "stopped" | "migrated";

/** What {@link startLinux} reports at the end. */
export interface LinuxResult {
  /** How it ended. */
  readonly end: LinuxEnd;
  /** The command's exit status (`end === "exit"`). */
  readonly exitCode: number | undefined;
  /** The command's output (serial lines between the ready and exit markers). */
  readonly output: string;
  /** The whole serial log. */
  readonly serial: string;
  /** The last 30 serial lines. */
  readonly lastLines: readonly string[];
  /** Milliseconds from power-on to the ready marker (modules loaded, eth0 up). */
  readonly bootMs: number | undefined;
  /** Milliseconds from power-on to the end. */
  readonly totalMs: number;
  /** Per-device figures. */
  readonly devices: readonly DeviceReport[];
  /** The disk image used (removed afterwards when it was the default temporary one). */
  readonly diskPath: string;
  /** Times v86's wasm memory grew under guest RAM during the run. */
  readonly memoryReplacements: number;
  /** What the ping peer at 10.0.2.2 answered during the run. */
  readonly peer: Readonly<PingPeerStats>;
}

/** A running guest. */
export interface LinuxGuest {
  /** Settles when the run ends (never rejects for guest behaviour). */
  readonly result: Promise<LinuxResult>;
  /** Type on the serial console. */
  sendSerial(text: string): void;
  /** Write to the guest's /dev/hvc0. */
  sendConsole(text: string): void;
  /**
   * Guest RAM as the devices see it (undefined until v86 has loaded). Read it from a callback of
   * the run (a console line, a device hook): the guest does not run meanwhile.
   */
  guestMemory(): GuestMemory | undefined;
  /** Stop the run. */
  stop(): void;
  /**
   * Settles when the guest runs: after the boot started, or after `resumeFrom` was restored
   * (rejecting with the restore's error, the run then ends "stopped").
   */
  readonly resumed: Promise<void>;
  /**
   * Move the guest away: stop it and save v86 with the devices (`saveV86`), flush the disk
   * (its image is then complete and nothing writes to it any more), end this run
   * ("migrated"). Give the snapshot and a copy of the disk image to a run with `resumeFrom`.
   * Pass your own `disk` to a run you migrate: the default temporary image is removed when
   * the run ends.
   */
  migrate(options?: SaveV86Options): Promise<V86Snapshot>;
}

/** Minimal typing of the parts of the `V86` class used here. */
interface V86Emulator {
  add_listener(event: string, fn: (arg: unknown) => void): void;
  serial0_send(text: string): void;
  run(): void;
  stop(): Promise<void>;
  destroy(): Promise<void>;
  v86?: { cpu: unknown };
}

const PANIC = /Kernel panic - not syncing/;
/** ANSI escape sequences (SeaBIOS prints some). */
const ESCAPE = new RegExp(`${String.fromCharCode(27)}\\[[0-9;?]*[A-Za-z]`, "g");
const HALTED = /reboot: (System halted|Power down)/;

/** A fresh temporary image whose first sector starts with {@link DEFAULT_DISK_TEXT}. */
function defaultDisk(): { path: string; dir: string } {
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-linux-"));
  const path = join(dir, "disk.img");
  const img = Buffer.alloc(DEFAULT_DISK_SIZE);
  img.write(DEFAULT_DISK_TEXT, 0, "latin1");
  writeFileSync(path, img);
  return { path, dir };
}

/** A console back-end that splits what the guest writes into lines. */
class LineConsole implements ConsoleBackend {
  sink: ConsoleInputSink | undefined;
  #partial = "";
  readonly #onLine: (line: string) => void;
  readonly lines: string[] = [];
  constructor(onLine: (line: string) => void) {
    this.#onLine = onLine;
  }
  attach(sink: ConsoleInputSink): void {
    this.sink = sink;
  }
  write(_port: number, data: Uint8Array): boolean {
    this.#partial += Buffer.from(data).toString("utf8");
    for (let nl = this.#partial.indexOf("\n"); nl >= 0; nl = this.#partial.indexOf("\n")) {
      const line = this.#partial.slice(0, nl).replace(/\r$/, "");
      this.#partial = this.#partial.slice(nl + 1);
      this.lines.push(line);
      this.#onLine(line);
    }
    return true;
  }
}

/**
 * Boot the Debian i686 guest in v86 with four virtio-ts devices on virtio-pci: /dev/vda
 * (BlkDevice on a FileDisk), eth0 (NetDevice on a Switch with a {@link PingPeer} at 10.0.2.2),
 * /dev/hvc0 (ConsoleDevice) and /dev/hwrng (RngDevice).
 * @param options - disk, command, timeout, hooks
 * @returns the running guest
 * @throws MissingAssetError when the kernel, BusyBox, SeaBIOS or v86 is missing
 */
export async function startLinux(options: LinuxOptions = {}): Promise<LinuxGuest> {
  const assets = options.assets ?? findGuestAssets();
  const { V86 } = (await import(assets.v86Module)) as {
    V86: new (o: Record<string, unknown>) => V86Emulator;
  };
  const initrd = buildGuestInitramfs({
    assets,
    ...(options.command !== undefined ? { command: options.command } : {}),
  });
  const temp = options.disk === undefined ? defaultDisk() : undefined;
  const diskPath = options.disk ?? temp!.path;
  const file = await FileDisk.open(diskPath);
  const blkBackend = options.wrapDisk ? options.wrapDisk(file) : file;
  const sw = new Switch();
  const guestPort = sw.createPort({ name: "guest" });
  const peer = new PingPeer(sw.createPort({ name: "peer" }));
  const hvc = new LineConsole((line) => options.onConsoleLine?.(line));

  const transportFeatures =
    options.packed === false
      ? PCI_TRANSPORT_FEATURES & ~featureMask(Feature.RING_PACKED)
      : PCI_TRANSPORT_FEATURES;
  const blk = new BlkDevice(blkBackend);
  const net = new NetDevice(options.wrapNet ? options.wrapNet(guestPort) : guestPort, {
    mac: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56),
  });
  const con = new ConsoleDevice(hvc);
  const rng = new RngDevice();
  const balloons = options.balloons ?? [];

  const t0 = performance.now();
  const emulator = new V86({
    wasm_path: assets.v86Wasm,
    bios: { buffer: readArrayBuffer(assets.bios) },
    vga_bios: { buffer: readArrayBuffer(assets.vgaBios) },
    bzimage: { buffer: readArrayBuffer(assets.kernel) },
    initrd: {
      buffer: initrd.buffer.slice(initrd.byteOffset, initrd.byteOffset + initrd.byteLength),
    },
    cmdline: `${KERNEL_CMDLINE} quiet`,
    memory_size: (options.memoryMiB ?? 256) * 1024 * 1024,
    net_device: { type: "none" },
    autostart: false,
    disable_keyboard: true,
    disable_mouse: true,
    disable_speaker: true,
  });

  let attached: { name: string; dev: V86VirtioDevice }[] = [];
  let bus: V86VirtioBus | undefined;
  let markResumed: () => void = () => {};
  let failResumed: (e: unknown) => void = () => {};
  const resumed = new Promise<void>((resolve, reject) => {
    markResumed = resolve;
    failResumed = reject;
  });
  resumed.catch(() => {}); // the run's result reports it too
  emulator.add_listener("emulator-loaded", () => {
    const b = V86VirtioBus.of(emulator as unknown as Parameters<typeof V86VirtioBus.of>[0]);
    bus = b;
    attached = [
      { name: "blk", dev: b.attach(blk, { transportFeatures, name: "virtio-ts blk" }) },
      { name: "net", dev: b.attach(net, { transportFeatures, name: "virtio-ts net" }) },
      { name: "console", dev: b.attach(con, { transportFeatures, name: "virtio-ts console" }) },
      { name: "rng", dev: b.attach(rng, { transportFeatures, name: "virtio-ts rng" }) },
      ...balloons.map((balloon, i) => {
        const name = i === 0 ? "balloon" : `balloon${i + 1}`;
        return { name, dev: b.attach(balloon, { transportFeatures, name: `virtio-ts ${name}` }) };
      }),
    ];
    const from = options.resumeFrom;
    if (from === undefined) {
      emulator.run();
      markResumed();
      return;
    }
    Promise.resolve(from)
      .then((snapshot) => restoreV86(emulator as unknown as V86MigrationApi, snapshot))
      .then(markResumed, (e: unknown) => {
        failResumed(e);
        finish("stopped");
      });
  });

  const balloonRequests = (name: string): number => {
    const b = balloons[name === "balloon" ? 0 : Number(name.slice(7)) - 1]!;
    const s = b.stats;
    return s.inflateRequests + s.deflateRequests + s.reportRequests + s.statsBuffers;
  };
  const requestsOf = (name: string): number =>
    name.startsWith("balloon")
      ? balloonRequests(name)
      : name === "blk"
        ? blk.stats.requests
        : name === "net"
          ? net.stats.txFrames + net.stats.rxFrames
          : name === "rng"
            ? rng.stats.requests
            : con.stats.txBytes + con.stats.rxBytes;
  type Counts = { traps: number; interrupts: number; requests: number };
  const counts = (): Counts[] =>
    attached.map(({ name, dev }) => ({
      traps: dev.traps,
      interrupts: dev.interrupts,
      requests: requestsOf(name),
    }));
  let atReady: Counts[] | undefined;
  let atExit: Counts[] | undefined;
  const lines: string[] = [];
  const output: string[] = [];
  let partial = "";
  let phase: "boot" | "command" | "after" = options.resumeFrom === undefined ? "boot" : "command";
  let bootMs: number | undefined;
  let exitCode: number | undefined;
  let finish: (end: LinuxEnd) => void = () => {};
  const done = new Promise<LinuxEnd>((resolve) => {
    finish = resolve;
  });

  emulator.add_listener("serial0-output-byte", (arg) => {
    const byte = arg as number;
    options.onSerialByte?.(byte);
    if (byte === 10) {
      // Strip escape sequences (SeaBIOS) and carriage returns.
      const line = partial.replace(ESCAPE, "").replace(/\r/g, "");
      partial = "";
      lines.push(line);
      if (line.includes(READY_MARKER)) {
        bootMs = performance.now() - t0;
        atReady = counts();
        phase = "command";
        return;
      }
      const exit = line.indexOf(EXIT_MARKER);
      if (exit >= 0) {
        const m = /@@VIRTIO-TS-EXIT (\d+)@@/.exec(line.slice(exit));
        exitCode = m ? Number(m[1]) : undefined;
        const before = line.slice(0, exit);
        if (before !== "" && phase === "command") {
          output.push(before);
          options.onSerialLine?.(before, phase);
        }
        phase = "after";
        atExit = counts();
        finish("exit");
        return;
      }
      if (phase === "command") output.push(line);
      options.onSerialLine?.(line, phase);
      if (PANIC.test(line)) setTimeout(() => finish("panic"), 500);
      else if (HALTED.test(line)) finish("poweroff");
    } else {
      partial += String.fromCharCode(byte);
    }
  });

  const timeoutMs = (options.timeoutSeconds ?? 300) * 1000;
  const timer = timeoutMs > 0 ? setTimeout(() => finish("timeout"), timeoutMs) : undefined;

  const result = done.then(async (end): Promise<LinuxResult> => {
    if (timer !== undefined) clearTimeout(timer);
    // Let the device finish what the guest asked before power-off (sync ran before the marker).
    for (
      let i = 0;
      i < 100 &&
      end !== "migrated" &&
      blk.stats.requests >
        blk.stats.ok +
          blk.stats.ioErrors +
          blk.stats.unsupported +
          blk.stats.stale +
          blk.stats.malformed;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 10));
    }
    await emulator.stop();
    await emulator.destroy();
    peer.close();
    await file.flush();
    await file.close();
    if (partial !== "") lines.push(partial);
    const end_ = atExit ?? counts();
    const devices: DeviceReport[] = attached.map(({ name, dev }, i) => ({
      name,
      commandTraps: end_[i]!.traps - (atReady?.[i]?.traps ?? end_[i]!.traps),
      commandInterrupts: end_[i]!.interrupts - (atReady?.[i]?.interrupts ?? end_[i]!.interrupts),
      commandRequests: end_[i]!.requests - (atReady?.[i]?.requests ?? end_[i]!.requests),
      slot: dev.slot,
      irq: dev.irq,
      traps: dev.traps,
      trapCounts: dev.trapCounts() as Record<string, number>,
      interrupts: dev.interrupts,
      requests: requestsOf(name),
      features: dev.pci.core.features,
    }));
    if (temp !== undefined) rmSync(temp.dir, { recursive: true, force: true });
    return {
      end,
      exitCode,
      output: output.length > 0 ? `${output.join("\n")}\n` : "",
      serial: lines.join("\n"),
      lastLines: lines.slice(-30),
      bootMs,
      totalMs: performance.now() - t0,
      devices,
      diskPath,
      memoryReplacements: bus?.stats.memoryReplacements ?? 0,
      peer: { ...peer.stats },
    };
  });

  return {
    result,
    sendSerial: (text) => emulator.serial0_send(text),
    sendConsole: (text) => {
      hvc.sink?.input(0, new TextEncoder().encode(text));
    },
    stop: () => finish("stopped"),
    resumed,
    migrate: async (o) => {
      const snapshot = await saveV86(emulator as unknown as V86MigrationApi, o);
      await file.flush();
      finish("migrated");
      return snapshot;
    },
    guestMemory: () => bus?.memory,
  };
}
