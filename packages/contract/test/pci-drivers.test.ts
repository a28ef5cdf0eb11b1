// Our four drivers over virtio-pci against our four devices, end to end: the driver side is
// PciDriverTransport (capability discovery, BAR accesses or the pci_cfg window), the device side
// VirtioPciDevice, and the drivers run their interrupt handlers only when the host delivered an
// interrupt (the INTx line is up, or an MSI-X message arrived), so a lost interrupt hangs the
// test instead of being papered over by polling.
import { MemoryDisk } from "@virtio-ts/backend-disk";
import {
  BlkDevice,
  type ConsoleBackend,
  ConsoleDevice,
  type ConsoleInputSink,
  type NetBackend,
  NetDevice,
  type NetFrameSink,
  RngDevice,
} from "@virtio-ts/devices";
import { BlkDriver, ConsoleDriver, NetDriver, RngDriver, SlabAllocator } from "@virtio-ts/drivers";
import { createGuestMemory, type GuestMemory } from "@virtio-ts/memory";
import { Feature, hasFeature, NetFeature } from "@virtio-ts/spec";
import {
  type DeviceModel,
  type PciBarKind,
  PciDriverTransport,
  RateLimitedLog,
  VirtioPciDevice,
} from "@virtio-ts/transport";
import { describe, expect, it } from "vitest";
import { pattern as random } from "../src/blk-rig.js";

type Mode = "intx" | "msix";

interface Link {
  readonly device: VirtioPciDevice;
  readonly transport: PciDriverTransport;
  /** Interrupts the host delivered (INTx rising edges or MSI-X messages). */
  readonly delivered: () => number;
  /** Run `handler` while an interrupt is pending (bounded); returns its summed result. */
  service(handler: () => number): number;
}

function link(
  model: DeviceModel,
  memory: GuestMemory,
  mode: Mode,
  o: { bar?: PciBarKind; access?: "bar" | "pci-cfg" } = {},
): Link {
  let transport: PciDriverTransport | undefined;
  let msiPending = false;
  let msis = 0;
  const device = new VirtioPciDevice(model, {
    memory,
    log: new RateLimitedLog({ sink: () => {} }),
    ...(o.bar === undefined ? {} : { bar: o.bar }),
    host:
      mode === "msix"
        ? {
            sendMsi: (address, data) => {
              if (transport?.receiveMsi(address, data) === true) {
                msiPending = true;
                msis++;
              }
            },
          }
        : {},
  });
  transport = new PciDriverTransport(device, {
    interrupts: mode,
    ...(o.access === undefined ? {} : { access: o.access }),
  });
  const t = transport;
  return {
    device,
    transport: t,
    delivered: () => (mode === "msix" ? msis : device.stats.intxAssertions),
    service(handler) {
      let n = 0;
      for (let i = 0; i < 64; i++) {
        const pending = mode === "msix" ? msiPending : device.intxAsserted;
        if (!pending) break;
        msiPending = false;
        n += handler();
      }
      return n;
    },
  };
}

const tick = () => new Promise<void>((r) => setImmediate(r));

async function until<T>(p: Promise<T>, step: () => Promise<void> | void): Promise<T> {
  let done = false;
  const tracked = p.finally(() => {
    done = true;
  });
  tracked.catch(() => {});
  for (let i = 0; i < 2000 && !done; i++) {
    await step();
    await tick();
  }
  if (!done) throw new Error("no completion: an interrupt was lost");
  return tracked;
}

const modes: [Mode, { bar?: PciBarKind; access?: "bar" | "pci-cfg" }, boolean][] = [
  ["intx", {}, false],
  ["intx", { bar: "io" }, true],
  ["msix", {}, false],
  ["msix", { bar: "memory64" }, true],
  ["intx", { access: "pci-cfg" }, false],
];

describe("BlkDriver over virtio-pci", () => {
  for (const [mode, o, packed] of modes) {
    const name = `${mode}, ${o.bar ?? "memory32"} BAR${o.access === "pci-cfg" ? " through the pci_cfg window" : ""}, ${packed ? "packed" : "split"} ring`;
    it(`writes and reads back 24 requests in flight (${name})`, async () => {
      const memory = createGuestMemory({ size: 0x400000 });
      const disk = new MemoryDisk(new Uint8Array(2048 * 512));
      const model = new BlkDevice(disk, { queueSize: 128 });
      const l = link(model, memory, mode, o);
      const driver = new BlkDriver(l.transport, memory, new SlabAllocator(0x100000, 4096, 128), {
        ringBase: 0x10000,
        queueSize: 64,
        packed,
      });
      expect(hasFeature(driver.features, Feature.RING_PACKED)).toBe(packed);
      const step = async () => {
        await model.whenIdle();
        l.service(() => driver.onInterrupt());
      };
      const jobs = Array.from({ length: 24 }, (_, i) => ({
        sector: i * 40,
        data: random(512 * (1 + (i % 8)), i + 1),
      }));
      await until(Promise.all(jobs.map((j) => driver.write(j.sector, j.data))), step);
      const got = await until(
        Promise.all(jobs.map((j) => driver.read(j.sector, j.data.length))),
        step,
      );
      for (let i = 0; i < jobs.length; i++) expect(got[i]).toEqual(jobs[i]!.data);
      expect(disk.bytes.subarray(40 * 512, 40 * 512 + 1024)).toEqual(jobs[1]!.data);
      expect(l.delivered()).toBeGreaterThan(0);
      const exits = l.device.exitCounts();
      // MSI-X interrupts need no ISR read; INTx interrupts need one each.
      if (mode === "msix") expect(exits.isr).toBeUndefined();
      else if (o.access === undefined) expect(exits.isr).toBeGreaterThanOrEqual(l.delivered());
      expect(l.device.invalidAccesses).toBe(0);
      expect(l.device.core.needsReset).toBe(false);
    });
  }
});

/** One end of a cable: what one NIC transmits, the other receives. */
class Wire implements NetBackend {
  peer: Wire | undefined;
  sink: NetFrameSink | undefined;
  transmit(frame: Uint8Array): boolean {
    return this.peer?.sink?.deliver(frame.slice()) ?? false;
  }
  attach(sink: NetFrameSink): void {
    this.sink = sink;
  }
  detach(): void {
    this.sink = undefined;
  }
}

describe("NetDriver over virtio-pci", () => {
  it("a NIC on INTx and a NIC on MSI-X exchange frames both ways and run a control command", async () => {
    const wa = new Wire();
    const wb = new Wire();
    wa.peer = wb;
    wb.peer = wa;
    const nic = (wire: Wire, mac: number, mode: Mode) => {
      const memory = createGuestMemory({ size: 0x800000 });
      const model = new NetDevice(wire, {
        mac: new Uint8Array([2, 0, 0, 0, 0, mac]),
        maxQueuePairs: 2,
        queueSize: 64,
        ctrlQueueSize: 16,
      });
      const l = link(model, memory, mode);
      const driver = new NetDriver(l.transport, memory, new SlabAllocator(0x100000, 2048, 256), {
        ringBase: 0x10000,
        queueSize: 32,
        maxQueuePairs: 2,
      });
      return { model, l, driver };
    };
    const a = nic(wa, 0x0a, "intx");
    const b = nic(wb, 0x0b, "msix");
    // Queues: rx0, tx0, rx1, tx1, ctrl: MSI-X has a vector for each and one for configuration.
    expect(b.l.device.msixVectors).toBe(6);
    expect(hasFeature(a.driver.features, NetFeature.MRG_RXBUF)).toBe(true);
    const pump = () => {
      for (let i = 0; i < 16; i++) {
        const moved =
          a.l.service(() => a.driver.onInterrupt()) + b.l.service(() => b.driver.onInterrupt());
        if (moved === 0) return;
      }
    };
    const frames = Array.from({ length: 20 }, (_, i) => {
      const f = random(60 + i * 50, i + 3);
      f.set([2, 0, 0, 0, 0, i % 2 === 0 ? 0x0b : 0x0a], 0);
      return f;
    });
    for (const [i, f] of frames.entries()) {
      expect((i % 2 === 0 ? a : b).driver.trySend(f)).toBe(true);
      pump();
    }
    const drain = (d: NetDriver) => {
      const out: Uint8Array[] = [];
      for (let f = d.tryReceive(); f !== undefined; f = d.tryReceive()) out.push(f);
      return out;
    };
    expect(drain(b.driver)).toEqual(frames.filter((_, i) => i % 2 === 0));
    expect(drain(a.driver)).toEqual(frames.filter((_, i) => i % 2 === 1));
    await until(b.driver.setQueuePairs(2), pump);
    expect(b.model.queuePairs).toBe(2);
    expect(a.l.delivered()).toBeGreaterThan(0);
    expect(b.l.delivered()).toBeGreaterThan(0);
    expect(b.l.device.exitCounts().isr).toBeUndefined();
    expect(a.l.device.invalidAccesses + b.l.device.invalidAccesses).toBe(0);
  });
});

class ConsoleHost implements ConsoleBackend {
  sink!: ConsoleInputSink;
  out = "";
  attach(sink: ConsoleInputSink): void {
    this.sink = sink;
  }
  write(_port: number, data: Uint8Array): boolean {
    this.out += new TextDecoder().decode(data);
    return true;
  }
  portOpen(): void {}
  emergencyWrite(): void {}
}

describe("ConsoleDriver over virtio-pci", () => {
  for (const mode of ["intx", "msix"] as const) {
    it(`writes to the host, receives input, and follows a resize through the configuration interrupt (${mode})`, async () => {
      const memory = createGuestMemory({ size: 0x400000 });
      const host = new ConsoleHost();
      const model = new ConsoleDevice(host, { queueSize: 16, size: { cols: 80, rows: 25 } });
      const l = link(model, memory, mode);
      const driver = new ConsoleDriver(l.transport, memory, new SlabAllocator(0x200000, 512, 64), {
        ringBase: 0x10000,
        queueSize: 16,
      });
      const received: string[] = [];
      driver.onReceive((d) => received.push(new TextDecoder().decode(d)));
      const pump = () => {
        l.service(() => driver.onInterrupt());
      };
      await until(driver.write(new TextEncoder().encode("hello from the guest\n")), pump);
      expect(host.out).toBe("hello from the guest\n");
      host.sink.input(0, new TextEncoder().encode("typed"));
      pump();
      expect(received.join("")).toBe("typed");
      model.resize(132, 50);
      pump();
      expect(driver.size).toEqual({ cols: 132, rows: 50 });
      expect(l.device.invalidAccesses).toBe(0);
    });
  }
});

describe("RngDriver over virtio-pci", () => {
  for (const mode of ["intx", "msix"] as const) {
    it(`reads entropy bytes exactly as the source produced them (${mode})`, async () => {
      const memory = createGuestMemory({ size: 0x200000 });
      let at = 0;
      const model = new RngDevice({
        source: {
          fill: (b: Uint8Array) => {
            for (let i = 0; i < b.length; i++) b[i] = at++ & 0xff;
          },
        },
        queueSize: 16,
      });
      const l = link(model, memory, mode, { bar: "io" });
      expect(l.device.bars[0]!.kind).toBe("io");
      const driver = new RngDriver(l.transport, memory, new SlabAllocator(0x100000, 256, 8), {
        ringBase: 0x10000,
        queueSize: 16,
      });
      const bytes = await until(driver.read(700), () => {
        l.service(() => driver.onInterrupt());
      });
      expect([...bytes]).toEqual(Array.from({ length: 700 }, (_, i) => i & 0xff));
      expect(l.delivered()).toBeGreaterThan(0);
    });
  }
});
