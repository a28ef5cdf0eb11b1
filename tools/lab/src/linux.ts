// `pnpm lab linux`: full emulation against virtio with a real Linux driver. The Debian i686
// guest of `pnpm linux` boots in v86 (twice: v86 has one NIC of its own at a time) with v86's
// own IDE disk and NIC next to virtio-ts's virtio-blk and virtio-net on virtio-pci, all over
// the same disk bytes and the same switch, and runs the same workload on each device in turn.
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  LAB_UDP_PORT,
  LAB_VIRTIO_TS_MAC,
  type LabDeviceName,
  type LabMarker,
  startLabGuest,
} from "@virtio-ts/linux";
import * as echarts from "echarts";

/** One measured row: a device, a workload, the figures (medians over the rounds). */
export interface LinuxRow {
  /** Table: "disk" or "net". */
  readonly table: "disk" | "net";
  /** Workload: rand4k, seq1m, ping, udp. */
  readonly workload: string;
  /** Device label. */
  readonly device: string;
  /** Device class: full emulation or paravirtual. */
  readonly kind: "full emulation" | "virtio (v86)" | "virtio (virtio-ts)";
  /** Requests (disk reads, ping exchanges, UDP frames) of the median round. */
  readonly requests: number;
  /** Requests per second. */
  readonly perSecond: number;
  /** MB/s (10^6 bytes) of payload read or frames sent; undefined for ping. */
  readonly mbPerSecond: number | undefined;
  /** Mean ping round-trip time (ms), for ping rows. */
  readonly rttMs: number | undefined;
  /** The device's traps per request. */
  readonly trapsPerRequest: number;
  /** Traps per second. */
  readonly trapsPerSecond: number;
  /** Interrupts per request. */
  readonly irqsPerRequest: number;
  /** Interrupts per second. */
  readonly irqsPerSecond: number;
  /** Share of guest CPU time not idle (from /proc/stat jiffies), 0–1; undefined if absent. */
  readonly guestBusy: number | undefined;
  /** Rounds measured. */
  readonly rounds: number;
}

/** Options of {@link runLinuxLab}. */
export interface LinuxLabOptions {
  /** Rounds per row (default 3; the median is reported). */
  readonly rounds?: number;
  /** Seconds per disk row and per UDP row in each round (default 3). */
  readonly seconds?: number;
  /** Folder for the JSON file and the SVG charts (default `lab-results/linux`). */
  readonly outDir?: string;
  /** Lines go here (default console.log). */
  readonly log?: (line: string) => void;
  /** Progress lines go here (default: rewritten in place on stderr). */
  readonly progress?: (line: string) => void;
}

const DISK_MIB = 64;
const SEED = 7;

/** Build the in-guest I/O tool (`c/lab-io.c`) for i386 with the host's gcc. */
export function buildLabIo(dir: string): Uint8Array {
  const src = fileURLToPath(new URL("../c/lab-io.c", import.meta.url));
  const out = join(dir, "lab-io");
  try {
    execFileSync(
      "gcc",
      [
        "-m32",
        "-static",
        "-nostdlib",
        "-ffreestanding",
        "-fno-pic",
        "-no-pie",
        "-fno-stack-protector",
        "-O2",
        "-o",
        out,
        src,
      ],
      { stdio: "pipe" },
    );
  } catch (e) {
    const err = e as { stderr?: Buffer };
    throw new Error(
      `gcc -m32 could not build ${src} (install gcc: apt-get install gcc): ${err.stderr?.toString() ?? e}`,
    );
  }
  return readFileSync(out);
}

/** The guest script: disk rows (boot with the NE2000 only), then the network rows. */
function guestScript(withDisk: boolean, rounds: number, seconds: number): string {
  const disk = withDisk
    ? `i=0; while [ ! -e /dev/sda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
# Round 0 warms v86's JIT up on every path (it compiles hot guest code as it goes: the first
# seconds of a path run several times slower); it is not reported.
for r in $(seq 0 ${rounds}); do
  s=${seconds}; [ $r = 0 ] && s=3
  /lab-io rand /dev/sda 4096 1000000 $s ${DISK_MIB} ide:rand4k:$r ${SEED}
  /lab-io rand /dev/vda 4096 1000000 $s ${DISK_MIB} blk:rand4k:$r ${SEED}
  /lab-io rand /dev/vdb 4096 1000000 $s ${DISK_MIB} blkasync:rand4k:$r ${SEED}
  /lab-io seq /dev/sda 1048576 1000000 $s ${DISK_MIB} ide:seq1m:$r ${SEED}
  /lab-io seq /dev/vda 1048576 1000000 $s ${DISK_MIB} blk:seq1m:$r ${SEED}
  /lab-io seq /dev/vdb 1048576 1000000 $s ${DISK_MIB} blkasync:seq1m:$r ${SEED}
done
`
    : "";
  return `${disk}ours=""; theirs=""
for i in /sys/class/net/eth*; do
  n=\${i##*/}
  if [ "$(cat $i/address)" = "${LAB_VIRTIO_TS_MAC}" ]; then ours=$n; else theirs=$n; echo "lab-mac $(cat $i/address)"; fi
done
cpu() { head -1 /proc/stat | sed 's/^cpu */cpu /'; }
net_row() {
  for j in $ours $theirs; do ip addr flush dev $j; ip link set $j down; done
  ip addr add 10.0.2.15/24 dev $2 && ip link set $2 up
  ping -c 2 -W 5 10.0.2.2 >/dev/null 2>&1
  echo "@@LAB begin $1:ping:$3 $(cpu)@@"
  rtt=$(ping -A -c 100 -q 10.0.2.2 2>&1 | sed -n 's/.*= [0-9.]*\\/\\([0-9.]*\\)\\/.*/\\1/p')
  echo "@@LAB end $1:ping:$3 rtt=$rtt $(cpu)@@"
  s=${seconds}; [ $3 = 0 ] && s=5
  /lab-io udp 10.0.2.2 ${LAB_UDP_PORT} 1472 10000000 $s $1:udp:$3
  sleep 1
  echo "@@LAB drain $1:udp:$3@@"
}
for r in $(seq 0 ${rounds}); do
  net_row v86nic $theirs $r
  net_row tsnet $ours $r
done
`;
}

interface Phase {
  begin?: LabMarker;
  end?: LabMarker;
  drain?: LabMarker;
  fields: Record<string, string>;
}

function cpuBusy(beginText: string, endText: string): number | undefined {
  const f = (t: string): number[] | undefined => {
    const m = / cpu ([\d ]+)/.exec(t);
    return m ? m[1]!.trim().split(/\s+/).map(Number) : undefined;
  };
  const a = f(beginText);
  const b = f(endText);
  if (a === undefined || b === undefined || a.length < 5 || b.length < 5) return undefined;
  const d = b.map((v, i) => v - (a[i] ?? 0));
  const total = d.reduce((x, y) => x + y, 0);
  const idle = d[3]! + d[4]!;
  return total > 0 ? (total - idle) / total : undefined;
}

function median<T>(xs: T[], key: (x: T) => number): T {
  const s = [...xs].sort((a, b) => key(a) - key(b));
  return s[Math.floor(s.length / 2)]!;
}

const LABELS: Record<string, { device: string; kind: LinuxRow["kind"]; dev: LabDeviceName }> = {
  ide: { device: "IDE (v86's own) /dev/sda", kind: "full emulation", dev: "ide" },
  blk: {
    device: "virtio-blk (virtio-ts) /dev/vda",
    kind: "virtio (virtio-ts)",
    dev: "virtio-ts-blk",
  },
  blkasync: {
    device: "virtio-blk, async back-end /dev/vdb",
    kind: "virtio (virtio-ts)",
    dev: "virtio-ts-blk-async",
  },
  ne2k: { device: "NE2000 (v86's own)", kind: "full emulation", dev: "ne2k" },
  v86virtio: { device: "virtio-net (v86's own)", kind: "virtio (v86)", dev: "v86-virtio-net" },
  tsnet: { device: "virtio-net (virtio-ts)", kind: "virtio (virtio-ts)", dev: "virtio-ts-net" },
};

/** Turn the phases of one boot into per-round measurements. */
function measurements(
  phases: Map<string, Phase>,
  nic: "ne2k" | "virtio",
): { key: string; row: Omit<LinuxRow, "rounds"> }[] {
  const out: { key: string; row: Omit<LinuxRow, "rounds"> }[] = [];
  for (const [tag, p] of phases) {
    const [who0, workload, round] = tag.split(":") as [string, string, string];
    if (round === "0") continue; // the JIT warm-up round
    const who = who0 === "v86nic" ? (nic === "ne2k" ? "ne2k" : "v86virtio") : who0;
    const label = LABELS[who];
    if (label === undefined || p.begin === undefined || p.end === undefined) continue;
    const stop = workload === "udp" ? p.drain : p.end;
    if (stop === undefined) continue;
    const d0 = p.begin.devices[label.dev];
    const d1 = stop.devices[label.dev];
    const traps = d1.traps - d0.traps;
    const irqs = d1.interrupts - d0.interrupts;
    let requests: number;
    let seconds: number;
    let bytes: number | undefined;
    let rttMs: number | undefined;
    if (workload === "udp") {
      requests = stop.peer.udpFrames - p.begin.peer.udpFrames;
      bytes = stop.peer.udpBytes - p.begin.peer.udpBytes;
      seconds = (stop.peer.lastAt - p.begin.at) / 1000;
    } else if (workload === "ping") {
      requests = p.end.peer.echoReplies - p.begin.peer.echoReplies;
      seconds = (p.end.at - p.begin.at) / 1000;
      rttMs = Number(p.fields.rtt);
    } else {
      requests = Number(p.fields.requests);
      bytes = Number(p.fields.bytes);
      seconds = Number(p.fields.ns) / 1e9;
    }
    if (!(requests > 0) || !(seconds > 0)) continue;
    out.push({
      key: `${label.device}|${workload}`,
      row: {
        table: workload === "rand4k" || workload === "seq1m" ? "disk" : "net",
        workload,
        device: label.device,
        kind: label.kind,
        requests,
        perSecond: requests / seconds,
        mbPerSecond: bytes === undefined ? undefined : bytes / 1e6 / seconds,
        rttMs,
        trapsPerRequest: traps / requests,
        trapsPerSecond: traps / seconds,
        irqsPerRequest: irqs / requests,
        irqsPerSecond: irqs / seconds,
        guestBusy: cpuBusy(p.begin.text, p.end.text),
      },
    });
  }
  return out;
}

const WORKLOADS: Record<string, string> = {
  rand4k: "4 KiB random reads (O_DIRECT, QD1)",
  seq1m: "1 MiB sequential reads (O_DIRECT, QD1)",
  ping: "ping -A, 100 round trips",
  udp: "bulk UDP from the guest, 1472-byte datagrams",
};

/** The table's lines. */
export function formatLinuxTables(rows: readonly LinuxRow[]): string[] {
  const out: string[] = [];
  const num = (v: number | undefined, d: number): string =>
    v === undefined || !Number.isFinite(v)
      ? "-"
      : v.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
  for (const w of ["rand4k", "seq1m", "ping", "udp"]) {
    const rs = rows.filter((r) => r.workload === w);
    if (rs.length === 0) continue;
    out.push("");
    const per = w === "ping" ? "ping" : w === "udp" ? "frame" : "req";
    const head = [
      w === "ping" ? "RTT ms" : w === "udp" ? "frames/s" : "req/s",
      w === "ping" ? "pings/s" : "MB/s",
      `traps/${per}`,
      "traps/s",
      `irqs/${per}`,
      "irqs/s",
      "guest busy",
    ];
    out.push(`  ${WORKLOADS[w]}`.padEnd(40) + head.map((h) => h.padStart(11)).join(""));
    for (const r of rs) {
      const cells = [
        w === "ping" ? num(r.rttMs, 2) : num(r.perSecond, 0),
        w === "ping" ? num(r.perSecond, 0) : num(r.mbPerSecond, 2),
        num(r.trapsPerRequest, 1),
        num(r.trapsPerSecond, 0),
        num(r.irqsPerRequest, 2),
        num(r.irqsPerSecond, 0),
        r.guestBusy === undefined ? "-" : `${Math.round(r.guestBusy * 100)} %`,
      ];
      out.push(`    ${r.device}`.padEnd(40) + cells.map((c) => c.padStart(11)).join(""));
    }
  }
  return out;
}

/** What ours does against the others, in sentences. */
export function compareLinuxRows(rows: readonly LinuxRow[]): string[] {
  const out: string[] = [];
  const x = (a: number, b: number) => {
    const r = a / b;
    return `${r >= 0.1 ? r.toFixed(2) : r.toPrecision(2)}×`;
  };
  const row = (w: string, device: string) =>
    rows.find((r) => r.workload === w && r.device.startsWith(device));
  for (const w of ["rand4k", "seq1m"]) {
    const ide = row(w, "IDE");
    const blk = row(w, "virtio-blk (virtio-ts)");
    const slow = row(w, "virtio-blk, async");
    if (ide && blk) {
      out.push(
        `  ${w}: virtio-ts virtio-blk does ${x(blk.perSecond, ide.perSecond)} IDE's requests/s with ` +
          `${x(blk.trapsPerRequest, ide.trapsPerRequest)} its traps per request (${blk.trapsPerRequest.toFixed(1)} vs ${ide.trapsPerRequest.toFixed(1)})` +
          (slow ? `; with an asynchronous back-end ${x(slow.perSecond, ide.perSecond)} IDE's` : ""),
      );
    }
  }
  for (const w of ["ping", "udp"]) {
    const ts = row(w, "virtio-net (virtio-ts)");
    if (ts === undefined) continue;
    const metric = w === "ping" ? "RTT" : "frames/s";
    const val = (o: LinuxRow) => (w === "ping" ? (o.rttMs ?? Number.NaN) : o.perSecond);
    const parts: string[] = [];
    for (const other of ["NE2000", "virtio-net (v86"]) {
      const o = row(w, other);
      if (o) {
        parts.push(
          `${other === "NE2000" ? "NE2000" : "v86's virtio-net"}: ${metric} ${x(val(ts), val(o))}, ` +
            `traps/${w === "ping" ? "ping" : "frame"} ${x(ts.trapsPerRequest, o.trapsPerRequest)}, ` +
            `interrupts ${x(ts.irqsPerRequest, o.irqsPerRequest)}`,
        );
      }
    }
    out.push(`  ${w}: virtio-ts virtio-net against ${parts.join("; against ")}`);
  }
  return out;
}

/** One SVG bar chart per metric (ECharts' server-side SVG renderer). */
export function linuxCharts(rows: readonly LinuxRow[]): { name: string; svg: string }[] {
  const metrics: { key: keyof LinuxRow; name: string; title: string }[] = [
    {
      key: "perSecond",
      name: "requests-per-second",
      title: "requests/s (disk reads, pings, UDP frames)",
    },
    { key: "mbPerSecond", name: "mb-per-second", title: "MB/s" },
    { key: "rttMs", name: "ping-rtt-ms", title: "ping RTT (ms, lower is better)" },
    { key: "trapsPerRequest", name: "traps-per-request", title: "traps per request" },
    { key: "trapsPerSecond", name: "traps-per-second", title: "traps per second" },
    { key: "irqsPerRequest", name: "irqs-per-request", title: "interrupts per request" },
    { key: "irqsPerSecond", name: "irqs-per-second", title: "interrupts per second" },
    { key: "guestBusy", name: "guest-busy", title: "guest CPU busy (share of /proc/stat time)" },
  ];
  const out: { name: string; svg: string }[] = [];
  for (const m of metrics) {
    const rs = rows.filter((r) => typeof r[m.key] === "number" && Number.isFinite(r[m.key]));
    if (rs.length === 0) continue;
    const labels = rs.map((r) => `${r.workload} · ${r.device}`);
    const colors: Record<LinuxRow["kind"], string> = {
      "full emulation": "#c0504d",
      "virtio (v86)": "#9bbb59",
      "virtio (virtio-ts)": "#4f81bd",
    };
    const height = 80 + rs.length * 28;
    const chart = echarts.init(null, null, { renderer: "svg", ssr: true, width: 860, height });
    chart.setOption({
      animation: false,
      title: { text: `pnpm lab linux: ${m.title}`, left: "center", textStyle: { fontSize: 14 } },
      grid: { left: 300, right: 90, top: 40, bottom: 20 },
      xAxis: { type: "value" },
      yAxis: { type: "category", data: labels, inverse: true, axisLabel: { fontSize: 11 } },
      series: [
        {
          type: "bar",
          data: rs.map((r) => ({
            value: r[m.key] as number,
            itemStyle: { color: colors[r.kind] },
          })),
          label: {
            show: true,
            position: "right",
            formatter: (p: { value: number }) =>
              p.value >= 100 ? Math.round(p.value).toLocaleString("en-US") : p.value.toFixed(2),
          },
        },
      ],
    });
    out.push({ name: m.name, svg: chart.renderToSVGString() });
    chart.dispose();
  }
  return out;
}

/**
 * Run the whole comparison: two boots (v86's NE2000, then v86's virtio-net), the disk rows in
 * the first, the network rows in both; print the tables, write the JSON file and the charts.
 * @returns the rows
 */
export async function runLinuxLab(options: LinuxLabOptions = {}): Promise<LinuxRow[]> {
  const log = options.log ?? console.log;
  const progress =
    options.progress ??
    ((line: string) => {
      if (process.stderr.isTTY) process.stderr.write(`\r\x1b[K${line}`);
      else process.stderr.write(`${line}\n`);
    });
  const rounds = options.rounds ?? 3;
  const seconds = options.seconds ?? 3;
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 20) {
    throw new RangeError(`options.rounds (--rounds) must be an integer in [1, 20], got ${rounds}`);
  }
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > 60) {
    throw new RangeError(
      `options.seconds (--seconds) must be an integer in [1, 60], got ${seconds}`,
    );
  }
  const outDir = resolve(options.outDir ?? join("lab-results", "linux"));
  const work = mkdtempSync(join(tmpdir(), "virtio-ts-lab-linux-"));
  const started = new Date();
  const load0 = loadavg()[0]!;
  try {
    const labIo = buildLabIo(work);
    // The same bytes behind /dev/sda and /dev/vda: every 4 KiB block starts with its number.
    const image = new Uint8Array(DISK_MIB << 20);
    const dv = new DataView(image.buffer);
    for (let b = 0; b < image.length / 4096; b++) {
      dv.setUint32(b * 4096, b, true);
      for (let i = 4; i < 4096; i += 16) image[b * 4096 + i] = (b * 131 + i) & 0xff;
    }
    log(
      `virtio-lab linux: Debian i686 (Linux 6.1) in v86 0.5.462, in Node ${process.versions.node}; ` +
        `${started.toISOString().slice(0, 16).replace("T", " ")}, ${cpus().length} × ${cpus()[0]?.model.trim() ?? "?"}, ` +
        `load ${load0.toFixed(2)}; ${rounds} rounds of ${seconds} s per row, medians`,
    );
    log(
      "  traps = the device's I/O-port handler invocations (v86's port dispatcher, wrapped); " +
        "irqs = its interrupt line's assertions; guest busy = non-idle share of /proc/stat",
    );
    const all: { key: string; row: Omit<LinuxRow, "rounds"> }[] = [];
    const loads: number[] = [load0];
    for (const nic of ["ne2k", "virtio"] as const) {
      const phases = new Map<string, Phase>();
      let booted = false;
      const t0 = performance.now();
      const r = await startLabGuest({
        image,
        nic,
        modules: nic === "ne2k" ? ["ata_piix", "sd_mod", "ne2k-pci"] : ["ata_piix", "sd_mod"],
        files: [{ kind: "file", path: "/lab-io", data: labIo, mode: 0o755 }],
        command: guestScript(nic === "ne2k", rounds, seconds),
        timeoutSeconds: 540,
        onLine: (line) => {
          if (!booted && line.includes("@@VIRTIO-TS-READY@@")) booted = true;
          if (line.startsWith("lab: ")) log(`  guest: ${line}`);
        },
        onMarker: (m) => {
          const [what, tag, ...rest] = m.text.split(" ");
          if (tag === undefined) return;
          const p = phases.get(tag) ?? { fields: {} };
          phases.set(tag, p);
          if (what === "begin") p.begin = m;
          else if (what === "end") p.end = m;
          else if (what === "drain") p.drain = m;
          for (const kv of rest) {
            const eq = kv.indexOf("=");
            if (eq > 0) p.fields[kv.slice(0, eq)] = kv.slice(eq + 1);
          }
          if (what === "begin") {
            progress(
              `  [${((performance.now() - t0) / 1000).toFixed(0)} s] boot ${nic === "ne2k" ? "1/2 (NE2000)" : "2/2 (v86 virtio-net)"}: ${tag}`,
            );
          }
        },
      });
      if (process.stderr.isTTY && options.progress === undefined) process.stderr.write("\n");
      loads.push(loadavg()[0]!);
      if (r.end !== "exit" || r.exitCode !== 0) {
        throw new Error(
          `the ${nic} boot ended with ${r.end} (status ${r.exitCode}); last lines:\n${r.lastLines.join("\n")}`,
        );
      }
      log(
        `  boot ${nic === "ne2k" ? "1 (NE2000)" : "2 (v86 virtio-net)"}: ${((r.bootMs ?? 0) / 1000).toFixed(1)} s to the shell; v86 NIC MAC ${r.v86Mac ?? "?"}`,
      );
      all.push(...measurements(phases, nic));
    }
    const keys = [...new Set(all.map((m) => m.key))];
    const rows: LinuxRow[] = keys.map((k) => {
      const rs = all.filter((m) => m.key === k).map((m) => m.row);
      const med = median(rs, (r) => (r.workload === "ping" ? (r.rttMs ?? 0) : r.perSecond));
      return { ...med, rounds: rs.length };
    });
    const order = ["rand4k", "seq1m", "ping", "udp"];
    const kindOrder = ["full emulation", "virtio (v86)", "virtio (virtio-ts)"];
    rows.sort(
      (a, b) =>
        order.indexOf(a.workload) - order.indexOf(b.workload) ||
        kindOrder.indexOf(a.kind) - kindOrder.indexOf(b.kind),
    );
    for (const line of formatLinuxTables(rows)) log(line);
    log("");
    for (const line of compareLinuxRows(rows)) log(line);
    mkdirSync(outDir, { recursive: true });
    const json = join(outDir, "lab-linux.json");
    writeFileSync(
      json,
      `${JSON.stringify(
        {
          date: started.toISOString(),
          machine: `${cpus().length} × ${cpus()[0]?.model.trim() ?? "?"}`,
          node: process.versions.node,
          loadAverages: loads,
          rounds,
          seconds,
          rows,
        },
        null,
        2,
      )}\n`,
    );
    for (const c of linuxCharts(rows)) writeFileSync(join(outDir, `${c.name}.svg`), c.svg);
    log("");
    log(`  load average during the run: ${loads.map((l) => l.toFixed(2)).join(" → ")}`);
    log(`  wrote ${json} and one SVG chart per metric next to it`);
    return rows;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
