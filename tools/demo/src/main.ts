// virtio-ts demo (`pnpm demo`): part 1 runs a virtio-blk disk over virtio-mmio with a file
// behind it and counts exits and interrupts; part 2 walks through one split virtqueue shared
// by two threads, step by step; part 3 has two virtio-net guests on one switch exchange ARP
// and a ping, then does it again with one guest in a child process behind a stream tunnel.
import { runBlkDemo } from "./blk-demo.js";
import { runNetDemo } from "./net-demo.js";
import { runSplitDemo } from "./split-demo.js";

const blk = await runBlkDemo();
if (blk.mismatches !== 0) process.exitCode = 1;
console.log("");
await runSplitDemo();
console.log("");
await runNetDemo();
