/** Deliberately broken virtio-blk drivers, each breaking exactly one rule. */
import { BlkConfig, DeviceStatus, MmioReg } from "@virtio-ts/spec";
import { MmioDriverTransport } from "@virtio-ts/transport";
import type { BlkDriverAdapter } from "../../src/index.js";
import { blkDriverAdapter } from "../drivers.js";

/**
 * BlkDriver over a bus view that never writes FEATURES_OK (§3.1.1 step 5) and believes it is
 * set when it reads the status back.
 */
export const skipsFeaturesOk: BlkDriverAdapter = blkDriverAdapter(
  (_t, bus) =>
    new MmioDriverTransport({
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
);

/** BlkDriver over a bus view where `seg_max` reads 0, so it never bounds its segments (§5.2.5). */
export const ignoresSegMax: BlkDriverAdapter = blkDriverAdapter(
  (_t, bus) =>
    new MmioDriverTransport({
      read: (offset, size) =>
        offset === MmioReg.CONFIG + BlkConfig.SEG_MAX ? 0 : bus.read(offset, size),
      write: (offset, size, value) => bus.write(offset, size, value),
    }),
);
