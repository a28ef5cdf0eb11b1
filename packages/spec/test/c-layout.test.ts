// Every constant and wire layout of @virtio-ts/spec is compared with the Linux UAPI headers.
// The tables below map each key of our `as const` objects to a C expression (a macro, an
// offsetof/sizeof, or a field name of the struct). The test writes one CHECK line per entry to
// checks.h, compiles test/c/layout.c against <linux/virtio_*.h> with gcc, and compares the JSON
// it prints with our values. The maps are exhaustive by type: a new key in a spec object does
// not compile (nor run) until it has a C name here or is marked spec-only with the reason.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  BALLOON_PAGE_SIZE,
  BALLOON_PFN_SHIFT,
  BALLOON_STAT_TAGS,
  BalloonCmdId,
  BalloonConfig,
  BalloonFeature,
  BalloonStat,
  BalloonStatTag,
  BLK_ID_BYTES,
  BLK_SECTOR_SIZE,
  BlkConfig,
  BlkDiscardWriteZeroes,
  BlkFeature,
  BlkOutHdr,
  BlkRequestType,
  BlkStatus,
  ConsoleConfig,
  ConsoleControl,
  ConsoleEvent,
  ConsoleFeature,
  DeviceId,
  DeviceStatus,
  ETH_ALEN,
  ETH_HLEN,
  EtherType,
  FEATURE_TRANSPORT_FIRST,
  FEATURE_TRANSPORT_LAST,
  Feature,
  legacySplitLayout,
  MMIO_MAGIC,
  MmioInterrupt,
  MmioReg,
  NetConfig,
  NetCtrlAck,
  NetCtrlClass,
  NetCtrlCmd,
  NetCtrlHdr,
  NetFeature,
  NetGsoType,
  NetHdr,
  NetHdrFlags,
  NetHdrHash,
  NetMqPairs,
  NetStatus,
  PACKED_EVENT_F_WRAP_CTR,
  PackedDesc,
  PackedDescFlags,
  PackedEvent,
  PackedEventFlags,
  PCI_COMMON_CFG_V1_0_SIZE,
  PCI_DEVICE_ID_MODERN_BASE,
  PCI_DEVICE_ID_MODERN_LAST,
  PCI_VENDOR_ID_VIRTIO,
  PciBar,
  PciCap,
  PciCap64,
  PciCapId,
  PciCapType,
  PciCfgCap,
  PciClass,
  PciCommand,
  PciCommonCfg,
  PciConfig,
  PciIsr,
  PciMsix,
  PciNotifyCap,
  PciStatus,
  PciTransitionalDeviceId,
  SplitAlign,
  SplitAvail,
  SplitDesc,
  SplitDescFlags,
  SplitUsed,
  splitAvailEventOffset,
  splitUsedEventOffset,
  VIRTIO_MSI_MAX_VECTOR,
  VIRTIO_MSI_NO_VECTOR,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  VsockCid,
  VsockConfig,
  VsockEvent,
  VsockEventId,
  VsockFeature,
  VsockHdr,
  VsockOp,
  VsockSeqFlags,
  VsockShutdownFlags,
  VsockType,
  vringNeedEvent,
} from "@virtio-ts/spec";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// ---------------------------------------------------------------------------------------------
// Table helpers

/** A value the Linux headers do not have (newer than Debian's headers, or spec-only). */
interface SpecOnly {
  readonly specOnly: string;
}
const specOnly = (why: string): SpecOnly => ({ specOnly: why });
/** A raw C expression inside a struct layout map (instead of a field name). */
interface Expr {
  readonly c: string;
}
const c = (expr: string): Expr => ({ c: expr });

type Values = Readonly<Record<string, number>>;
type ConstNames<T> = { readonly [K in keyof T]: string | SpecOnly };
type FieldNames<T> = { readonly [K in Exclude<keyof T, "SIZE">]: string | Expr | SpecOnly };

interface Check {
  readonly label: string;
  readonly expr: string;
  readonly ours: number;
}
interface Group {
  readonly name: string;
  readonly checks: readonly Check[];
}

function entries<T extends Values>(what: string, ours: T, names: Record<string, unknown>) {
  return Object.entries(ours).map(([key, value]) => {
    const name = names[key];
    if (name === undefined) throw new Error(`${what}.${key} has no C name in the table: add one`);
    return { label: `${what}.${key}`, name, ours: value };
  });
}

/** Constants: each key of `ours` is compared with the C expression given for it. */
function constants<T extends Values>(what: string, ours: T, names: ConstNames<T>): Check[] {
  return entries(what, ours, names).flatMap(({ label, name, ours }) =>
    typeof name === "string" ? [{ label, expr: name, ours }] : [],
  );
}

/** Constants named `${prefix}${key}` in C, except where `except` says otherwise. */
function prefixed<T extends Values>(
  what: string,
  prefix: string,
  ours: T,
  except: Partial<ConstNames<T>> = {},
): Check[] {
  const names = Object.fromEntries(
    Object.keys(ours).map((k) => [k, (except as Record<string, unknown>)[k] ?? prefix + k]),
  );
  return constants(what, ours, names as ConstNames<T>);
}

/** A struct layout: `SIZE` is `sizeof(struct s)`, every other key the offsetof of its field. */
function layout<T extends Values>(struct: string, ours: T, fields: FieldNames<T>): Check[] {
  const names: Record<string, unknown> = { ...fields, SIZE: `sizeof(struct ${struct})` };
  return entries(struct, ours, names).flatMap(({ label, name, ours }) => {
    if (typeof name === "string") {
      const expr = name.startsWith("sizeof(") ? name : `offsetof(struct ${struct}, ${name})`;
      return [{ label, expr, ours }];
    }
    return "c" in (name as object) ? [{ label, expr: (name as Expr).c, ours }] : [];
  });
}

const group = (name: string, ...checks: Check[][]): Group => ({ name, checks: checks.flat() });

// ---------------------------------------------------------------------------------------------
// The tables

const newer = specOnly("newer than the Linux 6.1 UAPI headers on Debian 12");

const groups: Group[] = [
  group(
    "device status bits match <linux/virtio_config.h>",
    prefixed("DeviceStatus", "VIRTIO_CONFIG_S_", DeviceStatus, {
      DEVICE_NEEDS_RESET: "VIRTIO_CONFIG_S_NEEDS_RESET",
    }),
  ),
  group(
    "common feature bits match <linux/virtio_config.h> and <linux/virtio_ring.h>",
    prefixed("Feature", "VIRTIO_F_", Feature, {
      RING_INDIRECT_DESC: "VIRTIO_RING_F_INDIRECT_DESC",
      RING_EVENT_IDX: "VIRTIO_RING_F_EVENT_IDX",
      NOTIFICATION_DATA: newer,
      NOTIF_CONFIG_DATA: newer,
      ADMIN_VQ: newer,
    }),
    constants(
      "features",
      { FEATURE_TRANSPORT_FIRST, FEATURE_TRANSPORT_LAST },
      {
        // On purpose: Linux's VIRTIO_TRANSPORT_F_START is 28 because its transports filter from
        // there; the standard reserves 24..41 (24 and 27 are legacy NOTIFY_ON_EMPTY, ANY_LAYOUT).
        FEATURE_TRANSPORT_FIRST: specOnly(
          "VIRTIO 1.3 §6 reserves from bit 24; Linux filters from 28",
        ),
        FEATURE_TRANSPORT_LAST: "VIRTIO_TRANSPORT_F_END",
      },
    ),
  ),
  group(
    "device IDs match <linux/virtio_ids.h>",
    prefixed("DeviceId", "VIRTIO_ID_", DeviceId, {
      INVALID: specOnly("0 is reserved as invalid by VIRTIO 1.3 §5; Linux has no name for it"),
      NINE_P: "VIRTIO_ID_9P",
      RTC: "VIRTIO_ID_CLOCK",
      RDMA: newer,
      CAMERA: newer,
      ISM: newer,
      SPI: newer,
      TEE: newer,
      CPU_BALLOON: newer,
      MEDIA: newer,
      USB: newer,
    }),
  ),
  group(
    "struct vring_desc and its flags match <linux/virtio_ring.h>",
    layout("vring_desc", SplitDesc, { ADDR: "addr", LEN: "len", FLAGS: "flags", NEXT: "next" }),
    prefixed("SplitDescFlags", "VRING_DESC_F_", SplitDescFlags),
    constants(
      "ring",
      { VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_F_NO_NOTIFY },
      {
        VIRTQ_AVAIL_F_NO_INTERRUPT: "VRING_AVAIL_F_NO_INTERRUPT",
        VIRTQ_USED_F_NO_NOTIFY: "VRING_USED_F_NO_NOTIFY",
      },
    ),
    constants("SplitAlign", SplitAlign, {
      DESC: "VRING_DESC_ALIGN_SIZE",
      AVAIL: "VRING_AVAIL_ALIGN_SIZE",
      USED: "VRING_USED_ALIGN_SIZE",
    }),
  ),
  group(
    "struct vring_avail matches <linux/virtio_ring.h>",
    layout("vring_avail", SplitAvail, {
      FLAGS: "flags",
      IDX: "idx",
      RING: "ring",
      ENTRY_SIZE: c("sizeof(((struct vring_avail *)0)->ring[0])"),
    }),
  ),
  group(
    "struct vring_used and vring_used_elem match <linux/virtio_ring.h>",
    layout("vring_used", SplitUsed, {
      FLAGS: "flags",
      IDX: "idx",
      RING: "ring",
      ENTRY_SIZE: c("sizeof(struct vring_used_elem)"),
      ELEM_ID: c("offsetof(struct vring_used_elem, id)"),
      ELEM_LEN: c("offsetof(struct vring_used_elem, len)"),
    }),
  ),
  group(
    "struct vring_packed_desc and its flags match <linux/virtio_ring.h>",
    layout("vring_packed_desc", PackedDesc, { ADDR: "addr", LEN: "len", ID: "id", FLAGS: "flags" }),
    prefixed("PackedDescFlags", "VRING_DESC_F_", PackedDescFlags, {
      // Linux defines these two as bit numbers; ours are masks like the other flags.
      AVAIL: "(1 << VRING_PACKED_DESC_F_AVAIL)",
      USED: "(1 << VRING_PACKED_DESC_F_USED)",
    }),
  ),
  group(
    "struct vring_packed_desc_event and its flags match <linux/virtio_ring.h>",
    layout("vring_packed_desc_event", PackedEvent, { OFF_WRAP: "off_wrap", FLAGS: "flags" }),
    prefixed("PackedEventFlags", "VRING_PACKED_EVENT_FLAG_", PackedEventFlags),
    constants(
      "ring",
      { PACKED_EVENT_F_WRAP_CTR },
      { PACKED_EVENT_F_WRAP_CTR: "VRING_PACKED_EVENT_F_WRAP_CTR" },
    ),
  ),
  group(
    "virtio-blk feature bits, request types and status match <linux/virtio_blk.h>",
    prefixed("BlkFeature", "VIRTIO_BLK_F_", BlkFeature, { LIFETIME: newer, ZONED: newer }),
    prefixed("BlkRequestType", "VIRTIO_BLK_T_", BlkRequestType, { GET_LIFETIME: newer }),
    prefixed("BlkStatus", "VIRTIO_BLK_S_", BlkStatus),
    constants(
      "blk",
      { BLK_ID_BYTES, BLK_SECTOR_SIZE },
      {
        BLK_ID_BYTES: "VIRTIO_BLK_ID_BYTES",
        BLK_SECTOR_SIZE: specOnly(
          "the header has no name for the 512-byte sector of VIRTIO 1.3 §5.2.4",
        ),
      },
    ),
  ),
  group(
    "virtio_blk_outhdr matches <linux/virtio_blk.h>",
    layout("virtio_blk_outhdr", BlkOutHdr, { TYPE: "type", IOPRIO: "ioprio", SECTOR: "sector" }),
  ),
  group(
    "virtio_blk_discard_write_zeroes matches <linux/virtio_blk.h>",
    layout("virtio_blk_discard_write_zeroes", BlkDiscardWriteZeroes, {
      SECTOR: "sector",
      NUM_SECTORS: "num_sectors",
      FLAGS: "flags",
      FLAG_UNMAP: c("VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP"),
    }),
  ),
  group(
    "virtio_blk_config matches <linux/virtio_blk.h>",
    layout("virtio_blk_config", BlkConfig, {
      CAPACITY: "capacity",
      SIZE_MAX: "size_max",
      SEG_MAX: "seg_max",
      GEOMETRY_CYLINDERS: "geometry.cylinders",
      GEOMETRY_HEADS: "geometry.heads",
      GEOMETRY_SECTORS: "geometry.sectors",
      BLK_SIZE: "blk_size",
      PHYSICAL_BLOCK_EXP: "physical_block_exp",
      ALIGNMENT_OFFSET: "alignment_offset",
      MIN_IO_SIZE: "min_io_size",
      OPT_IO_SIZE: "opt_io_size",
      WRITEBACK: "wce", // the standard's `writeback`
      UNUSED0: "unused", // the standard's `unused0`
      NUM_QUEUES: "num_queues",
      MAX_DISCARD_SECTORS: "max_discard_sectors",
      MAX_DISCARD_SEG: "max_discard_seg",
      DISCARD_SECTOR_ALIGNMENT: "discard_sector_alignment",
      MAX_WRITE_ZEROES_SECTORS: "max_write_zeroes_sectors",
      MAX_WRITE_ZEROES_SEG: "max_write_zeroes_seg",
      WRITE_ZEROES_MAY_UNMAP: "write_zeroes_may_unmap",
      UNUSED1: "unused1",
      MAX_SECURE_ERASE_SECTORS: "max_secure_erase_sectors",
      MAX_SECURE_ERASE_SEG: "max_secure_erase_seg",
      SECURE_ERASE_SECTOR_ALIGNMENT: "secure_erase_sector_alignment",
    }),
  ),
  group(
    "virtio-balloon feature bits, statistics tags, command IDs and the PFN shift match <linux/virtio_balloon.h>",
    prefixed("BalloonFeature", "VIRTIO_BALLOON_F_", BalloonFeature, {
      PAGE_REPORTING: "VIRTIO_BALLOON_F_REPORTING",
    }),
    prefixed("BalloonStatTag", "VIRTIO_BALLOON_S_", BalloonStatTag),
    prefixed("BalloonCmdId", "VIRTIO_BALLOON_CMD_ID_", BalloonCmdId),
    constants(
      "balloon",
      { BALLOON_PFN_SHIFT, BALLOON_PAGE_SIZE, BALLOON_STAT_TAGS },
      {
        BALLOON_PFN_SHIFT: "VIRTIO_BALLOON_PFN_SHIFT",
        BALLOON_PAGE_SIZE: "(1 << VIRTIO_BALLOON_PFN_SHIFT)",
        BALLOON_STAT_TAGS: "VIRTIO_BALLOON_S_NR",
      },
    ),
  ),
  group(
    "virtio_balloon_config and the packed virtio_balloon_stat match <linux/virtio_balloon.h>",
    layout("virtio_balloon_config", BalloonConfig, {
      NUM_PAGES: "num_pages",
      ACTUAL: "actual",
      FREE_PAGE_HINT_CMD_ID: "free_page_hint_cmd_id",
      POISON_VAL: "poison_val",
    }),
    layout("virtio_balloon_stat", BalloonStat, { TAG: "tag", VAL: "val" }),
  ),
  group(
    "virtio-net feature bits match <linux/virtio_net.h>",
    prefixed("NetFeature", "VIRTIO_NET_F_", NetFeature, {
      DEVICE_STATS: newer,
      VQ_NOTF_COAL: newer,
      GUEST_USO4: newer,
      GUEST_USO6: newer,
      HOST_USO: newer,
      GUEST_HDRLEN: newer,
    }),
  ),
  group(
    "virtio_net_hdr_v1, its flags and GSO types match <linux/virtio_net.h>",
    layout("virtio_net_hdr_v1", NetHdr, {
      LEGACY_SIZE: c("sizeof(struct virtio_net_hdr)"),
      FLAGS: "flags",
      GSO_TYPE: "gso_type",
      HDR_LEN: "hdr_len",
      GSO_SIZE: "gso_size",
      CSUM_START: "csum_start",
      CSUM_OFFSET: "csum_offset",
      NUM_BUFFERS: "num_buffers",
    }),
    prefixed("NetHdrFlags", "VIRTIO_NET_HDR_F_", NetHdrFlags),
    prefixed("NetGsoType", "VIRTIO_NET_HDR_GSO_", NetGsoType, { UDP_L4: newer }),
  ),
  group(
    "virtio_net_hdr_v1_hash matches <linux/virtio_net.h>",
    layout("virtio_net_hdr_v1_hash", NetHdrHash, {
      HASH_VALUE: "hash_value",
      HASH_REPORT: "hash_report",
      PADDING: "padding",
    }),
  ),
  group(
    "virtio_net_config and its status bits match <linux/virtio_net.h>",
    layout("virtio_net_config", NetConfig, {
      MAC: "mac",
      STATUS: "status",
      MAX_VIRTQUEUE_PAIRS: "max_virtqueue_pairs",
      MTU: "mtu",
      SPEED: "speed",
      DUPLEX: "duplex",
      RSS_MAX_KEY_SIZE: "rss_max_key_size",
      RSS_MAX_INDIRECTION_TABLE_LENGTH: "rss_max_indirection_table_length",
      SUPPORTED_HASH_TYPES: "supported_hash_types",
    }),
    prefixed("NetStatus", "VIRTIO_NET_S_", NetStatus),
  ),
  group(
    "virtio_net_ctrl_hdr, classes, commands and acks match <linux/virtio_net.h>",
    layout("virtio_net_ctrl_hdr", NetCtrlHdr, { CLASS: "class", COMMAND: "cmd" }),
    prefixed("NetCtrlClass", "VIRTIO_NET_CTRL_", NetCtrlClass),
    prefixed("NetCtrlCmd", "VIRTIO_NET_CTRL_", NetCtrlCmd),
    prefixed("NetMqPairs", "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_", NetMqPairs),
    prefixed("NetCtrlAck", "VIRTIO_NET_", NetCtrlAck),
  ),
  group(
    "virtio-console feature bits and events match <linux/virtio_console.h>",
    prefixed("ConsoleFeature", "VIRTIO_CONSOLE_F_", ConsoleFeature),
    prefixed("ConsoleEvent", "VIRTIO_CONSOLE_", ConsoleEvent, {
      DEVICE_ADD: "VIRTIO_CONSOLE_PORT_ADD",
      DEVICE_REMOVE: "VIRTIO_CONSOLE_PORT_REMOVE",
    }),
  ),
  group(
    "virtio_console_config matches <linux/virtio_console.h>",
    layout("virtio_console_config", ConsoleConfig, {
      COLS: "cols",
      ROWS: "rows",
      MAX_NR_PORTS: "max_nr_ports",
      EMERG_WR: "emerg_wr",
    }),
  ),
  group(
    "virtio_console_control matches <linux/virtio_console.h>",
    layout("virtio_console_control", ConsoleControl, { ID: "id", EVENT: "event", VALUE: "value" }),
  ),
  group(
    "virtio-vsock feature bits and constants match <linux/virtio_vsock.h> and <linux/vm_sockets.h>",
    prefixed("VsockFeature", "VIRTIO_VSOCK_F_", VsockFeature, {
      STREAM: newer,
      NO_IMPLIED_STREAM: newer,
    }),
    prefixed("VsockType", "VIRTIO_VSOCK_TYPE_", VsockType),
    prefixed("VsockOp", "VIRTIO_VSOCK_OP_", VsockOp),
    constants("VsockShutdownFlags", VsockShutdownFlags, {
      RECEIVE: "VIRTIO_VSOCK_SHUTDOWN_RCV",
      SEND: "VIRTIO_VSOCK_SHUTDOWN_SEND",
    }),
    prefixed("VsockSeqFlags", "VIRTIO_VSOCK_SEQ_", VsockSeqFlags),
    prefixed("VsockEventId", "VIRTIO_VSOCK_EVENT_", VsockEventId),
    prefixed("VsockCid", "VMADDR_CID_", VsockCid),
  ),
  group(
    "virtio_vsock_config matches <linux/virtio_vsock.h>",
    layout("virtio_vsock_config", VsockConfig, { GUEST_CID: "guest_cid" }),
  ),
  group(
    "virtio_vsock_hdr matches <linux/virtio_vsock.h>",
    layout("virtio_vsock_hdr", VsockHdr, {
      SRC_CID: "src_cid",
      DST_CID: "dst_cid",
      SRC_PORT: "src_port",
      DST_PORT: "dst_port",
      LEN: "len",
      TYPE: "type",
      OP: "op",
      FLAGS: "flags",
      BUF_ALLOC: "buf_alloc",
      FWD_CNT: "fwd_cnt",
    }),
  ),
  group(
    "virtio_vsock_event matches <linux/virtio_vsock.h>",
    layout("virtio_vsock_event", VsockEvent, { ID: "id" }),
  ),
  group(
    "virtio-mmio registers and interrupt bits match <linux/virtio_mmio.h>",
    prefixed("MmioReg", "VIRTIO_MMIO_", MmioReg, {
      QUEUE_DRIVER_LOW: "VIRTIO_MMIO_QUEUE_AVAIL_LOW",
      QUEUE_DRIVER_HIGH: "VIRTIO_MMIO_QUEUE_AVAIL_HIGH",
      QUEUE_DEVICE_LOW: "VIRTIO_MMIO_QUEUE_USED_LOW",
      QUEUE_DEVICE_HIGH: "VIRTIO_MMIO_QUEUE_USED_HIGH",
      QUEUE_RESET: newer,
    }),
    prefixed("MmioInterrupt", "VIRTIO_MMIO_INT_", MmioInterrupt, {
      USED_BUFFER: "VIRTIO_MMIO_INT_VRING",
    }),
    // The header documents the magic as the string "virt" read little-endian, not as a macro.
    constants("mmio", { MMIO_MAGIC }, { MMIO_MAGIC: "('v' | 'i' << 8 | 'r' << 16 | 't' << 24)" }),
  ),
  group(
    "Ethernet header constants match <linux/if_ether.h>",
    constants("ethernet", { ETH_ALEN, ETH_HLEN }, { ETH_ALEN: "ETH_ALEN", ETH_HLEN: "ETH_HLEN" }),
    prefixed("EtherType", "ETH_P_", EtherType, { IPV4: "ETH_P_IP", VLAN: "ETH_P_8021Q" }),
  ),
  group(
    "virtio-pci IDs, capability types and ISR bits match <linux/virtio_pci.h> and <linux/virtio_ids.h>",
    prefixed("PciCapType", "VIRTIO_PCI_CAP_", PciCapType, { VENDOR_CFG: newer }),
    prefixed("PciTransitionalDeviceId", "VIRTIO_TRANS_ID_", PciTransitionalDeviceId, {
      NINE_P: "VIRTIO_TRANS_ID_9P",
    }),
    constants("PciIsr", PciIsr, {
      QUEUE: specOnly("the header names only the configuration bit; bit 0 is §4.1.4.5's queue bit"),
      CONFIG: "VIRTIO_PCI_ISR_CONFIG",
    }),
    constants(
      "pci",
      {
        VIRTIO_MSI_NO_VECTOR,
        VIRTIO_MSI_MAX_VECTOR,
        PCI_VENDOR_ID_VIRTIO,
        PCI_DEVICE_ID_MODERN_BASE,
        PCI_DEVICE_ID_MODERN_LAST,
        PCI_COMMON_CFG_V1_0_SIZE,
      },
      {
        VIRTIO_MSI_NO_VECTOR: "VIRTIO_MSI_NO_VECTOR",
        VIRTIO_MSI_MAX_VECTOR: specOnly("§4.1.5.1.2: table entries 0 to 0x7ff"),
        PCI_VENDOR_ID_VIRTIO: specOnly("Linux's PCI_VENDOR_ID_REDHAT_QUMRANET is not in UAPI"),
        PCI_DEVICE_ID_MODERN_BASE: specOnly("§4.1.2: 0x1040 + device ID; not in UAPI"),
        PCI_DEVICE_ID_MODERN_LAST: specOnly("§4.1.2: 0x107f; not in UAPI"),
        PCI_COMMON_CFG_V1_0_SIZE: "sizeof(struct virtio_pci_common_cfg)",
      },
    ),
  ),
  group(
    "struct virtio_pci_cap, virtio_pci_cap64, virtio_pci_notify_cap and virtio_pci_cfg_cap match <linux/virtio_pci.h>",
    layout("virtio_pci_cap", PciCap, {
      CAP_VNDR: "cap_vndr",
      CAP_NEXT: "cap_next",
      CAP_LEN: "cap_len",
      CFG_TYPE: "cfg_type",
      BAR: "bar",
      ID: "id",
      PADDING: "padding",
      OFFSET: "offset",
      LENGTH: "length",
    }),
    constants(
      "PciCap",
      {
        CAP_VNDR: PciCap.CAP_VNDR,
        CAP_NEXT: PciCap.CAP_NEXT,
        CAP_LEN: PciCap.CAP_LEN,
        CFG_TYPE: PciCap.CFG_TYPE,
        BAR: PciCap.BAR,
        OFFSET: PciCap.OFFSET,
        LENGTH: PciCap.LENGTH,
      },
      {
        CAP_VNDR: "VIRTIO_PCI_CAP_VNDR",
        CAP_NEXT: "VIRTIO_PCI_CAP_NEXT",
        CAP_LEN: "VIRTIO_PCI_CAP_LEN",
        CFG_TYPE: "VIRTIO_PCI_CAP_CFG_TYPE",
        BAR: "VIRTIO_PCI_CAP_BAR",
        OFFSET: "VIRTIO_PCI_CAP_OFFSET",
        LENGTH: "VIRTIO_PCI_CAP_LENGTH",
      },
    ),
    layout("virtio_pci_cap64", PciCap64, { OFFSET_HI: "offset_hi", LENGTH_HI: "length_hi" }),
    layout("virtio_pci_notify_cap", PciNotifyCap, {
      NOTIFY_OFF_MULTIPLIER: "notify_off_multiplier",
    }),
    layout("virtio_pci_cfg_cap", PciCfgCap, { PCI_CFG_DATA: "pci_cfg_data" }),
  ),
  group(
    "virtio_pci_common_cfg offsets match <linux/virtio_pci.h> (VIRTIO_PCI_COMMON_*)",
    constants("PciCommonCfg", PciCommonCfg, {
      DEVICE_FEATURE_SELECT: "VIRTIO_PCI_COMMON_DFSELECT",
      DEVICE_FEATURE: "VIRTIO_PCI_COMMON_DF",
      DRIVER_FEATURE_SELECT: "VIRTIO_PCI_COMMON_GFSELECT",
      DRIVER_FEATURE: "VIRTIO_PCI_COMMON_GF",
      CONFIG_MSIX_VECTOR: "VIRTIO_PCI_COMMON_MSIX",
      NUM_QUEUES: "VIRTIO_PCI_COMMON_NUMQ",
      DEVICE_STATUS: "VIRTIO_PCI_COMMON_STATUS",
      CONFIG_GENERATION: "VIRTIO_PCI_COMMON_CFGGENERATION",
      QUEUE_SELECT: "VIRTIO_PCI_COMMON_Q_SELECT",
      QUEUE_SIZE: "VIRTIO_PCI_COMMON_Q_SIZE",
      QUEUE_MSIX_VECTOR: "VIRTIO_PCI_COMMON_Q_MSIX",
      QUEUE_ENABLE: "VIRTIO_PCI_COMMON_Q_ENABLE",
      QUEUE_NOTIFY_OFF: "VIRTIO_PCI_COMMON_Q_NOFF",
      QUEUE_DESC_LO: "VIRTIO_PCI_COMMON_Q_DESCLO",
      QUEUE_DESC_HI: "VIRTIO_PCI_COMMON_Q_DESCHI",
      QUEUE_DRIVER_LO: "VIRTIO_PCI_COMMON_Q_AVAILLO",
      QUEUE_DRIVER_HI: "VIRTIO_PCI_COMMON_Q_AVAILHI",
      QUEUE_DEVICE_LO: "VIRTIO_PCI_COMMON_Q_USEDLO",
      QUEUE_DEVICE_HI: "VIRTIO_PCI_COMMON_Q_USEDHI",
      QUEUE_NOTIF_CONFIG_DATA: "VIRTIO_PCI_COMMON_Q_NDATA",
      QUEUE_RESET: "VIRTIO_PCI_COMMON_Q_RESET",
      ADMIN_QUEUE_INDEX: newer,
      ADMIN_QUEUE_NUM: newer,
      SIZE: specOnly(
        "VIRTIO 1.3's struct ends after admin_queue_num; Linux 6.1's after queue_used_hi",
      ),
    }),
  ),
  group(
    "PCI header, command, status, BAR, capability ID and MSI-X constants match <linux/pci_regs.h>",
    prefixed("PciConfig", "PCI_", PciConfig, {
      CLASS_BASE: "(PCI_CLASS_DEVICE + 1)",
      HEADER_SIZE: "PCI_STD_HEADER_SIZEOF",
      SIZE: "PCI_CFG_SPACE_SIZE",
    }),
    prefixed("PciCommand", "PCI_COMMAND_", PciCommand),
    prefixed("PciStatus", "PCI_STATUS_", PciStatus),
    prefixed("PciBar", "PCI_BASE_ADDRESS_", PciBar, {
      IO_MASK: "(unsigned)PCI_BASE_ADDRESS_IO_MASK",
      MEM_MASK: "(unsigned)PCI_BASE_ADDRESS_MEM_MASK",
    }),
    prefixed("PciCapId", "PCI_CAP_ID_", PciCapId),
    prefixed("PciMsix", "PCI_MSIX_", PciMsix, {
      BIR_MASK: "PCI_MSIX_TABLE_BIR",
      CAP_SIZE: "PCI_CAP_MSIX_SIZEOF",
    }),
    constants("PciClass", PciClass, {
      STORAGE_SCSI: specOnly("class codes are in the kernel's pci_ids.h, not UAPI"),
      NETWORK_ETHERNET: specOnly("class codes are in the kernel's pci_ids.h, not UAPI"),
      DISPLAY_OTHER: specOnly("class codes are in the kernel's pci_ids.h, not UAPI"),
      MEMORY_RAM: specOnly("class codes are in the kernel's pci_ids.h, not UAPI"),
      COMMUNICATION_OTHER: specOnly("class codes are in the kernel's pci_ids.h, not UAPI"),
      INPUT_OTHER: specOnly("class codes are in the kernel's pci_ids.h, not UAPI"),
      OTHERS: specOnly("class codes are in the kernel's pci_ids.h, not UAPI"),
    }),
  ),
];

// ---------------------------------------------------------------------------------------------
// Compiling and running the C side

const C_DIR = fileURLToPath(new URL("./c/", import.meta.url));
const INSTALL =
  "install the Debian packages gcc and linux-libc-dev (apt-get install gcc libc6-dev linux-libc-dev)";
let work = "";

/** Compile test/c/<name>.c (with `-I work`) and return the path of the program. */
function compile(name: string): string {
  const bin = join(work, name);
  try {
    execFileSync(
      "gcc",
      [
        "-std=gnu11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-I",
        work,
        "-o",
        bin,
        join(C_DIR, `${name}.c`),
      ],
      {
        stdio: "pipe",
      },
    );
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    if (err.code === "ENOENT") throw new Error(`gcc is not installed: ${INSTALL}`);
    const stderr = err.stderr?.toString() ?? "";
    const missing = /([\w/]+\.h): No such file or directory/.exec(stderr);
    if (missing) throw new Error(`C header <${missing[1]}> is missing: ${INSTALL}\n${stderr}`);
    throw new Error(`gcc failed on test/c/${name}.c:\n${stderr}`);
  }
  return bin;
}

const run = (bin: string, input?: string) => execFileSync(bin, { encoding: "utf8", input });

// Compiled once; a failure (no gcc, no headers) is rethrown by every test so that each one
// fails with the install hint instead of being reported as skipped.
let header: Record<string, number> | Error = new Error("beforeAll did not run");

beforeAll(() => {
  work = mkdtempSync(join(tmpdir(), "virtio-ts-spec-"));
  const exprs = [...new Set(groups.flatMap((g) => g.checks.map((x) => x.expr)))];
  // JSON.stringify twice: the inner call makes the JSON key, the outer a C string literal of it.
  writeFileSync(
    join(work, "checks.h"),
    exprs.map((e) => `CHECK(${JSON.stringify(JSON.stringify(e))}, ${e})\n`).join(""),
  );
  try {
    header = JSON.parse(run(compile("layout"))) as Record<string, number>;
  } catch (e) {
    header = e as Error;
  }
});

function headerValues(): Record<string, number> {
  if (header instanceof Error) throw header;
  return header;
}

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe("@virtio-ts/spec against the Linux UAPI headers", () => {
  for (const { name, checks } of groups) {
    it(name, () => {
      const ours = Object.fromEntries(checks.map((x) => [x.label, x.ours]));
      const values = headerValues();
      const theirs = Object.fromEntries(checks.map((x) => [x.label, values[x.expr]]));
      expect(ours).toEqual(theirs);
    });
  }

  it("vringNeedEvent agrees with vring_need_event on 4096 index triples including wrap-around", () => {
    const picks = [
      0, 1, 2, 3, 0x7ffe, 0x7fff, 0x8000, 0x8001, 0xfffd, 0xfffe, 0xffff, 100, 255, 256, 4095, 4096,
    ];
    const cases: [number, number, number][] = [];
    for (const e of picks) for (const n of picks) for (const o of picks) cases.push([e, n, o]);
    const lines = run(compile("need_event"), cases.map((t) => t.join(" ")).join("\n"))
      .trim()
      .split("\n");
    expect(lines).toHaveLength(cases.length);
    expect(cases.map(([e, n, o]) => (vringNeedEvent(e, n, o) ? "1" : "0"))).toEqual(lines);
  });

  it("legacySplitLayout and the event offsets agree with vring_init and vring_size for sizes 1..32768", () => {
    const lines = run(compile("vring_layout")).trim().split("\n");
    const sizes = Array.from({ length: 16 }, (_, i) => 2 ** i);
    const ours = sizes.map((n) => {
      const l = legacySplitLayout(n, 4096);
      return `${n} ${l.avail} ${l.used} ${splitUsedEventOffset(n)} ${splitAvailEventOffset(n)} ${l.total}`;
    });
    expect(ours).toEqual(lines);
  });
});
