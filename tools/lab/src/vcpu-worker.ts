// The vCPU thread: a worker that runs the guest's driver for one mode and the workload
// (`measure`), with every trapped register access a blocking exit to the VMM thread
// (`VcpuExits`) and interrupts injected into it (`VcpuInterrupts`). Started by `vmm.ts`.
import { parentPort, workerData } from "node:worker_threads";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { GuestMemoryMap } from "@virtio-ts/memory";
import { MmioInterrupt, MmioReg } from "@virtio-ts/spec";
import { MmioDriverTransport, SharedDoorbell } from "@virtio-ts/transport";
import { AtaPioDriver } from "./ata.js";
import { Hypercall, VcpuExits, VcpuInterrupts } from "./exits.js";
import { LegacyBlkDriver } from "./legacy-blk.js";
import { measure } from "./measure.js";
import { BLOCK, BUFFERS, passthroughRig, type Rig, SLOTS } from "./rigs.js";
import type { VcpuResult, VcpuSetup } from "./vmm.js";

const setup = workerData as VcpuSetup;
const exits = new VcpuExits(setup.slot);
const irq = new VcpuInterrupts(setup.irq);
/** Kicks that went straight to a vhost worker (ioeventfd: no exit to the VMM thread). */
let ioeventfdKicks = 0;
/** The same, over the timed part. */
let timedKicks = 0;

function guestRam(): GuestMemoryMap {
  const ram = setup.ram;
  if (ram === undefined) throw new TypeError("setup.ram is missing for a virtio mode");
  return new GuestMemoryMap([{ guestBase: 0, size: ram.byteLength, buffer: ram, byteOffset: 0 }]);
}

/** The guest's driver for the mode, as a Rig whose counters are the vCPU's own. */
function guestRig(): Rig {
  const name = setup.name;
  let read: (sector: number, length: number) => Promise<Uint8Array>;
  let close = async (): Promise<void> => {};
  let interrupts = (): number => irq.taken;
  switch (setup.mode) {
    case "ata": {
      const d = new AtaPioDriver(exits);
      irq.handler = () => d.onInterrupt();
      read = (s, l) => d.read(s, l / 512);
      break;
    }
    case "virtio-v2":
    case "virtio-v1":
    case "vhost":
    case "vhost-msi": {
      const memory = guestRam();
      const kick = setup.kick === undefined ? undefined : SharedDoorbell.from(setup.kick);
      // KVM's ioeventfd: a write of queue 0 to QueueNotify is matched by the hypervisor and
      // signals the vhost worker's eventfd; the vCPU resumes without the VMM thread running.
      const write =
        kick === undefined
          ? exits.write
          : (o: number, s: number, v: number): void => {
              if (o === MmioReg.QUEUE_NOTIFY && v === 0) {
                ioeventfdKicks++;
                kick.ring();
              } else exits.write(o, s, v);
            };
      // vhost-msi: the irqfd delivers a message-signalled interrupt whose vector says "used
      // buffers" (virtio-pci with MSI-X, as vhost deployments run), so the handler reads no
      // InterruptStatus and writes no InterruptACK: virtio-mmio has no MSI, this models it.
      const msi = setup.mode === "vhost-msi";
      const rd = msi
        ? (o: number, s: number): number =>
            o === MmioReg.INTERRUPT_STATUS ? MmioInterrupt.USED_BUFFER : exits.read(o, s)
        : exits.read;
      const wr = msi
        ? (o: number, s: number, v: number): void => {
            if (o !== MmioReg.INTERRUPT_ACK) write(o, s, v);
          }
        : write;
      const transport = new MmioDriverTransport({ read: rd, write: wr });
      const slab = new SlabAllocator(BUFFERS, BLOCK, SLOTS);
      const layout = { ringBase: 0x10000, queueSize: 128 };
      if (setup.mode === "virtio-v1") {
        const d = new LegacyBlkDriver(transport, memory, slab, layout);
        irq.handler = () => d.onInterrupt();
        read = (s, l) => d.read(s, l);
      } else {
        const d = new BlkDriver(transport, memory, slab, layout);
        irq.handler = () => d.onInterrupt();
        read = (s, l) => d.read(s, l);
      }
      break;
    }
    case "passthrough": {
      // The assigned function is hardware: it needs no host thread, so its engine runs here
      // (its time is charged to the vCPU); doorbells and the posted interrupt never exit.
      const rig = passthroughRig(setup.image);
      read = (s, l) => rig.read(s, l);
      close = () => rig.close();
      interrupts = () => rig.counters().interrupts;
      break;
    }
  }
  let irq0 = 0;
  let kicks0 = 0;
  return {
    name,
    read,
    counters: () => {
      exits.hypercall(Hypercall.SNAPSHOT);
      timedKicks = ioeventfdKicks - kicks0;
      return { exits: 0, byRegister: {}, interrupts: interrupts() - irq0, vmmBytes: 0 };
    },
    resetCounters: () => {
      exits.hypercall(Hypercall.RESET_COUNTERS);
      irq0 = interrupts();
      kicks0 = ioeventfdKicks;
    },
    close,
  };
}

// A pending Atomics.waitAsync does not keep a Node thread alive: this timer does, until the end.
const keepAlive = setInterval(() => {}, 1 << 30);
const rig = guestRig();
const run = await measure(rig, setup.seq, setup.depth, setup.budgetMs);
await rig.close();
await irq.stop();
const result: VcpuResult = { run, ioeventfdKicks: timedKicks };
parentPort?.postMessage(result);
clearInterval(keepAlive);
