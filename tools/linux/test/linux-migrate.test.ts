// "Suspend the VM, store its encoded state, copy it to the target server, resume" with a real
// Linux guest: the Debian guest boots in v86 in this process (A) on virtio-ts blk (FileDisk),
// net (a Switch with the TypeScript ping peer), console and rng over virtio-pci, makes an ext2
// file system on /dev/vda, writes files, starts a background ping and background disk I/O and
// blocks reading /dev/hvc0. A suspends it there — requests possibly in flight — encodes v86's
// state with the devices' states and sends them with the disk image over a unix socket to a
// child process (B) that had its emulator and fresh devices (its own Switch and peer) ready;
// B restores, resumes and types a line on hvc0. The same guest, without a reboot, then checks
// its files (page cache and disk), its ping (replies only B's peer can have sent), hvc0 and
// hwrng, and exits; B reports; e2fsck checks B's image.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { BlockBackend } from "@virtio-ts/devices";
import { acquireGuestSlot } from "@virtio-ts/interop";
import { encodeV86Snapshot, type V86Snapshot } from "@virtio-ts/v86";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  type LinuxResult,
  type MigrationTargetReport,
  startLinux,
  writeMigration,
} from "../src/index.js";
import { assetsOrFail, checks, e2fsck, makeImage } from "./helpers/boot.js";

const SIZE = 16 << 20;
const READY = "K migrate-ready";
/** Both halves of the guest's script: one boot, one /run.sh, the move in the middle. */
const SCRIPT = [
  'echo "K rng-before $(head -c 32 /dev/hwrng | md5sum | cut -d" " -f1)"',
  "exec 3<>/dev/hvc0",
  "echo hvc-before >&3",
  "mke2fs -q /dev/vda 8192 >/dev/null && mount -t ext2 /dev/vda /mnt && echo K mkfs ok",
  "head -c 262144 /dev/urandom > /mnt/random.bin",
  "seq 1 20000 > /mnt/seq.txt",
  "mkdir /mnt/d; for i in 1 2 3 4 5 6; do head -c 40000 /dev/urandom > /mnt/d/f$i; done",
  "sync",
  "sum() { cat /mnt/random.bin /mnt/seq.txt /mnt/d/* | md5sum | cut -d' ' -f1; }",
  'echo "K md5-before $(sum)"',
  "ping 10.0.2.2 > /tmp/ping.log 2>&1 &",
  "PING=$!",
  // Disk traffic across the move: two streams of direct reads over the whole device, and a
  // file copied over and over.
  "( while [ ! -e /tmp/stop ]; do dd if=/dev/vda of=/dev/null bs=64k iflag=direct 2>/dev/null; done ) &",
  "IO1=$!",
  "( while [ ! -e /tmp/stop ]; do dd if=/dev/vda of=/dev/null bs=64k skip=128 iflag=direct 2>/dev/null; cp /mnt/random.bin /mnt/copy.bin; done ) &",
  "IO2=$!",
  "sleep 2",
  `echo "${READY}"`,
  // Blocks here until the destination's host types a line.
  "read -r go <&3",
  'echo "K after-move $go"',
  "echo hvc-after >&3",
  'echo "K rng-after $(head -c 32 /dev/hwrng | md5sum | cut -d" " -f1)"',
  "sleep 4",
  "touch /tmp/stop; wait $IO1 $IO2",
  "kill -INT $PING; wait $PING",
  'echo "K md5-cached $(sum)"',
  "sync; echo 3 > /proc/sys/vm/drop_caches",
  'echo "K md5-disk $(sum)"',
  'echo "K copy $(cmp /mnt/random.bin /mnt/copy.bin >/dev/null 2>&1 && echo same || echo differs)"',
  "echo \"K ping-replies $(grep -c 'bytes from 10.0.2.2' /tmp/ping.log)\"",
  'echo "K ping-summary $(grep received /tmp/ping.log)"',
  "umount /mnt && echo K umount ok",
].join("\n");

const dir = mkdtempSync(join(tmpdir(), "linux-migrate-"));
const imageA = join(dir, "a.img");
const imageB = join(dir, "b.img");
const children: ChildProcess[] = [];

let a: LinuxResult;
const aHvc: string[] = [];
let b: MigrationTargetReport;
let snapshot: V86Snapshot;
let timing = { save: 0, encode: 0, send: 0 };
let kA: Map<string, string[]>;
let kB: Map<string, string[]>;

/**
 * The source's disk, 20 ms away (a network disk): each request stays in the back-end long
 * enough that the suspend finds some in flight — saved with the device, served again at the
 * destination, whose disk is local.
 */
function distant(disk: BlockBackend, ms = 20): BlockBackend {
  const later = () => new Promise<void>((r) => setTimeout(r, ms));
  return {
    capacity: disk.capacity,
    blockSize: disk.blockSize,
    readOnly: disk.readOnly,
    read: async (sector, iovecs) => {
      await later();
      await disk.read(sector, iovecs);
    },
    write: async (sector, iovecs) => {
      await later();
      await disk.write(sector, iovecs);
    },
    flush: () => disk.flush(),
    discard: (sector, count) => disk.discard(sector, count),
    writeZeroes: (sector, count, unmap) => disk.writeZeroes(sector, count, unmap),
  };
}

/** Start the destination; resolves once it listens, and gives its report later. */
function destination(socket: string): {
  listening: Promise<void>;
  report: Promise<MigrationTargetReport>;
} {
  const script = fileURLToPath(new URL("../dist/migrate-target.js", import.meta.url));
  const child = spawn(process.execPath, [script, socket, imageB], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  children.push(child);
  let out = "";
  let listening: () => void = () => {};
  let fail: (e: Error) => void = () => {};
  const l = new Promise<void>((resolve, reject) => {
    listening = resolve;
    fail = reject;
  });
  const report = new Promise<MigrationTargetReport>((resolve, reject) => {
    child.stdout!.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes("listening\n")) listening();
      const m = /^destination (\{.*\})$/m.exec(out);
      if (m) resolve(JSON.parse(m[1]!) as MigrationTargetReport);
    });
    child.once("exit", (code) => {
      const e = new Error(`the destination exited with ${code} before reporting`);
      fail(e);
      reject(e);
    });
  });
  return { listening: l, report };
}

beforeAll(async () => {
  assetsOrFail();
  // The destination runs the compiled tool: build it (incrementally) first.
  const tsc = fileURLToPath(new URL("../../../node_modules/typescript/bin/tsc", import.meta.url));
  execFileSync(process.execPath, [tsc, "-b", fileURLToPath(new URL("..", import.meta.url))], {
    stdio: "inherit",
  });
  makeImage(imageA, SIZE, []);
  makeImage(imageB, SIZE, []); // the destination opens its disk before the image arrives
  const release = await acquireGuestSlot();
  try {
    const socket = join(dir, "migrate.sock");
    const target = destination(socket);
    await target.listening;
    let migrated: Promise<void> | undefined;
    const guest = await startLinux({
      disk: imageA,
      wrapDisk: distant,
      command: SCRIPT,
      timeoutSeconds: 240,
      onConsoleLine: (line) => aHvc.push(line),
      onSerialLine: (line) => {
        if (!line.includes(READY) || migrated !== undefined) return;
        // Give the background ping and disk loop a moment, then move the guest.
        migrated = new Promise((r) => setTimeout(r, 1500)).then(async () => {
          const suspendedAt = Date.now();
          snapshot = await guest.migrate();
          const t1 = Date.now();
          const bytes = encodeV86Snapshot(snapshot);
          const t2 = Date.now();
          const conn = createConnection(socket);
          await new Promise<void>((r, j) => conn.once("connect", r).once("error", j));
          await writeMigration(conn, {
            meta: { suspendedAt, consoleInput: "go\n" },
            snapshot: bytes,
            disk: readFileSync(imageA),
          });
          timing = { save: t1 - suspendedAt, encode: t2 - t1, send: Date.now() - t2 };
        });
      },
    });
    a = await guest.result;
    await migrated;
    b = await target.report;
  } finally {
    release();
  }
  kA = checks(a.output);
  kB = checks(b.result.output);
  const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
  console.log(
    [
      "migration of the running Linux guest (v86 + virtio-ts blk, net, console, rng):",
      `  snapshot ${kib(b.bytes.snapshot)}: v86 ${kib(b.bytes.machine)} (CPU, RAM without zero pages, v86's devices)`,
      ...b.bytes.devices.map(
        (d, i) =>
          `  device ${["blk", "net", "console", "rng"][i]} (slot 0x${d.slot.toString(16)}): ${d.bytes} bytes, ${b.inFlight[i]} chains in flight`,
      ),
      `  disk image ${kib(b.bytes.disk)}`,
      `  ping: ${kB.get("ping-replies")?.[0]} replies in the guest's one ping process, ${a.peer.echoReplies} sent by A's peer, ${b.result.peer.echoReplies} by B's`,
      `  downtime ${b.downtimeMs} ms (suspend → resumed in the other process): save ${timing.save} ms, encode ${timing.encode} ms, send ${timing.send} ms, destination ${b.restoreMs} ms`,
    ].join("\n"),
  );
}, 420_000);

afterAll(() => {
  for (const c of children) c.kill();
  rmSync(dir, { recursive: true, force: true });
});

describe("a running Linux guest moved between two processes with its virtio-ts devices", () => {
  it("runs its first half in process A and ends there migrated, with rng, hvc0 and ping working", () => {
    expect(a.end, a.lastLines.join("\n")).toBe("migrated");
    expect(kA.get("mkfs")).toEqual(["ok"]);
    expect(kA.get("rng-before")?.[0]).toMatch(/^[0-9a-f]{32}$/);
    expect(aHvc).toContain("hvc-before");
    expect(a.peer.echoReplies).toBeGreaterThan(0);
    expect(kA.has("after-move")).toBe(false);
  });

  it("moves v86's state and the four device states, each versioned and checksummed, in one blob, with blk requests in flight", () => {
    // Two streams of direct reads on a 20 ms disk: the suspend finds the block device busy.
    expect(b.inFlight[0]).toBeGreaterThan(0);
    expect(b.bytes.devices.map((d) => d.deviceId)).toEqual([2, 1, 3, 4]);
    expect(b.bytes.snapshot).toBe(
      16 + b.bytes.devices.reduce((n, d) => n + 8 + d.bytes, 0) + b.bytes.machine + 4,
    );
    expect(b.bytes.disk).toBe(SIZE);
    expect(b.downtimeMs).toBeGreaterThan(0);
  });

  it("resumes in process B without a reboot: the same script goes on and exits 0", () => {
    expect(b.result.end, b.result.lastLines.join("\n")).toBe("exit");
    expect(b.result.exitCode).toBe(0);
    expect(b.result.bootMs).toBeUndefined();
    expect(kB.get("after-move")).toEqual(["go"]);
    expect(b.result.output).not.toContain("Linux version");
  });

  it("keeps its files: the same md5 from the page cache and, after drop_caches, from B's disk; writes after the move land", () => {
    const before = kA.get("md5-before")?.[0];
    expect(before).toMatch(/^[0-9a-f]{32}$/);
    expect(kB.get("md5-cached")).toEqual([before]);
    expect(kB.get("md5-disk")).toEqual([before]);
    expect(kB.get("copy")).toEqual(["same"]);
    expect(kB.get("umount")).toEqual(["ok"]);
  });

  it("leaves B's image a clean ext2 file system (e2fsck -fn)", () => {
    const fsck = e2fsck(imageB);
    expect(fsck.status, fsck.out).toBe(0);
  });

  it("keeps its ping: the same ping process gets replies only B's peer can have sent", () => {
    expect(b.result.peer.echoReplies).toBeGreaterThan(0);
    const replies = Number(kB.get("ping-replies")?.[0]);
    expect(replies).toBeGreaterThan(a.peer.echoReplies);
    expect(replies).toBeLessThanOrEqual(a.peer.echoReplies + b.result.peer.echoReplies);
    expect(kB.get("ping-summary")?.[0]).toMatch(/packets transmitted, \d+ packets received/);
  });

  it("keeps hvc0 both ways and hwrng working after the move", () => {
    expect(b.console).toContain("hvc-after");
    const after = kB.get("rng-after")?.[0];
    expect(after).toMatch(/^[0-9a-f]{32}$/);
    expect(after).not.toBe(kA.get("rng-before")?.[0]);
    const rng = b.result.devices.find((d) => d.name === "rng")!;
    expect(rng.requests).toBeGreaterThan(0);
  });
});
