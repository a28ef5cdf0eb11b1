// The VMM thread of the faithful lab: it hosts the register file and the device model of one
// mode, starts the guest in its own vCPU worker (`vcpu-worker.ts`), serves every trapped
// register access as a synchronous exit, and injects interrupts into the vCPU.
//
//   vCPU worker (guest drivers)              VMM thread (this file)                vhost worker
//   ───────────────────────────              ──────────────────────                ────────────
//   register access ── exit slot, blocks ──► AtaPioDevice / MmioDevice ─► model
//                   ◄── reply ─────────────
//   interrupt handler ◄── irq doorbell ───── interrupt callback
//   QueueNotify (vhost) ── kick doorbell (ioeventfd) ─────────────────────────────► BlkDevice
//   interrupt handler ◄── irq doorbell (irqfd) ◄─────────────────────────────────── call
import { Worker } from "node:worker_threads";
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { BlkDevice } from "@virtio-ts/devices";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { MmioVersion } from "@virtio-ts/spec";
import { MmioDevice, SharedDoorbell, type SharedDoorbellHandle } from "@virtio-ts/transport";
import { AtaPioDevice } from "./ata.js";
import { createExitSlot, type ExitHandler, Hypercall, VmmExitServer } from "./exits.js";
import type { Run } from "./measure.js";
import { CountingMemory, GUEST_RAM, type VhostWorkerFiles, vhostBlkDevice } from "./rigs.js";

/** The modes the vCPU lab runs. */
export type LabMode = "ata" | "virtio-v2" | "virtio-v1" | "vhost" | "vhost-msi" | "passthrough";

/** Every mode, in table order. */
export const LAB_MODES: readonly LabMode[] = [
  "ata",
  "virtio-v2",
  "virtio-v1",
  "vhost",
  "vhost-msi",
  "passthrough",
];

/** Row names, as the in-thread rigs name them. */
export const MODE_NAMES: Readonly<Record<LabMode, string>> = {
  ata: "1 full emulation (ATA PIO)",
  "virtio-v2": "2 virtio-mmio v2",
  "virtio-v1": "2 virtio-mmio v1 (legacy)",
  vhost: "3 vhost worker",
  "vhost-msi": "3 vhost worker, MSI",
  passthrough: "4 pass-through",
};

/** What the vCPU worker receives. */
export interface VcpuSetup {
  /** The mode. */
  readonly mode: LabMode;
  /** Row name. */
  readonly name: string;
  /** The disk image (pass-through's function reads it from the vCPU's side). */
  readonly image: SharedArrayBuffer;
  /** Guest RAM, shared with the VMM (virtio modes). */
  readonly ram: SharedArrayBuffer | undefined;
  /** The exit slot. */
  readonly slot: SharedArrayBuffer;
  /** The vCPU's interrupt line. */
  readonly irq: SharedDoorbellHandle;
  /** vhost: queue 0's kick doorbell (the ioeventfd). */
  readonly kick: SharedDoorbellHandle | undefined;
  /** Block numbers to read. */
  readonly seq: Uint32Array;
  /** Requests in flight. */
  readonly depth: number;
  /** Time budget of the timed part (ms). */
  readonly budgetMs: number;
}

/** What the vCPU worker sends back. */
export interface VcpuResult {
  /** The run, with the vCPU's counters (interrupts); the VMM's are merged in by {@link runVcpuMode}. */
  readonly run: Run;
  /** Kicks that went straight to the vhost worker over the timed part. */
  readonly ioeventfdKicks: number;
}

/** A measured run of one mode with VM-exit costs. */
export interface VcpuRun extends Run {
  /** Kicks that bypassed the VMM thread (vhost's ioeventfd). */
  readonly ioeventfdKicks: number;
}

/** Options of {@link runVcpuMode}. */
export interface VcpuRunOptions {
  /** Time budget of the timed part in ms (default 2000). */
  readonly budgetMs?: number;
  /** Where the built lab JavaScript is (default: next to this module; tests point at dist). */
  readonly workerScript?: URL;
  /** Where the vhost worker's JavaScript is (tests running from sources). */
  readonly vhostFiles?: VhostWorkerFiles;
}

interface VmmSide {
  readonly handler: ExitHandler;
  readonly ram: SharedArrayBuffer | undefined;
  readonly kick: SharedDoorbellHandle | undefined;
  counters(): { exits: number; byRegister: Record<string, number>; vmmBytes: number };
  reset(): void;
  close(): Promise<void>;
}

function vmmSide(
  mode: LabMode,
  image: SharedArrayBuffer,
  irq: SharedDoorbell,
  files: VhostWorkerFiles | undefined,
): VmmSide {
  const inject = (): void => irq.ring();
  switch (mode) {
    case "ata": {
      const dev = new AtaPioDevice(new MemoryDisk(new Uint8Array(image)), { interrupt: inject });
      return {
        handler: {
          read: (o, s) => dev.read(o, s),
          write: (o, s, v) => dev.write(o, s, v),
          hypercall: () => 0,
        },
        ram: undefined,
        kick: undefined,
        counters: () => ({
          exits: dev.exits,
          byRegister: dev.exitCounts() as Record<string, number>,
          vmmBytes: dev.bytesCopied,
        }),
        reset: () => dev.resetCounters(),
        close: async () => {},
      };
    }
    case "virtio-v2":
    case "virtio-v1": {
      const ram = new SharedArrayBuffer(GUEST_RAM);
      const memory = new CountingMemory(
        new GuestMemoryMap([{ guestBase: 0, size: GUEST_RAM, buffer: ram, byteOffset: 0 }]),
      );
      const model = new BlkDevice(new MemoryDisk(new Uint8Array(image)), { queueSize: 256 });
      const mmio = new MmioDevice(model, {
        memory,
        version: mode === "virtio-v1" ? MmioVersion.LEGACY : MmioVersion.MODERN,
        interrupt: inject,
      });
      return {
        handler: {
          read: (o, s) => mmio.read(o, s),
          write: (o, s, v) => mmio.write(o, s, v),
          hypercall: () => 0,
        },
        ram,
        kick: undefined,
        counters: () => ({
          exits: mmio.exits,
          byRegister: mmio.exitCounts() as Record<string, number>,
          vmmBytes: memory.copied,
        }),
        reset: () => {
          mmio.resetCounters();
          memory.copied = 0;
        },
        close: async () => {},
      };
    }
    case "vhost":
    case "vhost-msi": {
      const ram = new SharedArrayBuffer(GUEST_RAM);
      const memory = new GuestMemoryMap([
        { guestBase: 0, size: GUEST_RAM, buffer: ram, byteOffset: 0 },
      ]);
      // The call doorbell is the vCPU's own interrupt line: irqfd, no VMM thread in between.
      const dev = vhostBlkDevice(image, files, irq);
      const mmio = new MmioDevice(dev, { memory, interrupt: inject });
      return {
        handler: {
          read: (o, s) => mmio.read(o, s),
          write: (o, s, v) => mmio.write(o, s, v),
          hypercall: () => 0,
        },
        ram,
        kick: dev.kicks[0]!.handle,
        counters: () => ({
          exits: mmio.exits,
          byRegister: mmio.exitCounts() as Record<string, number>,
          vmmBytes: 0,
        }),
        reset: () => mmio.resetCounters(),
        close: () => dev.close(),
      };
    }
    case "passthrough":
      return {
        handler: { read: () => 0, write: () => {}, hypercall: () => 0 },
        ram: undefined,
        kick: undefined,
        counters: () => ({ exits: 0, byRegister: {}, vmmBytes: 0 }),
        reset: () => {},
        close: async () => {},
      };
  }
}

/**
 * Run the workload in one mode with VM-exit costs: the VMM side here, the guest in a fresh vCPU
 * worker; the counters are the VMM's between the guest's RESET_COUNTERS and SNAPSHOT
 * hypercalls (the timed part), plus the vCPU's interrupt handler runs.
 * @param mode - the mode
 * @param image - the shared disk image
 * @param seq - block numbers to read
 * @param depth - requests in flight
 * @param options - time budget, where the built JavaScript is
 */
export async function runVcpuMode(
  mode: LabMode,
  image: SharedArrayBuffer,
  seq: Uint32Array,
  depth: number,
  options: VcpuRunOptions = {},
): Promise<VcpuRun> {
  const irq = new SharedDoorbell();
  const vmm = vmmSide(mode, image, irq, options.vhostFiles);
  let snapshot = vmm.counters();
  const handler: ExitHandler = {
    read: vmm.handler.read,
    write: vmm.handler.write,
    hypercall: (call) => {
      if (call === Hypercall.RESET_COUNTERS) vmm.reset();
      else if (call === Hypercall.SNAPSHOT) snapshot = vmm.counters();
      return 0;
    },
  };
  const slot = createExitSlot();
  const server = new VmmExitServer(slot, handler);
  const setup: VcpuSetup = {
    mode,
    name: MODE_NAMES[mode],
    image,
    ram: vmm.ram,
    slot,
    irq: irq.handle,
    kick: vmm.kick,
    seq,
    depth,
    budgetMs: options.budgetMs ?? 2000,
  };
  const worker = new Worker(options.workerScript ?? new URL("./vcpu-worker.js", import.meta.url), {
    workerData: setup,
    // The worker resolves @virtio-ts/* like any consumer (no test-runner loader flags); a
    // `node --cpu-prof` run profiles the vCPU thread too.
    execArgv: process.execArgv.filter((a) => a.startsWith("--cpu-prof")),
  });
  try {
    const result = await new Promise<VcpuResult>((resolve, reject) => {
      worker.once("message", (m: VcpuResult) => resolve(m));
      worker.once("error", reject);
      worker.once("exit", (code) => reject(new Error(`the vCPU worker exited with ${code}`)));
    });
    return {
      ...result.run,
      counters: { ...snapshot, interrupts: result.run.counters.interrupts },
      ioeventfdKicks: result.ioeventfdKicks,
    };
  } finally {
    await worker.terminate();
    await server.stop();
    await vmm.close();
  }
}
