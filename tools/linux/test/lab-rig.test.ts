// The v86 rig of `pnpm lab linux`: v86's own IDE disk and NE2000 next to virtio-ts's virtio-blk
// and virtio-net, over the same bytes and the same switch, each device's traps and interrupts
// counted. One boot (about 40 s of one core), one guest at a time through the interop slot.
import { acquireGuestSlot } from "@virtio-ts/interop";
import { describe, expect, it } from "vitest";
import { LAB_VIRTIO_TS_MAC, type LabMarker, labModules, startLabGuest } from "../src/index.js";
import { assetsOrFail } from "./helpers/boot.js";

const SCRIPT = `i=0; while [ ! -e /dev/sda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ "$(head -c 1048576 /dev/sda | md5sum)" = "$(head -c 1048576 /dev/vda | md5sum)" ] && echo "K same bytes"
echo "@@LAB begin sda@@"; dd if=/dev/sda of=/dev/null bs=4096 count=32 iflag=direct 2>/dev/null; echo "@@LAB end sda@@"
echo "@@LAB begin vda@@"; dd if=/dev/vda of=/dev/null bs=4096 count=32 iflag=direct 2>/dev/null; echo "@@LAB end vda@@"
for i in /sys/class/net/eth*; do n=\${i##*/}; ip addr flush dev $n; ip link set $n down
  [ "$(cat $i/address)" = "${LAB_VIRTIO_TS_MAC}" ] || theirs=$n; done
ip addr add 10.0.2.15/24 dev $theirs && ip link set $theirs up && ping -c 2 -W 5 10.0.2.2 >/dev/null
echo "@@LAB begin ping@@"; ping -c 3 -W 5 10.0.2.2 >/dev/null && echo "K ping ok"; echo "@@LAB end ping@@"`;

describe("the lab's v86 rig", () => {
  it("counts each device's own traps and interrupts: reads of /dev/sda trap on IDE only, of /dev/vda on virtio-blk only, a ping over the NE2000 on the NE2000, and the peer answers it", async () => {
    const assets = assetsOrFail();
    expect(labModules(assets, ["ata_piix", "sd_mod", "ne2k-pci"])).toEqual(
      expect.arrayContaining(["libata", "ata_piix", "sd_mod", "8390", "ne2k_pci"]),
    );
    const release = await acquireGuestSlot();
    const marks = new Map<string, LabMarker>();
    const lines: string[] = [];
    try {
      const image = new Uint8Array(8 << 20);
      for (let i = 0; i < image.length; i += 4096) image[i] = (i >> 12) & 0xff;
      const r = await startLabGuest({
        assets,
        image,
        nic: "ne2k",
        modules: ["ata_piix", "sd_mod", "ne2k-pci"],
        command: SCRIPT,
        timeoutSeconds: 240,
        onLine: (l) => lines.push(l),
        onMarker: (m) => marks.set(m.text, m),
      });
      expect(r.end, r.lastLines.join("\n")).toBe("exit");
      expect(r.exitCode).toBe(0);
      expect(lines).toContain("K same bytes");
      expect(lines).toContain("K ping ok");
      const delta = (phase: string, dev: "ide" | "virtio-ts-blk" | "ne2k" | "virtio-ts-net") => {
        const a = marks.get(`begin ${phase}`)!.devices[dev];
        const b = marks.get(`end ${phase}`)!.devices[dev];
        return { traps: b.traps - a.traps, irqs: b.interrupts - a.interrupts };
      };
      const sdaIde = delta("sda", "ide");
      expect(sdaIde.traps).toBeGreaterThanOrEqual(32 * 10);
      expect(sdaIde.irqs).toBeGreaterThanOrEqual(32);
      expect(delta("sda", "virtio-ts-blk").traps).toBe(0);
      const vdaBlk = delta("vda", "virtio-ts-blk");
      expect(vdaBlk.traps).toBeGreaterThanOrEqual(32);
      expect(vdaBlk.traps).toBeLessThanOrEqual(32 * 3);
      expect(delta("vda", "ide").traps).toBe(0);
      const ne = delta("ping", "ne2k");
      expect(ne.traps).toBeGreaterThanOrEqual(3 * 50);
      expect(ne.irqs).toBeGreaterThanOrEqual(3);
      const peer0 = marks.get("begin ping")!.peer;
      const peer1 = marks.get("end ping")!.peer;
      expect(peer1.echoReplies - peer0.echoReplies).toBe(3);
      expect(r.v86Mac).toBeUndefined(); // the script prints no lab-mac line
    } finally {
      release();
    }
    // The budget includes waiting for the machine-wide guest slot (other guests may hold it).
  }, 600_000);
});
