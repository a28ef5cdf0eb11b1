// One one-thread ring run (split-workload.ts's runSingle, or the JS floor of split-floor.ts or
// packed-floor.ts) in a fresh isolate: the bench runs the plain-ArrayBuffer-memory rows here. In the bench's own isolate, ring code that had run over
// both ArrayBuffer and SharedArrayBuffer memory (with the C baseline and the two-worker runs in
// between) was seen to stay 7× slower for later runs, though TurboFan-optimized; a fresh isolate
// keeps each row's JIT state its own.
import { parentPort, workerData } from "node:worker_threads";
import { createGuestMemory } from "@virtio-ts/memory";
import { runPackedFloor } from "./packed-floor.js";
import { runFloor } from "./split-floor.js";
import { MEM_SIZE, type RingKind, runSingle } from "./split-workload.js";

/** What a ring worker runs: the library on one ring layout, or one of the two JS floors. */
export type RingRunKind = RingKind | "floor" | "packedFloor";

const { kind, shared, ops, deferred } = workerData as {
  kind: RingRunKind;
  shared: boolean;
  ops: number;
  /** The device publishes used.idx once per batch (packed rows do not take it). */
  deferred: boolean;
};
const once = () =>
  kind === "floor"
    ? runFloor(shared, ops, deferred)
    : kind === "packedFloor"
      ? runPackedFloor(shared, ops)
      : runSingle(createGuestMemory({ size: MEM_SIZE, shared }), ops, kind, deferred);
// A whole run first, not timed: the JIT settles as it has for the in-process rows, whose later
// repetitions run on code optimized during the earlier ones.
once();
parentPort!.postMessage(once());
