/** Deliberately broken virtio-vsock device models, each breaking one rule. */
import { VsockDevice } from "@virtio-ts/devices";
import { VsockConfig, VsockHdr, VsockOp, VsockType } from "@virtio-ts/spec";
import type { DeviceModel } from "@virtio-ts/transport";
import type { VsockDeviceAdapter, VsockDeviceSetup } from "../../src/index.js";
import { TapModel } from "../../src/tap.js";

/** Our VsockDevice with an echo service, as the suite asks for. */
export function echoDevice({ guestCid, echoPort }: VsockDeviceSetup): VsockDevice {
  const d = new VsockDevice({ guestCid });
  d.listen(echoPort, (s) => {
    s.on("data", (b) => s.write(b));
    s.on("end", () => s.end());
  });
  return d;
}

/** Reports guest_cid 2, the host's (§5.10.4: reserved). */
export const reservedCid: VsockDeviceAdapter = {
  create: (setup) =>
    new TapModel(echoDevice(setup), {
      readConfig: (offset, _size, value) => (offset === VsockConfig.GUEST_CID ? 2 : value),
    }) as DeviceModel,
};

/** Reads the header at `chain`'s start from guest memory, lets `fix` change it, writes it back. */
function rewriteHeader(fix: (v: DataView) => void): ConstructorParameters<typeof TapModel>[1] {
  return {
    onPop(index, chain, ctx) {
      if (index !== 1 || chain.readableCount === 0 || chain.lens[0]! < VsockHdr.SIZE) return;
      const h = ctx.memory.slice(chain.addrs[0]!, VsockHdr.SIZE).slice();
      fix(new DataView(h.buffer));
      ctx.memory.write(chain.addrs[0]!, h);
    },
  };
}

/** Takes a packet of an unknown type for an RST (and so answers nothing; §5.10.6.4.2 wants an RST). */
export const unknownTypeIgnored: VsockDeviceAdapter = {
  create: (setup) =>
    new TapModel(
      echoDevice(setup),
      rewriteHeader((v) => {
        const t = v.getUint16(VsockHdr.TYPE, true);
        if (t !== VsockType.STREAM && t !== VsockType.SEQPACKET) {
          v.setUint16(VsockHdr.TYPE, VsockType.STREAM, true);
          v.setUint16(VsockHdr.OP, VsockOp.RST, true);
        }
      }),
    ) as DeviceModel,
};

/** Reads every guest buf_alloc as 1 MiB, so it sends past the guest's credit (§5.10.6.3.2). */
export const creditBlind: VsockDeviceAdapter = {
  create: (setup) =>
    new TapModel(
      echoDevice(setup),
      rewriteHeader((v) => v.setUint32(VsockHdr.BUF_ALLOC, 1 << 20, true)),
    ) as DeviceModel,
};
