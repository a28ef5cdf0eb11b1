/** Deliberately broken virtio-blk drivers, each breaking exactly one rule, over either transport. */
import { BlkConfig, DeviceStatus, MmioReg } from "@virtio-ts/spec";
import {
  MmioDriverTransport,
  PciDriverTransport,
  type PciFunctionAccess,
} from "@virtio-ts/transport";
import type { BlkDriverAdapter } from "../../src/index.js";
import { blkDriverAdapter } from "../drivers.js";
import { pciStatusView } from "./pci-views.js";

/**
 * BlkDriver over a bus view that never writes FEATURES_OK (§3.1.1 step 5) and believes it is
 * set when it reads the status back.
 */
export const skipsFeaturesOk: BlkDriverAdapter = blkDriverAdapter((_t, env) =>
  env.pci !== undefined
    ? new PciDriverTransport(pciStatusView(env.pci))
    : new MmioDriverTransport({
        read: (offset, size) => {
          const v = env.bus!.read(offset, size);
          return offset === MmioReg.STATUS && (v & DeviceStatus.DRIVER) !== 0
            ? v | DeviceStatus.FEATURES_OK
            : v;
        },
        write: (offset, size, value) =>
          env.bus!.write(
            offset,
            size,
            offset === MmioReg.STATUS ? value & ~DeviceStatus.FEATURES_OK : value,
          ),
      }),
);

/** A PCI function view where the device configuration's `seg_max` reads 0. */
function noSegMax(pci: PciFunctionAccess): PciFunctionAccess {
  const device = new PciDriverTransport(pci).probe().device!;
  const at = device.offset + BlkConfig.SEG_MAX;
  return {
    ...pci,
    configRead: (o, s) => pci.configRead(o, s),
    configWrite: (o, s, v) => pci.configWrite(o, s, v),
    barRead: (bar, o, s) => (bar === device.bar && o === at ? 0 : pci.barRead(bar, o, s)),
    barWrite: (bar, o, s, v) => pci.barWrite(bar, o, s, v),
  };
}

/** BlkDriver over a bus view where `seg_max` reads 0, so it never bounds its segments (§5.2.5). */
export const ignoresSegMax: BlkDriverAdapter = blkDriverAdapter((_t, env) =>
  env.pci !== undefined
    ? new PciDriverTransport(noSegMax(env.pci))
    : new MmioDriverTransport({
        read: (offset, size) =>
          offset === MmioReg.CONFIG + BlkConfig.SEG_MAX ? 0 : env.bus!.read(offset, size),
        write: (offset, size, value) => env.bus!.write(offset, size, value),
      }),
);
