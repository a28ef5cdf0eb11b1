// virtio-ts demo (`pnpm demo`): part 1 runs a virtio-blk disk over virtio-mmio with a file
// behind it and counts exits and interrupts; part 2 walks through one split virtqueue shared
// by two threads, step by step.
import { runBlkDemo } from "./blk-demo.js";
import { runSplitDemo } from "./split-demo.js";

const blk = await runBlkDemo();
if (blk.mismatches !== 0) process.exitCode = 1;
console.log("");
await runSplitDemo();
