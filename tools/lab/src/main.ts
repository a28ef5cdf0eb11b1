#!/usr/bin/env node
// virtio-lab: the same 4 KiB random-read workload on the same disk image in four modes of I/O
// virtualization, measured in one run, then pass-through's refusals and a migration.
//
//   node tools/lab/dist/main.js [--quick] [--reps N] [--in-thread]
//
// By default the guest runs in its own vCPU worker and every trapped register access is a
// synchronous exit to this (the VMM) thread (vmm.ts); --in-thread runs guest and VMM in one
// thread, where a trap is a function call.
import { cpus, loadavg } from "node:os";
import { MmioVersion } from "@virtio-ts/spec";
import { blockSequence, measure, perSecond, type Run } from "./measure.js";
import {
  ataRig,
  BLOCK,
  DISK_BYTES,
  makeImage,
  passthroughRig,
  type Rig,
  vhostRig,
  virtioRig,
} from "./rigs.js";
import { migrationScenario, passthroughRefusals } from "./scenarios.js";
import { LAB_MODES, runVcpuMode, type VcpuRun } from "./vmm.js";

/** Options of {@link runLab}. */
export interface LabOptions {
  /** Requests per run at depth 1 (depth 32 runs four times as many). Default 4000. */
  readonly requests?: number;
  /** Runs per mode and depth; the median is printed. Default 3. */
  readonly reps?: number;
  /** Where lines go. Default console.log. */
  readonly log?: (line: string) => void;
  /**
   * Run guest and VMM in one thread (a trap is a function call) instead of the guest in a vCPU
   * worker with every trap a synchronous exit to the VMM thread. Default false.
   */
  readonly inThread?: boolean;
  /** vCPU mode: time budget of each timed run in ms. Default 1500. */
  readonly budgetMs?: number;
}

const MODES: readonly ((image: SharedArrayBuffer) => Rig | Promise<Rig>)[] = [
  ataRig,
  (img) => virtioRig(img, MmioVersion.MODERN),
  (img) => virtioRig(img, MmioVersion.LEGACY),
  (img) => vhostRig(img),
  passthroughRig,
];
/** vCPU mode rows: the in-thread ones plus vhost with MSI-style interrupts (before pass-through). */
const VCPU_ROWS = LAB_MODES.length;
const BASELINE = 1; // index of "2 virtio-mmio v2" in MODES

function median(runs: Run[]): Run {
  const s = [...runs].sort((x, y) => perSecond(x) - perSecond(y));
  return s[Math.floor(s.length / 2)]!;
}

/**
 * Run the lab: every mode at queue depth 1 and 32, `reps` times each (modes interleaved), print
 * the medians with their ratio to mode 2 (v2) at the same depth, then the demonstrations.
 * @returns the median runs, by depth then mode
 */
export async function runLab(options: LabOptions = {}): Promise<Run[][]> {
  const log = options.log ?? console.log;
  const n1 = options.requests ?? 4000;
  const reps = options.reps ?? 3;
  const inThread = options.inThread === true;
  const image = makeImage();
  log(
    `virtio-lab: 4 KiB random reads, the same ${DISK_BYTES >> 20} MiB image (a MemoryDisk over one ` +
      `SharedArrayBuffer) in every mode; ${new Date().toISOString().slice(0, 10)}, ` +
      `${cpus().length} × ${cpus()[0]?.model.trim() ?? "?"}, Node ${process.versions.node}, ` +
      `load ${loadavg()[0]!.toFixed(2)}; median of ${reps}`,
  );
  log(
    inThread
      ? "  in-thread: guest and VMM share one thread, a trap is a function call"
      : "  vCPU worker: every trap is a synchronous exit to the VMM thread (Atomics, no sleeps); " +
          "interrupts are injected into the vCPU; vhost's kick and call bypass the VMM thread",
  );
  log(
    "  exits = trapped register accesses the VMM thread handles; irqs = guest interrupt handler runs; " +
      "ioeventfd = kicks that went straight to the vhost worker; VMM B = bytes the VMM thread's code copied",
  );
  const out: Run[][] = [];
  for (const depth of [1, 32]) {
    const seq = blockSequence(depth === 1 ? n1 : n1 * 4, DISK_BYTES / BLOCK, depth);
    const rows = inThread ? MODES.length : VCPU_ROWS;
    const runs: Run[][] = Array.from({ length: rows }, () => []);
    for (let r = 0; r < reps; r++) {
      for (let m = 0; m < rows; m++) {
        if (!inThread) {
          runs[m]!.push(
            await runVcpuMode(LAB_MODES[m]!, image, seq, depth, {
              budgetMs: options.budgetMs ?? 1500,
            }),
          );
          continue;
        }
        const rig = await MODES[m]!(image);
        try {
          runs[m]!.push(await measure(rig, seq, depth));
        } finally {
          await rig.close();
        }
      }
    }
    const med = runs.map(median);
    out.push(med);
    const base = perSecond(med[BASELINE]!);
    log("");
    log(
      `  QD${depth}`.padEnd(30) +
        ["req/s", "× mode 2", "exits/req", "exits/s", "irqs/req", "ioeventfd", "VMM B/req", "bad"]
          .map((h) => h.padStart(11))
          .join(""),
    );
    for (const r of med) {
      const c = r.counters;
      const per = (v: number, d = 2) => (v / r.requests).toFixed(d);
      log(
        `  ${r.name}`.padEnd(30) +
          [
            Math.round(perSecond(r)).toLocaleString("en-US"),
            (perSecond(r) / base).toFixed(3),
            per(c.exits),
            Math.round(c.exits / (r.ns / 1e9)).toLocaleString("en-US"),
            per(c.interrupts),
            per((r as Partial<VcpuRun>).ioeventfdKicks ?? 0),
            per(c.vmmBytes, 0),
            `${r.mismatches}`,
          ]
            .map((v) => v.padStart(11))
            .join(""),
      );
    }
    const ata = med[0]!.counters.byRegister;
    log(
      `  mode 1 exits by register: ${Object.entries(ata)
        .map(([k, v]) => `${k} ${(v / med[0]!.requests).toFixed(2)}`)
        .join(", ")}`,
    );
  }

  log("");
  log("pass-through: one owner, confined DMA");
  const p = await passthroughRefusals(image);
  const msg = (e: unknown) =>
    e instanceof Error ? `${e.name} ${(e as { code?: string }).code}: ${e.message}` : String(e);
  log(`  a second owner attaches       -> ${msg(p.secondOwner)}`);
  log(`  a DMA past the window         -> ${msg(p.outsideWindow)}`);
  log(
    `    cause: ${msg((p.outsideWindow as Error | undefined)?.cause)}; memory past the window ` +
      `${p.memoryUntouched ? "untouched" : "CHANGED"}; the function ${p.stillServes ? "still serves" : "FAILED"}`,
  );

  log("");
  log("suspend / encode / resume (virtio-mmio v2, BlkDevice over the same image)");
  for (const mode of ["drain", "in-flight"] as const) {
    const m = await migrationScenario(image, 24, 8, mode);
    log(
      `  ${mode}: ${m.submitted} reads: ${m.inBackendAtStop} in the back-end and ${m.unpoppedAtStop} in the ring, ` +
        `unpopped, at the stop; ${m.drainedUnreaped} drained into the used ring, ${m.inFlightInState} saved in flight`,
    );
    log(
      `    state: ${m.stateBytes} bytes; old device served ${m.oldServed}, new device ${m.newServed}; ` +
        `completed exactly once: ${m.completedOnce}/${m.submitted}; anomalies: ${m.anomalies}`,
    );
  }
  return out;
}

const isMain =
  process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/\\/g, "/"));
if ((isMain || process.argv[1]?.endsWith("virtio-lab")) && process.argv[2] === "linux") {
  // pnpm lab linux [--rounds N] [--seconds S] [--out DIR]: the same comparison in a real Linux
  // guest (v86), full emulation against virtio, driven by the kernel's own drivers.
  const args = process.argv.slice(3);
  const opt = (name: string): number | undefined => {
    const i = args.indexOf(name);
    return i >= 0 ? Number(args[i + 1]) : undefined;
  };
  const out = args.indexOf("--out");
  const { runLinuxLab } = await import("./linux.js");
  const rounds = opt("--rounds");
  const seconds = opt("--seconds");
  runLinuxLab({
    ...(rounds !== undefined ? { rounds } : {}),
    ...(seconds !== undefined ? { seconds } : {}),
    ...(out >= 0 && args[out + 1] !== undefined ? { outDir: args[out + 1]! } : {}),
  }).catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  });
} else if ((isMain || process.argv[1]?.endsWith("virtio-lab")) && process.argv[2] === "--profile") {
  // node --cpu-prof --cpu-prof-dir=DIR tools/lab/dist/main.js --profile MODE [DEPTH]: one mode
  // for 3 s, to profile (every thread writes its own .cpuprofile).
  const mode = process.argv[3] as (typeof LAB_MODES)[number];
  const depth = Number(process.argv[4] ?? 1);
  if (!LAB_MODES.includes(mode)) {
    console.error(`--profile needs a mode: ${LAB_MODES.join(", ")}`);
    process.exitCode = 2;
  } else {
    const r = await runVcpuMode(
      mode,
      makeImage(),
      blockSequence(1_000_000, DISK_BYTES / BLOCK),
      depth,
      {
        budgetMs: 3000,
      },
    );
    console.log(
      `${r.name} QD${depth}: ${Math.round(perSecond(r))} req/s, exits ${JSON.stringify(r.counters.byRegister)}, ` +
        `irqs/req ${(r.counters.interrupts / r.requests).toFixed(2)}, load ${loadavg()[0]!.toFixed(2)}`,
    );
  }
} else if (isMain || process.argv[1]?.endsWith("virtio-lab")) {
  const args = process.argv.slice(2);
  const quick = args.includes("--quick");
  const inThread = args.includes("--in-thread");
  const i = args.indexOf("--reps");
  const reps = i >= 0 ? Number(args[i + 1]) : quick ? 1 : 3;
  runLab({ requests: quick ? 800 : 4000, reps, inThread, budgetMs: quick ? 500 : 1500 }).catch(
    (e: unknown) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}
