// A real Linux guest (QEMU 7.2, TCG) on disks built from @virtio-ts/interpose layers, served by
// our VhostUserBlkBackend: QEMU is the vhost-user front-end, the unchanged BlkDevice runs over
//   (a) encrypt(FileDisk) — XTS-AES-256 with a raw 64-byte key: the guest sees plaintext, the
//       image file holds ciphertext only (checked with node:crypto's own aes-256-xts);
//   (b) snapshotLog(FileDisk, log) — the guest's write goes to the redo log, a rollback to a
//       named snapshot undoes it for the next boot, and the base image is never written.
import { createDecipheriv, createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileDisk } from "@virtio-ts/backend-disk/node";
import { BlkDevice, type BlockBackend } from "@virtio-ts/devices";
import {
  explainGuest,
  type GuestMachine,
  type KernelInfo,
  requireTools,
  runGuest,
} from "@virtio-ts/interop";
import { encrypt, snapshotLog } from "@virtio-ts/interpose/node";
import { VhostUserBlkBackend, type VhostUserError } from "@virtio-ts/vhost-user";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

/** Hang guard only: the test may first wait for other suites' guests (one runs at a time). */
const BOOT_TEST_TIMEOUT = 240_000;
const IMAGE_SIZE = 16 << 20;

let kernel: KernelInfo;
const dir = mkdtempSync(join(tmpdir(), "vu-interpose-linux-"));
beforeAll(() => {
  kernel = requireTools(["qemu-system-x86_64"]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** 512 bytes of a recognisable, position-dependent pattern. */
function pattern(tag: string): Uint8Array {
  const out = new Uint8Array(512);
  const text = new TextEncoder().encode(tag);
  for (let i = 0; i < 512; i++) out[i] = (text[i % text.length]! + Math.floor(i / 64)) & 0xff;
  return out;
}

const hex = (b: Uint8Array): string => Buffer.from(b).toString("hex");
const md5 = (b: Uint8Array): string => createHash("md5").update(b).digest("hex");
const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");

/** Read `count` sectors from `disk` at `sector`. */
async function readSectors(disk: BlockBackend, sector: number, count = 1): Promise<Uint8Array> {
  const out = new Uint8Array(count * 512);
  await disk.read(sector, [out]);
  return out;
}

/** Script lines printing sector `n`'s md5 and first 16 bytes (read with O_DIRECT). */
function printSector(label: string, n: number): string[] {
  return [
    `echo "${label}md5=$(dd if=/dev/vda bs=512 skip=${n} count=1 iflag=direct 2>/dev/null | md5sum | cut -d" " -f1)"`,
    `echo "${label}head=$(dd if=/dev/vda bs=512 skip=${n} count=1 iflag=direct 2>/dev/null | head -c 16 | od -A n -t x1 | tr -d ' \\n')"`,
  ];
}

/**
 * Serve `backend` to one Linux guest over our vhost-user-blk back-end and wait for poweroff.
 * The back-end is closed and the device idle when this returns.
 */
async function bootOn(
  backend: BlockBackend,
  machine: GuestMachine,
  name: string,
  script: string[],
  files: { path: string; data: Uint8Array }[] = [],
): Promise<{ result: Awaited<ReturnType<typeof runGuest>>; why: string; closeErrors: string[] }> {
  const sock = join(dir, `${name}.sock`);
  const device = new BlkDevice(backend, { queueSize: 128 }); // QEMU's vhost-user-blk queue-size default
  const closes: (VhostUserError | undefined)[] = [];
  const server = new VhostUserBlkBackend(device, sock, {
    onConnectionClose: (e) => closes.push(e),
  });
  await server.listening;
  let result: Awaited<ReturnType<typeof runGuest>>;
  try {
    result = await runGuest({
      machine,
      kernel,
      modules: machine === "pc" ? ["virtio_pci", "virtio_blk"] : ["virtio_mmio", "virtio_blk"],
      sharedMemory: true,
      files: files.map((f) => ({ kind: "file" as const, ...f })),
      args: [
        "-chardev",
        `socket,id=c0,path=${sock}`,
        "-device",
        machine === "pc" ? "vhost-user-blk-pci,chardev=c0" : "vhost-user-blk,chardev=c0",
      ],
      script: [...script, ""].join("\n"),
      timeoutMs: 90_000,
    });
  } finally {
    await server.close();
    await device.whenIdle();
  }
  const closeErrors = closes.filter((e) => e !== undefined).map((e) => e.message);
  const why = `${explainGuest(result)}\n--- back-end ---\n${closeErrors.join("\n")}`;
  console.info(`[interop] ${name} on ${machine}: ${Math.round(result.durationMs)} ms`);
  return { result, why, closeErrors };
}

describe("a Linux guest on encrypt(FileDisk) over our vhost-user-blk back-end", () => {
  it(
    "reads the plaintext we wrote, writes its own, and the image file holds ciphertext only",
    async () => {
      const img = join(dir, "xts.img");
      writeFileSync(img, new Uint8Array(IMAGE_SIZE));
      const key = new Uint8Array(randomBytes(64));
      key[0] = key[32]! ^ 0xff; // the XTS halves must differ
      const ours = pattern("virtio-ts plaintext at sector 0, encrypted by the host|");
      const theirs = pattern("the Linux guest's plaintext at sector 8#");

      // Write our pattern through the encryption layer, then serve the same layering to QEMU.
      const file = await FileDisk.open(img);
      const disk = encrypt(file, key);
      let boot: Awaited<ReturnType<typeof bootOn>>;
      try {
        await disk.write(0, [ours]);
        await disk.flush();
        boot = await bootOn(
          disk,
          "pc",
          "xts",
          [
            'echo "size=$(cat /sys/block/vda/size)"',
            ...printSector("s0", 0),
            "dd if=/sector8.bin of=/dev/vda bs=512 seek=8 count=1 oflag=direct conv=fsync 2>/dev/null",
            "sync",
            ...printSector("s8", 8),
          ],
          [{ path: "/sector8.bin", data: theirs }],
        );
      } finally {
        await file.close();
      }
      const { result, why, closeErrors } = boot;
      expect(result.timedOut, why).toBe(false);
      expect(result.guestExit, why).toBe(0);
      // The guest saw our plaintext, not the ciphertext on the file.
      expect(result.output, why).toContain(`size=${IMAGE_SIZE / 512}\n`);
      expect(result.output, why).toContain(`s0head=${hex(ours.subarray(0, 16))}\n`);
      expect(result.output, why).toContain(`s0md5=${md5(ours)}\n`);
      expect(result.output, why).toContain(`s8md5=${md5(theirs)}\n`);
      expect(closeErrors).toEqual([]);

      // Reopened through encrypt with the same key: both plaintexts, nothing else written.
      const again = await FileDisk.open(img, { readOnly: true });
      try {
        const plain = await readSectors(encrypt(again, key), 0, 9);
        expect(hex(plain.subarray(0, 512))).toBe(hex(ours));
        expect(hex(plain.subarray(8 * 512))).toBe(hex(theirs));
      } finally {
        await again.close();
      }

      // The raw image: neither pattern (nor any 32-byte piece of one) appears anywhere.
      const raw = readFileSync(img);
      expect(raw.length).toBe(IMAGE_SIZE);
      for (const p of [ours, theirs]) {
        expect(raw.indexOf(Buffer.from(p))).toBe(-1);
        for (let off = 0; off + 32 <= 512; off += 32) {
          expect(raw.indexOf(Buffer.from(p.subarray(off, off + 32)))).toBe(-1);
        }
      }
      // It is aes-xts-plain64 ciphertext: node:crypto (OpenSSL) decrypts sectors 0 and 8 with
      // the sector number as the little-endian tweak; the untouched sectors stay zero.
      const xtsDecrypt = (sector: number): Uint8Array => {
        const iv = Buffer.alloc(16);
        iv.writeBigUInt64LE(BigInt(sector));
        const d = createDecipheriv("aes-256-xts", key, iv);
        return Buffer.concat([d.update(raw.subarray(sector * 512, (sector + 1) * 512)), d.final()]);
      };
      expect(hex(xtsDecrypt(0))).toBe(hex(ours));
      expect(hex(xtsDecrypt(8))).toBe(hex(theirs));
      expect(raw.subarray(512, 8 * 512).every((b) => b === 0)).toBe(true);
      expect(raw.subarray(9 * 512).every((b) => b === 0)).toBe(true);
    },
    BOOT_TEST_TIMEOUT,
  );
});

describe("a Linux guest on snapshotLog(FileDisk) over our vhost-user-blk back-end", () => {
  it(
    "writes a marker in boot 1; after rollback(name), boot 2 reads the old sector and the base is untouched",
    async () => {
      const baseImg = join(dir, "base.img");
      const logPath = join(dir, "base.img.log");
      const old = pattern("sector 8 as the base image holds it|");
      const marker = pattern("MARKER written by boot 1, to be rolled back!");
      const image = new Uint8Array(IMAGE_SIZE);
      image.set(pattern("base sector 0|"), 0);
      image.set(old, 8 * 512);
      writeFileSync(baseImg, image);
      const baseHash = sha256(image);
      const baseMtime = statSync(baseImg).mtimeMs;

      // The base is opened read-only: a write reaching it would fail the guest's I/O.
      const base = await FileDisk.open(baseImg, { readOnly: true });
      const log = await snapshotLog(base, logPath, { create: true });
      try {
        expect(log.readOnly).toBe(false);
        const snap = await log.snapshot("before-boot-1");
        // The marker (and the FLUSH record the snapshot's flush appends) end the log for now.
        const logBefore = statSync(logPath).size;
        expect(logBefore).toBeGreaterThanOrEqual(snap.logBytes);

        const boot1 = await bootOn(
          log,
          "microvm",
          "snap-boot1",
          [
            ...printSector("b1before", 8),
            "dd if=/marker.bin of=/dev/vda bs=512 seek=8 count=1 oflag=direct conv=fsync 2>/dev/null",
            "sync",
            ...printSector("b1after", 8),
          ],
          [{ path: "/marker.bin", data: marker }],
        );
        expect(boot1.result.timedOut, boot1.why).toBe(false);
        expect(boot1.result.guestExit, boot1.why).toBe(0);
        expect(boot1.result.output, boot1.why).toContain(`b1beforemd5=${md5(old)}\n`);
        expect(boot1.result.output, boot1.why).toContain(`b1aftermd5=${md5(marker)}\n`);
        expect(boot1.result.output, boot1.why).toContain(
          `b1afterhead=${hex(marker.subarray(0, 16))}\n`,
        );
        expect(boot1.closeErrors).toEqual([]);
        // The write went to the log (which grew) and reads back through it.
        expect(statSync(logPath).size).toBeGreaterThan(logBefore);
        expect(hex(await readSectors(log, 8))).toBe(hex(marker));

        await log.rollback("before-boot-1");
        expect(statSync(logPath).size).toBe(snap.logBytes);
        expect(hex(await readSectors(log, 8))).toBe(hex(old));

        const boot2 = await bootOn(log, "microvm", "snap-boot2", printSector("b2", 8));
        expect(boot2.result.timedOut, boot2.why).toBe(false);
        expect(boot2.result.guestExit, boot2.why).toBe(0);
        // The guest sees the OLD sector 8, not boot 1's marker.
        expect(boot2.result.output, boot2.why).toContain(`b2md5=${md5(old)}\n`);
        expect(boot2.result.output, boot2.why).toContain(`b2head=${hex(old.subarray(0, 16))}\n`);
        expect(boot2.result.output, boot2.why).not.toContain(md5(marker));
        expect(boot2.closeErrors).toEqual([]);
      } finally {
        await log.close();
        await base.close();
      }
      // The base image was never modified: same bytes, same mtime.
      const after = new Uint8Array(readFileSync(baseImg));
      expect(sha256(after)).toBe(baseHash);
      expect(hex(after.subarray(8 * 512, 9 * 512))).toBe(hex(old));
      expect(statSync(baseImg).mtimeMs).toBe(baseMtime);
    },
    BOOT_TEST_TIMEOUT,
  );
});
