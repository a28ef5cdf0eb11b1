/** Layout shared by the demo's two threads. */
export const MEM_SIZE = 1 << 20;
export const QUEUE = { size: 16, desc: 0x1000, driver: 0x2000, device: 0x3000 } as const;
/** Doorbell words (Int32Array indices) in a separate small SharedArrayBuffer. */
export const KICK = 0;
export const IRQ = 1;
export const STOP = 2;

/** What the device worker reports after each batch. */
export interface BatchReport {
  readonly type: "batch";
  readonly lines: string[];
}

/** What the device worker reports when the guest hands it a hostile ring. */
export interface FaultReport {
  readonly type: "fault";
  readonly error: { name: string; code: string; fields: Record<string, unknown>; message: string };
}
