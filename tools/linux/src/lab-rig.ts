import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { Switch, type SwitchPort } from "@virtio-ts/backend-net";
import { BlkDevice, type NetBackend, NetDevice, type NetFrameSink } from "@virtio-ts/devices";
import { cpioNewc, type InitramfsEntry, resolveModules } from "@virtio-ts/interop";
import { V86VirtioBus, type V86VirtioDevice } from "@virtio-ts/v86";
import { findGuestAssets, type GuestAssets, readArrayBuffer } from "./assets.js";
import { KERNEL_CMDLINE } from "./guest.js";
import { buildGuestInitramfs, EXIT_MARKER, GUEST_MODULES, READY_MARKER } from "./initramfs.js";
import { PingPeer } from "./peer.js";

/**
 * The devices of a lab guest whose traps and interrupts are counted: v86's own IDE controller
 * (`/dev/sda`), v86's own NIC (NE2000 or virtio-net), and virtio-ts's virtio-blk (`/dev/vda`)
 * and virtio-net over virtio-pci; plus a second virtio-blk (`/dev/vdb`) over the same bytes
 * whose back-end only completes asynchronously (no `readSync`), to show what one event-loop
 * turn between a kick and its completion costs in an emulator.
 */
export type LabDeviceName =
  | "ide"
  | "ne2k"
  | "v86-virtio-net"
  | "virtio-ts-blk"
  | "virtio-ts-net"
  | "virtio-ts-blk-async";

/** Counters of one device. */
export interface LabDeviceCounters {
  /** I/O-port handler invocations of the device (its trapped register accesses). */
  traps: number;
  /** Assertions of its interrupt line (low → high). */
  interrupts: number;
}

/** What the TypeScript peer at 10.0.2.2 counted of the UDP traffic sent to it. */
export interface LabPeerCounters {
  /** Frames of IPv4 UDP to the peer (fragments included). */
  udpFrames: number;
  /** Their bytes (whole Ethernet frames). */
  udpBytes: number;
  /** `performance.now()` of the first and last of them (NaN before any). */
  firstAt: number;
  /** See `firstAt`. */
  lastAt: number;
  /** ICMP echo requests it answered. */
  echoReplies: number;
}

/** A `@@LAB ...@@` line the guest printed, with every counter read at that instant. */
export interface LabMarker {
  /** The text between `@@LAB ` and `@@`. */
  readonly text: string;
  /** `performance.now()` when the line's last byte reached the serial port. */
  readonly at: number;
  /** Per device, the counters at that instant. */
  readonly devices: Readonly<Record<LabDeviceName, LabDeviceCounters>>;
  /** The peer's counters at that instant. */
  readonly peer: Readonly<LabPeerCounters>;
}

/** Options of {@link startLabGuest}. */
export interface LabGuestOptions {
  /** Guest assets (default {@link findGuestAssets}). */
  readonly assets?: GuestAssets;
  /** The disk bytes: v86's IDE disk and virtio-ts's MemoryDisk are both over this buffer. */
  readonly image: Uint8Array;
  /** v86's own NIC in this boot (v86 has one at a time). */
  readonly nic: "ne2k" | "virtio";
  /** The shell command (after `/init` loaded the virtio modules and the extra ones). */
  readonly command: string;
  /** More kernel modules, loaded before the command (dependencies added). */
  readonly modules?: readonly string[];
  /** More files in the initramfs (an appended archive). */
  readonly files?: readonly InitramfsEntry[];
  /** Seconds before the run is stopped (default 600). */
  readonly timeoutSeconds?: number;
  /** Guest RAM in MiB (default 256). */
  readonly memoryMiB?: number;
  /** Each serial line, as it arrives. */
  readonly onLine?: (line: string) => void;
  /** Each `@@LAB ...@@` line, with the counters at that instant. */
  readonly onMarker?: (marker: LabMarker) => void;
}

/** How a lab guest ended. */
export interface LabGuestResult {
  /** "exit" when the command ran to its end. */
  readonly end: "exit" | "panic" | "timeout" | "poweroff";
  /** The command's status. */
  readonly exitCode: number | undefined;
  /** Milliseconds from power-on to the ready marker. */
  readonly bootMs: number | undefined;
  /** The last 40 serial lines. */
  readonly lastLines: readonly string[];
  /** The MAC v86 gave its own NIC. */
  readonly v86Mac: string | undefined;
}

/** The MAC of virtio-ts's virtio-net in a lab guest. */
export const LAB_VIRTIO_TS_MAC = "52:54:00:12:34:56";
/** The UDP port the lab's bulk send goes to (the peer counts any UDP to its address). */
export const LAB_UDP_PORT = 5001;

const ESCAPE = new RegExp(`${String.fromCharCode(27)}\\[[0-9;?]*[A-Za-z]`, "g");
const PEER_IP = [10, 0, 2, 2];

/** v86's `V86` class, as far as the rig uses it. */
interface V86Emulator {
  add_listener(event: string, fn: (arg: unknown) => void): void;
  bus: { send(event: string, data: unknown): void };
  run(): void;
  stop(): Promise<void>;
  destroy(): Promise<void>;
  v86?: { cpu: LabCpu };
}

/** The v86 internals the counters wrap (names kept by v86's release build). */
interface LabCpu {
  io: {
    ports: { device: unknown }[];
    [k: string]: unknown;
  };
  devices: Record<string, unknown> & {
    pci: { raise_irq(id: number): void; lower_irq(id: number): void };
  };
  device_raise_irq(irq: number): void;
  device_lower_irq(irq: number): void;
}

/** A switch port wrapper that counts the UDP frames delivered to the peer behind it. */
class CountingPort implements NetBackend {
  readonly c: LabPeerCounters = {
    udpFrames: 0,
    udpBytes: 0,
    firstAt: Number.NaN,
    lastAt: Number.NaN,
    echoReplies: 0,
  };
  readonly #port: SwitchPort;
  constructor(port: SwitchPort) {
    this.#port = port;
  }
  transmit(frame: Uint8Array): boolean {
    return this.#port.transmit(frame);
  }
  attach(sink: NetFrameSink): void {
    const c = this.c;
    this.#port.attach({
      deliver: (f) => {
        // IPv4 (0x0800), protocol 17, to 10.0.2.2: every fragment of every datagram.
        if (
          f.length >= 34 &&
          f[12] === 8 &&
          f[13] === 0 &&
          f[23] === 17 &&
          f[30] === PEER_IP[0] &&
          f[31] === PEER_IP[1] &&
          f[32] === PEER_IP[2] &&
          f[33] === PEER_IP[3]
        ) {
          const now = performance.now();
          if (c.udpFrames === 0) c.firstAt = now;
          c.lastAt = now;
          c.udpFrames++;
          c.udpBytes += f.length;
          return true; // counted and consumed: the peer's stack has no UDP
        }
        return sink.deliver(f);
      },
    });
  }
  detach(): void {
    this.#port.detach();
  }
  rxReady(): void {
    this.#port.rxReady();
  }
}

/**
 * The extra modules to ship and load (with dependencies, without those `/init` already loads),
 * in load order.
 */
export function labModules(assets: GuestAssets, names: readonly string[]): string[] {
  const base = new Set(resolveModules(assets.modulesDir, GUEST_MODULES).map((m) => m.name));
  return resolveModules(assets.modulesDir, names)
    .map((m) => m.name)
    .filter((n) => !base.has(n));
}

/**
 * Boot the Debian i686 guest in v86 with v86's own IDE disk and NIC next to virtio-ts's
 * virtio-blk and virtio-net (on virtio-pci), over the same disk bytes and the same switch, and
 * count every device's traps (its I/O-port handler invocations, by wrapping v86's port
 * dispatcher) and interrupts (its line's assertions). The guest reports phases with
 * `@@LAB ...@@` lines, at which every counter is read.
 *
 * Network: one `Switch` with v86's NIC (through its `net0-send` / `net0-receive` bus events),
 * virtio-ts's NetDevice, and a {@link PingPeer} at 10.0.2.2 that also counts the UDP frames sent
 * to it.
 * @param options - image, NIC, command, hooks
 * @returns the result when the guest powered off (or failed)
 * @throws MissingAssetError when the kernel, BusyBox, SeaBIOS or v86 is missing
 */
export async function startLabGuest(options: LabGuestOptions): Promise<LabGuestResult> {
  const assets = options.assets ?? findGuestAssets();
  const { V86 } = (await import(assets.v86Module)) as {
    V86: new (o: Record<string, unknown>) => V86Emulator;
  };
  const extra = labModules(assets, options.modules ?? []);
  const byName = new Map(
    resolveModules(assets.modulesDir, options.modules ?? []).map((m) => [m.name, m.path]),
  );
  const insmod =
    extra.length === 0
      ? ""
      : `for m in ${extra.join(" ")}; do insmod /lib/modules/$m.ko || echo "lab: insmod $m failed"; done\n`;
  const base = buildGuestInitramfs({ assets, command: insmod + options.command });
  // Linux unpacks concatenated (separately compressed) archives in order.
  const more = gzipSync(
    cpioNewc([
      ...extra.map(
        (name): InitramfsEntry => ({
          kind: "file",
          path: `/lib/modules/${name}.ko`,
          data: readFileSync(byName.get(name)!),
        }),
      ),
      ...(options.files ?? []),
    ]),
    { level: 1 },
  );
  const initrd = new Uint8Array(base.length + more.length);
  initrd.set(base);
  initrd.set(more, base.length);

  const image = options.image;
  const sw = new Switch();
  const peerPort = new CountingPort(sw.createPort({ name: "peer" }));
  const peer = new PingPeer(peerPort);
  const v86Port = sw.createPort({ name: "v86-nic" });
  // /dev/vda completes inside the guest's notification, as v86's own IDE does; /dev/vdb is the
  // same bytes behind the default MemoryDisk, whose completions wait for an event-loop turn
  // (after v86's time slice), as any asynchronous back-end's would.
  const blk = new BlkDevice(new MemoryDisk(image, { synchronous: true }));
  const blkAsync = new BlkDevice(new MemoryDisk(image, { readOnly: true }));
  const net = new NetDevice(sw.createPort({ name: "virtio-ts-net" }), {
    mac: Uint8Array.from(LAB_VIRTIO_TS_MAC.split(":").map((h) => Number.parseInt(h, 16))),
    // One transmit interrupt per v86 time slice rather than one per frame.
    txInterrupts: "coalesced",
  });
  const t0 = performance.now();
  const emulator = new V86({
    wasm_path: assets.v86Wasm,
    bios: { buffer: readArrayBuffer(assets.bios) },
    vga_bios: { buffer: readArrayBuffer(assets.vgaBios) },
    bzimage: { buffer: readArrayBuffer(assets.kernel) },
    initrd: { buffer: initrd.buffer },
    hda: {
      buffer: image.buffer.slice(image.byteOffset, image.byteOffset + image.byteLength),
    },
    cmdline: `${KERNEL_CMDLINE} quiet`,
    memory_size: (options.memoryMiB ?? 256) * 1024 * 1024,
    net_device: { type: options.nic === "ne2k" ? "ne2k" : "virtio" },
    autostart: false,
    disable_keyboard: true,
    disable_mouse: true,
    disable_speaker: true,
  });

  const names: LabDeviceName[] = [
    "ide",
    "ne2k",
    "v86-virtio-net",
    "virtio-ts-blk",
    "virtio-ts-net",
    "virtio-ts-blk-async",
  ];
  const traps = new Float64Array(names.length);
  const irqs = new Float64Array(names.length);
  let ours: V86VirtioDevice[] = [];
  const snapshot = (): Record<LabDeviceName, LabDeviceCounters> => {
    const out = {} as Record<LabDeviceName, LabDeviceCounters>;
    names.forEach((n, i) => {
      const own = i >= 3 ? ours[i - 3] : undefined;
      out[n] = { traps: traps[i]!, interrupts: own === undefined ? irqs[i]! : own.interrupts };
    });
    return out;
  };

  // v86's NIC on the switch.
  emulator.add_listener("net0-send", (f) => {
    v86Port.transmit(f as Uint8Array);
  });
  v86Port.attach({
    deliver: (f) => {
      emulator.bus.send("net0-receive", f.slice());
      return true;
    },
  });

  let v86Mac: string | undefined;
  emulator.add_listener("emulator-loaded", () => {
    const cpu = emulator.v86!.cpu;
    const bus = V86VirtioBus.of(emulator as unknown as Parameters<typeof V86VirtioBus.of>[0]);
    // Slots in this order: /dev/vda, then /dev/vdb (Linux names them in probe order).
    const vda = bus.attach(blk, { name: "virtio-ts blk" });
    const vdb = bus.attach(blkAsync, { name: "virtio-ts blk (async back-end)" });
    ours = [vda, bus.attach(net, { name: "virtio-ts net" }), vdb];
    const owner = new Map<unknown, number>();
    const own = (obj: unknown, i: number): void => {
      if (obj === null || typeof obj !== "object") return;
      owner.set(obj, i);
      // A controller's channels and a virtio device's transport object own ports too.
      for (const v of Object.values(obj as Record<string, unknown>)) {
        if (v !== null && typeof v === "object" && !ArrayBuffer.isView(v) && !owner.has(v)) {
          if (v === cpu || v === cpu.devices.pci || v === cpu.io) continue;
          owner.set(v, i);
        }
      }
    };
    own(cpu.devices.ide, 0);
    own(cpu.devices.net, 1);
    own(cpu.devices.virtio_net, 2);
    owner.set(ours[0], 3);
    owner.set(ours[1], 4);
    owner.set(ours[2], 5);
    // Count every port access by the device that owns the port's handlers now (BARs move).
    const io = cpu.io;
    for (const m of [
      "port_read8",
      "port_read16",
      "port_read32",
      "port_write8",
      "port_write16",
      "port_write32",
    ]) {
      const orig = io[m] as (port: number, v?: number) => number;
      io[m] = (port: number, v?: number): number => {
        const k = owner.get(io.ports[port]?.device);
        if (k !== undefined) traps[k]!++;
        return orig.call(io, port, v);
      };
    }
    // Interrupts of v86's PCI NICs: low → high transitions of their line, by PCI function.
    const pciOf = (d: unknown): number | undefined => {
      const o = d as { pci_id?: number; virtio?: { pci_id?: number } } | undefined;
      return o?.pci_id ?? o?.virtio?.pci_id;
    };
    const nicIds = new Map<number, number>();
    const neId = pciOf(cpu.devices.net);
    const vnId = pciOf(cpu.devices.virtio_net);
    if (neId !== undefined) nicIds.set(neId, 1);
    if (vnId !== undefined) nicIds.set(vnId, 2);
    const pci = cpu.devices.pci;
    const level = new Map<number, boolean>();
    const raise = pci.raise_irq;
    const lower = pci.lower_irq;
    pci.raise_irq = (id: number): void => {
      const k = nicIds.get(id);
      if (k !== undefined && level.get(id) !== true) irqs[k]!++;
      level.set(id, true);
      raise.call(pci, id);
    };
    pci.lower_irq = (id: number): void => {
      level.set(id, false);
      lower.call(pci, id);
    };
    // The IDE controller raises ISA IRQ 14 (primary channel) and 15 (secondary) itself.
    const ideLevel = [false, false];
    const dr = cpu.device_raise_irq;
    const dl = cpu.device_lower_irq;
    cpu.device_raise_irq = (irq: number): void => {
      if ((irq === 14 || irq === 15) && !ideLevel[irq - 14]) {
        ideLevel[irq - 14] = true;
        irqs[0]!++;
      }
      dr.call(cpu, irq);
    };
    cpu.device_lower_irq = (irq: number): void => {
      if (irq === 14 || irq === 15) ideLevel[irq - 14] = false;
      dl.call(cpu, irq);
    };
    emulator.run();
  });

  let partial = "";
  const lines: string[] = [];
  let bootMs: number | undefined;
  let exitCode: number | undefined;
  let finish: (end: LabGuestResult["end"]) => void = () => {};
  const done = new Promise<LabGuestResult["end"]>((resolve) => {
    finish = resolve;
  });
  emulator.add_listener("serial0-output-byte", (arg) => {
    const byte = arg as number;
    if (byte !== 10) {
      partial += String.fromCharCode(byte);
      return;
    }
    const line = partial.replace(ESCAPE, "").replace(/\r/g, "");
    partial = "";
    lines.push(line);
    if (lines.length > 200) lines.splice(0, 100);
    const lab = /@@LAB (.*)@@/.exec(line);
    if (lab !== null) {
      options.onMarker?.({
        text: lab[1]!,
        at: performance.now(),
        devices: snapshot(),
        peer: { ...peerPort.c, echoReplies: peer.stats.echoReplies },
      });
    }
    const mac = /^lab-mac (\S+)$/.exec(line);
    if (mac !== null) v86Mac = mac[1];
    options.onLine?.(line);
    if (line.includes(READY_MARKER)) bootMs = performance.now() - t0;
    const exit = line.indexOf(EXIT_MARKER);
    if (exit >= 0) {
      const m = /@@VIRTIO-TS-EXIT (\d+)@@/.exec(line.slice(exit));
      exitCode = m ? Number(m[1]) : undefined;
      finish("exit");
    } else if (/Kernel panic - not syncing/.test(line)) setTimeout(() => finish("panic"), 500);
    else if (/reboot: (System halted|Power down)/.test(line)) finish("poweroff");
  });
  const timer = setTimeout(() => finish("timeout"), (options.timeoutSeconds ?? 600) * 1000);
  const end = await done;
  clearTimeout(timer);
  await emulator.stop();
  await emulator.destroy();
  peer.close();
  return { end, exitCode, bootMs, lastLines: lines.slice(-40), v86Mac };
}
