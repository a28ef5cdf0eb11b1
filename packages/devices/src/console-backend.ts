/**
 * The back-end interfaces of a virtio-console device: {@link ConsoleBackend} (where guest output
 * goes, where guest input comes from) and {@link ConsoleInputSink} (what the device hands the
 * back-end to push input and release output back-pressure).
 * @see VIRTIO 1.3 §5.3 "Console Device"
 * @module
 */

/**
 * What a `ConsoleDevice` hands to its back-end so the back-end can push bytes to the
 * guest and release output back-pressure. The device itself implements it.
 */
export interface ConsoleInputSink {
  /**
   * Push host bytes to port `port` of the guest: as many as fit are copied into posted receive
   * buffers or the port's bounded pending buffer before the call returns; the rest are dropped
   * and counted (`stats.inputDropped`). Offer at most {@link ConsoleInputSink.inputRoom} bytes to
   * never drop.
   * @param port - port number
   * @param data - bytes (copied; the caller may reuse them afterwards)
   * @returns the number of bytes accepted
   * @throws RangeError naming `port` if it is not an existing port
   */
  input(port: number, data: Uint8Array): number;
  /**
   * Bytes {@link ConsoleInputSink.input} accepts right now without dropping (free space of the
   * pending buffer; posted guest buffers may take more).
   * @param port - port number
   */
  inputRoom(port: number): number;
  /**
   * The back-end can take output again after returning `false` from `write`: the device resumes
   * the port's transmit queue.
   * @param port - port number
   */
  resumeOutput(port: number): void;
}

/**
 * The host side of a virtio-console device: where guest output goes and where guest input comes
 * from. A back-end never sees a ring.
 *
 * Implementer contract:
 * - **Output (guest → host).** The device calls {@link ConsoleBackend.write} with the bytes of
 *   each transmit buffer, possibly in several pieces. `data` may be a zero-copy view of guest
 *   memory (possibly over a `SharedArrayBuffer`) and is valid only during the call: copy what
 *   you keep. Return `false` when you cannot take more for now; the device stops consuming the
 *   port's transmit queue (guest writes wait in the ring) until you call
 *   {@link ConsoleInputSink.resumeOutput}. Never throw.
 * - **Input (host → guest).** After {@link ConsoleBackend.attach}, push bytes with
 *   {@link ConsoleInputSink.input}. The device keeps a bounded pending buffer per port while the
 *   guest has no receive buffer posted; beyond it input is dropped and counted. To lose nothing,
 *   offer at most `inputRoom(port)` bytes, keep the rest (bounded), and offer it again when the
 *   device calls {@link ConsoleBackend.inputSpace}.
 * - Calls come from one thread and may re-enter the sink (a `write` may call `input`).
 *
 * @see VIRTIO 1.3 §5.3.6 "Device Operation"
 */
export interface ConsoleBackend {
  /**
   * Receive the sink for input (called once, by the device's constructor).
   * @param sink - where to push guest input
   */
  attach?(sink: ConsoleInputSink): void;
  /**
   * Guest output on port `port`.
   * @param port - port number
   * @param data - the bytes, valid only during the call
   * @returns false to pause this port's output until `resumeOutput(port)`
   */
  write(port: number, data: Uint8Array): boolean;
  /**
   * The pending input buffer of `port` was full and has room again.
   * @param port - port number
   */
  inputSpace?(port: number): void;
  /**
   * The guest opened (`open` true) or closed a port (multiport PORT_OPEN, §5.3.6.2).
   * @param port - port number
   * @param open - the new state
   */
  portOpen?(port: number, open: boolean): void;
  /**
   * A byte written to `emerg_wr` (§5.3.5.1). Default: `write(0, [byte])`.
   * @param byte - the lower byte of the written value
   */
  emergencyWrite?(byte: number): void;
}
