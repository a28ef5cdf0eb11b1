// guest-dd bench: a real Linux guest (QEMU 7.2 under TCG, BusyBox dd) streams its virtio-blk
// disk with O_DIRECT, 1 MiB requests:
//   read:  dd if=/dev/vda of=/dev/null bs=1M count=N iflag=direct
//   write: dd if=/dev/zero of=/dev/vda bs=1M count=N oflag=direct conv=fsync
// with the disk served over vhost-user-blk by
//   (a) our VhostUserBlkBackend (BlkDevice over FileDisk, in this Node process), and
//   (b) qemu-storage-daemon exporting a copy of the same image (the baseline),
// in the same run, one guest at a time. dd's record counts and the elapsed time are read from the
// serial log with the guest's /proc/uptime around each pass (BusyBox dd prints no rate); the
// figure is MB/s (10^6 B/s) and the ratio ours / qsd.
// The accelerator is the interop harness's proven choice (KVM only when a boot probe shows Linux
// really runs under it here; INTEROP_ACCEL forces one): under TCG both sides share the same slow
// emulated guest CPU, so the ratio says more than the absolute figures.
import { type ChildProcess, spawn } from "node:child_process";
import { randomFillSync } from "node:crypto";
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { FileDisk } from "@virtio-ts/backend-disk/node";
import { BlkDevice } from "@virtio-ts/devices";
import { chooseAccelerator, type GuestResult, requireTools, runGuest } from "@virtio-ts/interop";
import { VhostUserBlkBackend } from "@virtio-ts/vhost-user";

/** One dd pass as the guest reported it. */
interface DdPass {
  readonly bytes: number;
  readonly seconds: number;
}

/** What one guest boot measured. */
interface GuestRun {
  readonly reads: DdPass[];
  readonly writes: DdPass[];
  readonly bootMs: number;
}

/** Hang guard per boot (a stopped ring leaves the guest waiting forever), not a measurement. */
const GUEST_TIMEOUT_MS = 300_000;

const mbps = (p: DdPass): number => p.bytes / p.seconds / 1e6;

function median(passes: DdPass[]): DdPass | undefined {
  const s = [...passes].sort((a, b) => mbps(a) - mbps(b));
  return s[Math.floor(s.length / 2)];
}

/**
 * The guest's script: `reps` read passes, then `reps` write passes. BusyBox dd (1.35, Debian
 * build) prints only its record counts, no rate, so each pass is timed with the guest's
 * `/proc/uptime` (10 ms resolution) around it and reported on one labelled line:
 * `@@DD <read|write> <i> <t0> <t1> <full>+<partial> records out`.
 */
function script(mib: number, reps: number): string {
  const pass = (kind: string, i: number, dd: string) =>
    `t0=$(cut -d" " -f1 /proc/uptime); r=$(${dd} 2>&1 | tail -n 1); ` +
    `t1=$(cut -d" " -f1 /proc/uptime); echo "@@DD ${kind} ${i} $t0 $t1 $r"`;
  const lines: string[] = [];
  for (let i = 0; i < reps; i++) {
    lines.push(pass("read", i, `dd if=/dev/vda of=/dev/null bs=1M count=${mib} iflag=direct`));
  }
  for (let i = 0; i < reps; i++) {
    lines.push(
      pass("write", i, `dd if=/dev/zero of=/dev/vda bs=1M count=${mib} oflag=direct conv=fsync`),
    );
  }
  return `${lines.join("\n")}\n`;
}

/** Parse the labelled passes; throws with the log unless every pass moved all `mib` MiB. */
function parse(result: GuestResult, label: string, mib: number, reps: number): GuestRun {
  const reads: DdPass[] = [];
  const writes: DdPass[] = [];
  const re = /^@@DD (read|write) \d+ ([\d.]+) ([\d.]+) (\d+)\+(\d+) records out$/gm;
  for (const m of result.output.matchAll(re)) {
    if (Number(m[4]) !== mib || Number(m[5]) !== 0) continue; // short transfer: not counted
    const seconds = Number(m[3]) - Number(m[2]);
    (m[1] === "read" ? reads : writes).push({ bytes: mib * 2 ** 20, seconds });
  }
  if (result.guestExit !== 0 || reads.length !== reps || writes.length !== reps) {
    throw new Error(
      `guest-dd (${label}): expected ${reps} complete read and ${reps} write passes, got ${reads.length}/${writes.length} ` +
        `(guest exit ${result.guestExit}, timed out ${result.timedOut})\n${result.log}\n${result.stderr}`,
    );
  }
  return { reads, writes, bootMs: result.durationMs };
}

/**
 * Both back-ends get rings of 256 (QEMU's vhost-user-blk default is 128). BlkDevice offers
 * seg_max = 254 (its own maximum ring size minus header and status) before it knows the ring
 * size QEMU picks; Linux trusts seg_max, so with 128-entry rings a 1 MiB request becomes an
 * indirect chain of 258 descriptors, which the device refuses as longer than the queue
 * (§2.7.5.2) and QEMU stops the ring ("vhost vring error"). 256 keeps every chain in bounds.
 */
const QUEUE_SIZE = 256;

function guestArgs(sock: string): string[] {
  return [
    "-chardev",
    `socket,id=c0,path=${sock}`,
    "-device",
    `vhost-user-blk-pci,chardev=c0,queue-size=${QUEUE_SIZE}`,
  ];
}

async function ours(img: string, sock: string, mib: number, reps: number): Promise<GuestRun> {
  const disk = await FileDisk.open(img);
  const device = new BlkDevice(disk);
  const backend = new VhostUserBlkBackend(device, sock);
  await backend.listening;
  try {
    const r = await runGuest({
      machine: "pc",
      modules: ["virtio_pci", "virtio_blk"],
      sharedMemory: true,
      args: guestArgs(sock),
      script: script(mib, reps),
      timeoutMs: GUEST_TIMEOUT_MS,
    });
    return parse(r, "VhostUserBlkBackend", mib, reps);
  } finally {
    await backend.close();
    await device.whenIdle();
    await disk.close();
  }
}

async function waitForSocket(path: string, qsd: ChildProcess, err: () => string): Promise<void> {
  const deadline = performance.now() + 10_000;
  while (!existsSync(path)) {
    if (qsd.exitCode !== null || performance.now() > deadline) {
      throw new Error(`qemu-storage-daemon did not create ${path}: ${err()}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function qsd(img: string, sock: string, mib: number, reps: number): Promise<GuestRun> {
  const child = spawn(
    "qemu-storage-daemon",
    [
      "--blockdev",
      `driver=file,node-name=file0,filename=${img}`,
      "--blockdev",
      "driver=raw,node-name=disk0,file=file0",
      "--export",
      `type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=${sock},writable=on`,
    ],
    { stdio: ["ignore", "ignore", "pipe"] },
  );
  let stderr = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (c: string) => {
    stderr += c;
  });
  const exited = new Promise<void>((resolve) => child.once("close", () => resolve()));
  try {
    await waitForSocket(sock, child, () => stderr);
    const r = await runGuest({
      machine: "pc",
      modules: ["virtio_pci", "virtio_blk"],
      sharedMemory: true,
      args: guestArgs(sock),
      script: script(mib, reps),
      timeoutMs: GUEST_TIMEOUT_MS,
    });
    return parse(r, "qemu-storage-daemon", mib, reps);
  } finally {
    child.kill("SIGTERM");
    await exited;
  }
}

/**
 * The guest-dd bench (see the top of this file): sequential O_DIRECT dd in a Linux guest on our
 * vhost-user-blk back-end vs qemu-storage-daemon, same image size, same run.
 * @param quick - fewer MiB and one pass each instead of three
 */
export async function guestDdBench(quick: boolean): Promise<void> {
  requireTools(["qemu-system-x86_64", "qemu-storage-daemon"]);
  const mib = quick ? 64 : 512;
  const reps = quick ? 1 : 3;
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-guest-dd-"));
  try {
    const data = new Uint8Array((mib + 16) << 20);
    randomFillSync(data);
    const imgA = join(dir, "ours.img");
    const imgB = join(dir, "qsd.img");
    writeFileSync(imgA, data);
    copyFileSync(imgA, imgB);
    const accel = await chooseAccelerator();
    console.log(`guest-dd: accelerator ${accel.accel} (${accel.reason})`);
    console.log(
      `guest-dd: Linux guest (QEMU ${accel.accel === "kvm" ? "KVM" : "TCG"}, pc, vhost-user-blk-pci, queue-size ${QUEUE_SIZE}) dd bs=1M count=${mib} with O_DIRECT, ` +
        `read then write (conv=fsync), median of ${reps} pass(es) per boot; MB/s = 10^6 B/s, timed with the guest's /proc/uptime. ` +
        (accel.accel === "tcg"
          ? "TCG emulates the guest CPU: absolute figures are bound by it, compare the ratio."
          : "Compare the ratio."),
    );
    const a = await ours(imgA, join(dir, "ours.sock"), mib, reps);
    const b = await qsd(imgB, join(dir, "qsd.sock"), mib, reps);
    const cell = (p: DdPass | undefined) => (p === undefined ? "n/a" : mbps(p).toFixed(1));
    const ratio = (x: DdPass | undefined, y: DdPass | undefined) =>
      x === undefined || y === undefined ? "n/a" : (mbps(x) / mbps(y)).toFixed(2);
    const row = (c: string[]) =>
      c.map((s, i) => (i === 0 ? s.padEnd(34) : s.padStart(12))).join("");
    console.log(row(["", "read MB/s", "write MB/s", "boot s"]));
    for (const [name, r] of [
      ["VhostUserBlkBackend (virtio-ts)", a],
      ["qemu-storage-daemon (baseline)", b],
    ] as const) {
      console.log(
        row([name, cell(median(r.reads)), cell(median(r.writes)), (r.bootMs / 1000).toFixed(1)]),
      );
    }
    console.log(
      row([
        "ratio virtio-ts / qsd",
        ratio(median(a.reads), median(b.reads)),
        ratio(median(a.writes), median(b.writes)),
        "",
      ]),
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
