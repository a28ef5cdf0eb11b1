/**
 * virtio-console constants and layouts.
 * @see VIRTIO 1.3 §5.3 "Console Device"
 * @module
 */

/** virtio-console feature bits. §5.3.3 */
export const ConsoleFeature = {
  /** Configuration `cols` and `rows` are valid. */
  SIZE: 0,
  /** Multiple ports and a control virtqueue. */
  MULTIPORT: 1,
  /** Emergency write through `emerg_wr`. */
  EMERG_WRITE: 2,
} as const;
/** One virtio-console feature bit number. */
export type ConsoleFeature = (typeof ConsoleFeature)[keyof typeof ConsoleFeature];

/** Device configuration `struct virtio_console_config`. §5.3.4 */
export const ConsoleConfig = {
  /** `le16 cols`. */
  COLS: 0,
  /** `le16 rows`. */
  ROWS: 2,
  /** `le32 max_nr_ports`. */
  MAX_NR_PORTS: 4,
  /** `le32 emerg_wr`. */
  EMERG_WR: 8,
  /** Size in bytes. */
  SIZE: 12,
} as const;

/** Control message `struct virtio_console_control`. §5.3.6.2 */
export const ConsoleControl = {
  /** `le32 id`: port number. */
  ID: 0,
  /** `le16 event`: {@link ConsoleEvent}. */
  EVENT: 4,
  /** `le16 value`. */
  VALUE: 6,
  /** Size in bytes. */
  SIZE: 8,
} as const;

/**
 * Control message events. The standard's names are used; Linux calls DEVICE_ADD and
 * DEVICE_REMOVE `VIRTIO_CONSOLE_PORT_ADD` and `VIRTIO_CONSOLE_PORT_REMOVE`.
 *
 * @see VIRTIO 1.3 §5.3.6.2 "Multiport Device Operation"
 */
export const ConsoleEvent = {
  /** Driver → device: the driver is ready (value 1) or failed (0). */
  DEVICE_READY: 0,
  /** Device → driver: a port was added. */
  DEVICE_ADD: 1,
  /** Device → driver: a port was removed. */
  DEVICE_REMOVE: 2,
  /** Driver → device: a port is ready (value 1) or failed (0). */
  PORT_READY: 3,
  /** Device → driver: the port is a console. */
  CONSOLE_PORT: 4,
  /** Device → driver: the console was resized. */
  RESIZE: 5,
  /** Both ways: the port was opened (value 1) or closed (0). */
  PORT_OPEN: 6,
  /** Device → driver: the port's name follows. */
  PORT_NAME: 7,
} as const;
/** One control event. */
export type ConsoleEvent = (typeof ConsoleEvent)[keyof typeof ConsoleEvent];

/**
 * `struct virtio_console_resize`, which follows a RESIZE control message. Only the standard
 * defines it (Linux keeps its copy out of the UAPI headers). Linux drivers before commit
 * 5326ab737a47 read `rows` first, against the standard; this layout follows the standard.
 *
 * @see VIRTIO 1.3 §5.3.6.2 "Multiport Device Operation"
 */
export const ConsoleResize = {
  /** `le16 cols`. */
  COLS: 0,
  /** `le16 rows`. */
  ROWS: 2,
  /** Size in bytes. */
  SIZE: 4,
} as const;

/**
 * A console size as `struct virtio_console_config` (`cols`, `rows`, with VIRTIO_CONSOLE_F_SIZE)
 * and the RESIZE control message (§5.3.6.2) carry it. The device model and the driver share
 * this one type.
 */
export interface ConsoleSize {
  /** Columns (0 to 65535). */
  readonly cols: number;
  /** Rows (0 to 65535). */
  readonly rows: number;
}
