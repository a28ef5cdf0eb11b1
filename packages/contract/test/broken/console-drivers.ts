/** Deliberately broken console drivers, each breaking one rule. */
import { ConsoleDriver, SlabAllocator } from "@virtio-ts/drivers";
import { DeviceStatus, MmioReg } from "@virtio-ts/spec";
import {
  type ConfigWritableTransport,
  type MmioBus,
  MmioDriverTransport,
  PciDriverTransport,
  type PciFunctionAccess,
} from "@virtio-ts/transport";
import type { ConsoleDriverAdapter } from "../../src/index.js";
import { pciStatusView } from "./pci-views.js";

/** Views that distort the device access of a driver, one per transport. */
interface Views {
  readonly mmio: (bus: MmioBus) => MmioBus;
  readonly pci: (pci: PciFunctionAccess) => PciFunctionAccess;
}

/** Our ConsoleDriver, as a third party would wrap theirs; `view` may distort its bus. */
export function consoleDriverAdapter(
  view?: Views,
  options: { multiport?: boolean } = {},
): ConsoleDriverAdapter {
  let d: ConsoleDriver | undefined;
  const rx = new Map<number, number[]>();
  return {
    attach(transport, memory, env) {
      rx.clear();
      const t: ConfigWritableTransport =
        view === undefined
          ? transport
          : env.pci !== undefined
            ? new PciDriverTransport(view.pci(env.pci))
            : new MmioDriverTransport(view.mmio(env.bus!));
      d = new ConsoleDriver(t, memory, new SlabAllocator(env.region.base + 0x100000, 512, 256), {
        ringBase: env.region.base,
        ...options,
      });
      d.onReceive((data, port) => {
        const a = rx.get(port) ?? [];
        for (const b of data) a.push(b);
        rx.set(port, a);
      });
    },
    write: (port, data) => d!.write(data, port),
    received: (port) => Uint8Array.from(rx.get(port) ?? []),
    openPort: (port) => d!.openPort(port),
    interrupt: () => void d!.onInterrupt(),
  };
}

/** ConsoleDriver over a bus view that never writes FEATURES_OK and believes it is set (§3.1.1). */
export const skipsFeaturesOk: ConsoleDriverAdapter = consoleDriverAdapter({
  mmio: (bus) => ({
    read: (offset, size) => {
      const v = bus.read(offset, size);
      return offset === MmioReg.STATUS && (v & DeviceStatus.DRIVER) !== 0
        ? v | DeviceStatus.FEATURES_OK
        : v;
    },
    write: (offset, size, value) =>
      bus.write(
        offset,
        size,
        offset === MmioReg.STATUS ? value & ~DeviceStatus.FEATURES_OK : value,
      ),
  }),
  pci: pciStatusView,
});
