/**
 * The §3.1.1 initialisation-order check of the driver suites, over the register accesses a
 * recording bus saw (internal; shared by the blk, rng and console driver suites; the buses
 * are in rig-link.ts).
 * @module
 */
import { DeviceStatus } from "@virtio-ts/spec";
import { ContractViolation } from "./contract.js";

/**
 * One register access of the driver, as the recording bus saw it (virtio-mmio Status,
 * DriverFeatures, QueueReady, QueueNotify; virtio-pci device_status, driver_feature,
 * queue_enable and the notification area).
 */
export type BusEvent =
  | { readonly e: "status-write"; readonly v: number }
  | { readonly e: "status-read"; readonly v: number }
  | { readonly e: "driver-features"; readonly sel: number; readonly v: number }
  | { readonly e: "queue-ready" }
  | { readonly e: "notify" };

/** 32-bit feature words (word `i` = bits 32·i to 32·i + 31) as one bigint. */
export function joinFeatureWords(words: readonly number[]): bigint {
  let f = 0n;
  for (let i = 0; i < words.length; i++) f |= BigInt(words[i]! >>> 0) << BigInt(32 * i);
  return f;
}

/** Check the §3.1.1 order in the recorded register accesses of `attach`. */
export function checkInit(events: readonly BusEvent[]): void {
  const S = DeviceStatus;
  const fail = (step: string, seen: string): never => {
    throw new ContractViolation(`initialisation step ${step}`, "the §3.1.1 order", seen, "§3.1.1");
  };
  const first = events.find((e) => e.e === "status-write");
  if (first === undefined || first.e !== "status-write" || first.v !== 0) {
    fail(
      "1 (reset: write 0 to status first)",
      first === undefined
        ? "no status write"
        : `first status write 0x${(first as { v: number }).v.toString(16)}`,
    );
  }
  const order = [S.ACKNOWLEDGE, S.DRIVER, S.FEATURES_OK, S.DRIVER_OK];
  const names = ["ACKNOWLEDGE", "DRIVER", "FEATURES_OK", "DRIVER_OK"];
  let status = 0;
  let featuresOkAt = -1;
  let reread = false;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (e.e === "status-write") {
      if (e.v === 0) {
        status = 0;
        featuresOkAt = -1;
        reread = false;
        continue;
      }
      if ((status & ~e.v) !== 0)
        fail(
          "(never clear a status bit, §2.1.1)",
          `0x${e.v.toString(16)} after 0x${status.toString(16)}`,
        );
      const added = e.v & ~status;
      for (let k = 0; k < order.length; k++) {
        if ((added & order[k]!) === 0) continue;
        for (let j = 0; j < k; j++) {
          if (((status | added) & order[j]!) === 0)
            fail(`${k + 2} (${names[k]} after ${names[j]})`, `${names[k]} set without ${names[j]}`);
        }
      }
      if ((added & S.FEATURES_OK) !== 0) featuresOkAt = i;
      if ((added & S.DRIVER_OK) !== 0 && !reread) {
        fail(
          "6 (re-read status after FEATURES_OK)",
          "DRIVER_OK without a status read after FEATURES_OK",
        );
      }
      status = e.v;
    } else if (e.e === "status-read") {
      if (featuresOkAt >= 0) reread = true;
    } else if (e.e === "driver-features") {
      if ((status & S.DRIVER) === 0 || (status & S.FEATURES_OK) !== 0) {
        fail(
          "4 (write features after DRIVER, before FEATURES_OK)",
          `DriverFeatures written with status 0x${status.toString(16)}`,
        );
      }
    } else if (e.e === "queue-ready") {
      if ((status & S.FEATURES_OK) === 0 || !reread)
        fail(
          "7 (queues after FEATURES_OK is confirmed)",
          `QueueReady with status 0x${status.toString(16)}`,
        );
      if ((status & S.DRIVER_OK) !== 0)
        fail("7 (queues before DRIVER_OK)", "QueueReady after DRIVER_OK");
    } else if (e.e === "notify" && (status & S.DRIVER_OK) === 0) {
      fail(
        "8 (no notification before DRIVER_OK)",
        `QueueNotify with status 0x${status.toString(16)}`,
      );
    }
  }
  if ((status & S.DRIVER_OK) === 0) fail("8 (DRIVER_OK)", `final status 0x${status.toString(16)}`);
}
