/** Distorting views of a PCI function, for the broken drivers of the tests. */
import { DeviceStatus, PciCommonCfg } from "@virtio-ts/spec";
import { PciDriverTransport, type PciFunctionAccess } from "@virtio-ts/transport";

/**
 * A view that never lets FEATURES_OK reach `device_status` and shows it set when the driver
 * reads the status back (a driver that skips §3.1.1 step 5 and believes it did it).
 */
export function pciStatusView(pci: PciFunctionAccess): PciFunctionAccess {
  const common = new PciDriverTransport(pci).probe().common;
  const status = common.offset + PciCommonCfg.DEVICE_STATUS;
  return {
    configRead: (o, s) => pci.configRead(o, s),
    configWrite: (o, s, v) => pci.configWrite(o, s, v),
    barRead: (bar, o, s) => {
      const v = pci.barRead(bar, o, s);
      return bar === common.bar && o === status && (v & DeviceStatus.DRIVER) !== 0
        ? v | DeviceStatus.FEATURES_OK
        : v;
    },
    barWrite: (bar, o, s, v) =>
      pci.barWrite(
        bar,
        o,
        s,
        bar === common.bar && o === status ? v & ~DeviceStatus.FEATURES_OK : v,
      ),
  };
}
