/** Deliberately broken virtio-console device models, each breaking one rule. */
import { ConsoleDevice } from "@virtio-ts/devices";
import { ConsoleConfig } from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import type { ConsoleDeviceAdapter } from "../../src/index.js";

/** `inner` with some members replaced. */
function patched(inner: ConsoleDevice, over: Partial<Record<keyof DeviceModel, unknown>>) {
  return new Proxy(inner, {
    get(t, p) {
      if (p in over) return over[p as keyof DeviceModel];
      const v = Reflect.get(t, p);
      return typeof v === "function" ? v.bind(t) : v;
    },
  }) as DeviceModel;
}

function ports(n: number) {
  return Array.from({ length: n }, (_, i) => ({ console: i === 0 }));
}

/** Drops writes to emerg_wr until FEATURES_OK (§5.3.5.1 wants them taken at any time). */
export const lateEmergency: ConsoleDeviceAdapter = {
  create: (backend, { ports: n }) =>
    patched(new ConsoleDevice(backend, { ports: ports(n) }), {
      acceptsEarlyConfigWrite: () => false,
    }),
};

/** Reports max_nr_ports 1 while adding two ports (§5.3.6.2.1: ids below max_nr_ports). */
export const smallMaxPorts: ConsoleDeviceAdapter = {
  create(backend, { ports: n }) {
    const d = new ConsoleDevice(backend, { ports: ports(n) });
    return patched(d, {
      readConfig: (offset: number, size: 1 | 2 | 4) =>
        offset === ConsoleConfig.MAX_NR_PORTS && size === 4 ? 1 : d.readConfig(offset, size),
    });
  },
};
