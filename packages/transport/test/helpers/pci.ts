// Helpers for the virtio-pci tests: a VirtioPciDevice over the echo model with a recording
// host, and accessors for its configuration space and common configuration.
import { createGuestMemory, type GuestMemoryMap } from "@virtio-ts/memory";
import { PciCommonCfg } from "@virtio-ts/spec";
import {
  type PciBarMapping,
  type PciHost,
  RateLimitedLog,
  VirtioPciDevice,
  type VirtioPciDeviceOptions,
} from "../../src/index.js";
import { EchoModel } from "./echo-model.js";

/** The echo model under a device ID PCI can carry (0x1040 + 0x3e = 0x107e). */
export class PciEchoModel extends EchoModel {
  override readonly deviceId: number = 0x3e;
}

/** What the host callbacks saw. */
export interface HostLog {
  readonly maps: [number, PciBarMapping | undefined][];
  readonly intx: boolean[];
  readonly msi: [number, number][];
  /** ISR bits (core.interruptStatus) at the moment of each setIntx / sendMsi call. */
  readonly isrAtSignal: number[];
}

export interface PciSetup {
  readonly model: PciEchoModel;
  readonly memory: GuestMemoryMap;
  readonly dev: VirtioPciDevice;
  readonly host: HostLog;
}

export function pciDevice(
  o: {
    features?: bigint;
    queues?: readonly number[];
    msi?: boolean;
    options?: Partial<VirtioPciDeviceOptions>;
  } = {},
): PciSetup {
  const model = new PciEchoModel(o.features ?? 0n, o.queues ?? [16, 4]);
  const memory = createGuestMemory({ size: 0x10000, shared: false });
  const log: HostLog = { maps: [], intx: [], msi: [], isrAtSignal: [] };
  let dev: VirtioPciDevice | undefined;
  const host: PciHost = {
    mapBar: (bar, m) => log.maps.push([bar, m]),
    setIntx: (level) => {
      log.intx.push(level);
      log.isrAtSignal.push(dev?.core.interruptStatus ?? -1);
    },
    ...(o.msi === true
      ? {
          sendMsi: (address: number, data: number) => {
            log.msi.push([address, data]);
            log.isrAtSignal.push(dev?.core.interruptStatus ?? -1);
          },
        }
      : {}),
  };
  dev = new VirtioPciDevice(model, {
    memory,
    host,
    log: new RateLimitedLog({ sink: () => {} }),
    ...o.options,
  });
  return { model, memory, dev, host: log };
}

/** Width of each common configuration field, by offset. */
export const COMMON_WIDTH: Readonly<Record<number, 1 | 2 | 4>> = {
  [PciCommonCfg.DEVICE_FEATURE_SELECT]: 4,
  [PciCommonCfg.DEVICE_FEATURE]: 4,
  [PciCommonCfg.DRIVER_FEATURE_SELECT]: 4,
  [PciCommonCfg.DRIVER_FEATURE]: 4,
  [PciCommonCfg.CONFIG_MSIX_VECTOR]: 2,
  [PciCommonCfg.NUM_QUEUES]: 2,
  [PciCommonCfg.DEVICE_STATUS]: 1,
  [PciCommonCfg.CONFIG_GENERATION]: 1,
  [PciCommonCfg.QUEUE_SELECT]: 2,
  [PciCommonCfg.QUEUE_SIZE]: 2,
  [PciCommonCfg.QUEUE_MSIX_VECTOR]: 2,
  [PciCommonCfg.QUEUE_ENABLE]: 2,
  [PciCommonCfg.QUEUE_NOTIFY_OFF]: 2,
  [PciCommonCfg.QUEUE_DESC_LO]: 4,
  [PciCommonCfg.QUEUE_DESC_HI]: 4,
  [PciCommonCfg.QUEUE_DRIVER_LO]: 4,
  [PciCommonCfg.QUEUE_DRIVER_HI]: 4,
  [PciCommonCfg.QUEUE_DEVICE_LO]: 4,
  [PciCommonCfg.QUEUE_DEVICE_HI]: 4,
  [PciCommonCfg.QUEUE_NOTIF_CONFIG_DATA]: 2,
  [PciCommonCfg.QUEUE_RESET]: 2,
  [PciCommonCfg.ADMIN_QUEUE_INDEX]: 2,
  [PciCommonCfg.ADMIN_QUEUE_NUM]: 2,
};

/** Read a common configuration field of the device (in BAR 0) with its own width. */
export function rc(dev: VirtioPciDevice, field: number): number {
  return dev.barRead(0, dev.layout.common + field, COMMON_WIDTH[field]!);
}

/** Write a common configuration field with its own width. */
export function wc(dev: VirtioPciDevice, field: number, value: number): void {
  dev.barWrite(0, dev.layout.common + field, COMMON_WIDTH[field]!, value);
}

/** Walk the capability list: [offset, id, cfg_type] of each capability. */
export function capabilities(dev: VirtioPciDevice): [number, number, number][] {
  const out: [number, number, number][] = [];
  let pos = dev.configRead(0x34, 1);
  while (pos !== 0 && out.length < 48) {
    out.push([pos, dev.configRead(pos, 1), dev.configRead(pos + 3, 1)]);
    pos = dev.configRead(pos + 1, 1);
  }
  return out;
}

/** Configuration-space offset of the first virtio capability of `cfgType`. */
export function capOf(dev: VirtioPciDevice, cfgType: number): number {
  const c = capabilities(dev).find(([, id, t]) => id === 0x09 && t === cfgType);
  if (c === undefined) throw new Error(`no capability of type ${cfgType}`);
  return c[0];
}
