#!/usr/bin/env node
// virtio-lab: the same 4 KiB random-read workload on the same disk image in four modes of I/O
// virtualization, measured in one run, then pass-through's refusals and a migration.
//
//   node tools/lab/dist/main.js [--quick] [--reps N]
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

/** Options of {@link runLab}. */
export interface LabOptions {
  /** Requests per run at depth 1 (depth 32 runs four times as many). Default 4000. */
  readonly requests?: number;
  /** Runs per mode and depth; the median is printed. Default 3. */
  readonly reps?: number;
  /** Where lines go. Default console.log. */
  readonly log?: (line: string) => void;
}

const MODES: readonly ((image: SharedArrayBuffer) => Rig | Promise<Rig>)[] = [
  ataRig,
  (img) => virtioRig(img, MmioVersion.MODERN),
  (img) => virtioRig(img, MmioVersion.LEGACY),
  (img) => vhostRig(img),
  passthroughRig,
];
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
  const image = makeImage();
  log(
    `virtio-lab: 4 KiB random reads, the same ${DISK_BYTES >> 20} MiB image (a MemoryDisk over one ` +
      `SharedArrayBuffer) in every mode; ${new Date().toISOString().slice(0, 10)}, ` +
      `${cpus().length} × ${cpus()[0]?.model.trim() ?? "?"}, Node ${process.versions.node}, ` +
      `load ${loadavg()[0]!.toFixed(2)}; median of ${reps}`,
  );
  log(
    "  exits = trapped register accesses the VMM handles; irqs = guest interrupt handler runs; " +
      "VMM B = bytes the VMM thread's code copied",
  );
  const out: Run[][] = [];
  for (const depth of [1, 32]) {
    const seq = blockSequence(depth === 1 ? n1 : n1 * 4, DISK_BYTES / BLOCK, depth);
    const runs: Run[][] = MODES.map(() => []);
    for (let r = 0; r < reps; r++) {
      for (let m = 0; m < MODES.length; m++) {
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
        ["req/s", "× mode 2", "exits/req", "irqs/req", "VMM B/req", "bad"]
          .map((h) => h.padStart(10))
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
            per(c.interrupts),
            per(c.vmmBytes, 0),
            `${r.mismatches}`,
          ]
            .map((v) => v.padStart(10))
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
if (isMain || process.argv[1]?.endsWith("virtio-lab")) {
  const args = process.argv.slice(2);
  const quick = args.includes("--quick");
  const i = args.indexOf("--reps");
  const reps = i >= 0 ? Number(args[i + 1]) : quick ? 1 : 3;
  runLab({ requests: quick ? 800 : 4000, reps }).catch((e: unknown) => {
    console.error(e);
    process.exitCode = 1;
  });
}
