// The blk checks once more with the split ring (RING_PACKED not offered), this time through
// the AES-XTS encrypt interposer: the guest sees plaintext, the image file holds ciphertext.
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileDisk } from "@virtio-ts/backend-disk/node";
import { encrypt } from "@virtio-ts/interpose/node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { LinuxResult } from "../src/index.js";
import {
  assetsOrFail,
  BLK_SCRIPT,
  bootRun,
  checks,
  e2fsck,
  featureBit,
  GUEST_TEXT,
  makeImage,
  PATTERN_BLOCK,
  PCI_SCRIPT,
  pattern,
  WRITE_BLOCK,
} from "./helpers/boot.js";

const SIZE = 16 << 20;
const dir = mkdtempSync(join(tmpdir(), "linux-split-"));
const image = join(dir, "cipher.img");
const key = randomBytes(64);
const PAT = pattern(2);
let r: LinuxResult;
let k: Map<string, string[]>;
let plain: Buffer;

/** The whole image decrypted on the host with the same key. */
async function decrypt(): Promise<Buffer> {
  const file = await FileDisk.open(image);
  const out = Buffer.alloc(SIZE);
  await encrypt(file, key).read(0, [out]);
  await file.close();
  return out;
}

beforeAll(async () => {
  assetsOrFail();
  // Encrypt the pattern into place on the host first: the image never holds it in clear.
  makeImage(image, SIZE, []);
  const file = await FileDisk.open(image);
  await encrypt(file, key).write(PATTERN_BLOCK * 8, [PAT]);
  await file.flush();
  await file.close();
  ({ r } = await bootRun({
    disk: image,
    packed: false,
    wrapDisk: (disk) => encrypt(disk, key),
    command: [...PCI_SCRIPT, ...BLK_SCRIPT].join("\n"),
  }));
  k = checks(r.output);
  plain = await decrypt();
}, 300_000);

afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("Linux in v86 on a split-ring BlkDevice over encrypt(FileDisk)", () => {
  it("boots, runs the script and exits 0", () => {
    expect(r.end, r.lastLines.join("\n")).toBe("exit");
    expect(r.exitCode).toBe(0);
  });

  it("negotiates VERSION_1 without RING_PACKED when it is not offered", () => {
    const devs = (k.get("dev") ?? []).map((l) => l.split(" "));
    expect(devs).toHaveLength(4);
    for (const d of devs) {
      expect(featureBit(d[4]!, 32), `VERSION_1 on ${d[0]}`).toBe(true);
      expect(featureBit(d[4]!, 34), `RING_PACKED on ${d[0]}`).toBe(false);
    }
  });

  it("shows the guest the plaintext pattern and keeps its write, in plaintext only after decryption", () => {
    expect(k.get("pattern")).toEqual([createHash("md5").update(PAT).digest("hex")]);
    expect(k.get("wrote")).toEqual(["ok"]);
    const at = WRITE_BLOCK * 4096;
    expect(plain.subarray(at, at + GUEST_TEXT.length).toString()).toBe(GUEST_TEXT);
    const raw = readFileSync(image);
    expect(raw.includes(Buffer.from(GUEST_TEXT))).toBe(false);
    expect(raw.includes(Buffer.from(PAT.subarray(0, 64)))).toBe(false);
  });

  it("makes an ext2 file system whose decrypted image e2fsck -fn finds clean, while the image holds no file text", () => {
    expect(k.get("mkfs")).toEqual(["ok"]);
    expect(k.get("reread")).toEqual(["hello 5000"]);
    const clear = join(dir, "clear.img");
    writeFileSync(clear, plain);
    const fsck = e2fsck(clear);
    expect(fsck.status, fsck.out).toBe(0);
    expect(readFileSync(image).includes(Buffer.from("4999\n5000\n"))).toBe(false);
    expect(plain.includes(Buffer.from("4999\n5000\n"))).toBe(true);
  });
});
