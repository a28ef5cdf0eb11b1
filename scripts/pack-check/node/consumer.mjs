// The Node side of the packaging check: a short ESM program a user could write against the
// installed tarballs (run inside the fresh project, not the workspace). Each line it prints is
// checked by scripts/pack-check.mjs; any failed assertion exits non-zero.
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { MemoryDisk } from "@virtio-ts/backend-disk";
import { FileDisk, NbdDisk, NbdServer } from "@virtio-ts/backend-disk/node";
import { VethPair } from "@virtio-ts/backend-net";
import { StreamTunnel } from "@virtio-ts/backend-net/node";
import { BlkDevice } from "@virtio-ts/devices";
import { BlkDriver, SlabAllocator } from "@virtio-ts/drivers";
import { encrypt } from "@virtio-ts/interpose/node";
import { createGuestMemory } from "@virtio-ts/memory";
import { InThreadMmio } from "@virtio-ts/transport";
import { nativeAvailable } from "@virtio-ts/vhost-user";

const dir = mkdtempSync(join(tmpdir(), "virtio-ts-consumer-"));
try {
  // A guest's blk driver → BlkDevice → AES-XTS → FileDisk (the Node entry), one thread.
  const path = join(dir, "disk.img");
  writeFileSync(path, new Uint8Array(1 << 20));
  const file = await FileDisk.open(path);
  const memory = createGuestMemory({ size: 0x200000 });
  const vm = new InThreadMmio(
    new BlkDevice(
      encrypt(
        file,
        Uint8Array.from({ length: 64 }, (_, i) => i),
      ),
    ),
    { memory },
  );
  const blk = new BlkDriver(vm.transport, memory, new SlabAllocator(0x100000, 4096, 64), {
    ringBase: 0x10000,
  });
  vm.line.handler = () => blk.onInterrupt();
  const data = new Uint8Array(4096).map((_, i) => i & 0xff);
  await blk.write(8, data);
  await blk.flush();
  assert.deepEqual(await blk.read(8, 4096), data);
  console.log("blk over encrypted FileDisk", blk.capacity);
  await file.close();

  // NBD between this process's server and client, on a unix socket (the ./node entry).
  const server = new NbdServer({ exports: { mem: MemoryDisk.ofSize(1 << 20) } });
  const sock = join(dir, "nbd.sock");
  await server.listen({ path: sock });
  const nbd = await NbdDisk.connect({ path: sock }, "mem");
  await nbd.write(1, [new Uint8Array(512).fill(0x5a)]);
  const back = new Uint8Array(512);
  await nbd.read(1, [back]);
  assert.equal(back[511], 0x5a);
  console.log("nbd", nbd.capacity, back[0]);
  await nbd.close();
  await server.close();

  // The root entries of backend-net and the tunnel class from ./node are one package.
  assert.equal(typeof StreamTunnel.dial, "function");
  assert.ok(new VethPair().a);

  // The vhost-user addon was built by the install step, inside node_modules.
  const entry = fileURLToPath(import.meta.resolve("@virtio-ts/vhost-user"));
  const addon = join(entry, "../../native/build/Release/vhost_user.node");
  console.log(
    "vhost-user addon",
    nativeAvailable(),
    existsSync(addon) && addon.includes("node_modules"),
  );
} finally {
  rmSync(dir, { recursive: true, force: true });
}
