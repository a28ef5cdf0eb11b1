/**
 * What the driver suites hand a driver under test besides its transport (shared by the blk,
 * rng and console driver suites).
 * @module
 */
import type { MmioBus, PciFunctionAccess } from "@virtio-ts/transport";
import type { ContractTransport } from "./contract.js";

/** A range of guest-physical memory. */
export interface GuestRange {
  /** First guest address of the range. */
  readonly base: number;
  /** Length of the range in bytes. */
  readonly size: number;
}

/**
 * Guest memory and device access a driver suite gives the driver under test. `transport` says
 * which of `bus` and `pci` is there: a driver that brings its own transport code uses the one
 * of its kind (the same recording access the suite's driver transport goes through).
 */
export interface DriverEnv {
  /** The transport of this run. */
  readonly transport: ContractTransport;
  /** virtio-mmio runs: the device's registers behind the suite's recording bus. */
  readonly bus: MmioBus | undefined;
  /**
   * virtio-pci runs: the PCI function (configuration space and BARs) behind the suite's
   * recording. It has no MSI-X capability: the driver takes INTx interrupts.
   */
  readonly pci: PciFunctionAccess | undefined;
  /**
   * Guest memory the driver may use for rings, headers and buffers: `[base, base + size)`,
   * 4096-aligned. Nothing else in `memory` belongs to the driver.
   */
  readonly region: GuestRange;
}
