// Runs once per test run, before any interop test file: decide the QEMU accelerator with a real
// boot probe (KVM only if Linux reaches init under it in time) and print the verdict. Test files
// read the verdict from the per-boot cache instead of probing again.
import { chooseAccelerator } from "../src/index.js";

export default async function setup(): Promise<void> {
  try {
    const choice = await chooseAccelerator({ reprobe: true });
    console.log(`[interop] accelerator for this run: ${choice.accel} (${choice.reason})`);
  } catch (e) {
    // Missing QEMU or kernel: every guest test fails with requireTools' message naming them.
    console.log(`[interop] no accelerator probe: ${(e as Error).message}`);
  }
}
