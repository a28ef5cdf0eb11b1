// Every constant and wire layout in @virtio-ts/spec is compared with the Linux UAPI headers:
// the table below is turned into a C program, compiled with gcc against <linux/virtio_*.h>,
// and its printout is compared value by value. Adding a check is one line.
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BLK_ID_BYTES,
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
  NetMqPairs,
  NetStatus,
  PackedDesc,
  PackedDescFlags,
  PackedEvent,
  PackedEventFlags,
  SplitAvail,
  SplitDesc,
  SplitDescFlags,
  SplitUsed,
  VIRTQ_AVAIL_F_NO_INTERRUPT,
  VIRTQ_USED_F_NO_NOTIFY,
  vringNeedEvent,
} from "@virtio-ts/spec";
import { beforeAll, describe, expect, it } from "vitest";

type Check = [label: string, cExpr: string, ours: number];
const off = (s: string, f: string) => `offsetof(struct ${s}, ${f})`;
const size = (s: string) => `sizeof(struct ${s})`;

const groups: Record<string, Check[]> = {
  "device status bits match <linux/virtio_config.h>": [
    ["ACKNOWLEDGE", "VIRTIO_CONFIG_S_ACKNOWLEDGE", DeviceStatus.ACKNOWLEDGE],
    ["DRIVER", "VIRTIO_CONFIG_S_DRIVER", DeviceStatus.DRIVER],
    ["DRIVER_OK", "VIRTIO_CONFIG_S_DRIVER_OK", DeviceStatus.DRIVER_OK],
    ["FEATURES_OK", "VIRTIO_CONFIG_S_FEATURES_OK", DeviceStatus.FEATURES_OK],
    ["NEEDS_RESET", "VIRTIO_CONFIG_S_NEEDS_RESET", DeviceStatus.DEVICE_NEEDS_RESET],
    ["FAILED", "VIRTIO_CONFIG_S_FAILED", DeviceStatus.FAILED],
  ],
  "common feature bits match <linux/virtio_config.h> and <linux/virtio_ring.h>": [
    ["INDIRECT_DESC", "VIRTIO_RING_F_INDIRECT_DESC", Feature.RING_INDIRECT_DESC],
    ["EVENT_IDX", "VIRTIO_RING_F_EVENT_IDX", Feature.RING_EVENT_IDX],
    ["VERSION_1", "VIRTIO_F_VERSION_1", Feature.VERSION_1],
    ["ACCESS_PLATFORM", "VIRTIO_F_ACCESS_PLATFORM", Feature.ACCESS_PLATFORM],
    ["RING_PACKED", "VIRTIO_F_RING_PACKED", Feature.RING_PACKED],
    ["IN_ORDER", "VIRTIO_F_IN_ORDER", Feature.IN_ORDER],
    ["ORDER_PLATFORM", "VIRTIO_F_ORDER_PLATFORM", Feature.ORDER_PLATFORM],
    ["SR_IOV", "VIRTIO_F_SR_IOV", Feature.SR_IOV],
    ["RING_RESET", "VIRTIO_F_RING_RESET", Feature.RING_RESET],
    // NOTIFICATION_DATA (38) is newer than the Linux 6.1 headers on Debian 12: spec-only.
  ],
  "device IDs match <linux/virtio_ids.h>": [
    ["NET", "VIRTIO_ID_NET", DeviceId.NET],
    ["BLOCK", "VIRTIO_ID_BLOCK", DeviceId.BLOCK],
    ["CONSOLE", "VIRTIO_ID_CONSOLE", DeviceId.CONSOLE],
    ["RNG", "VIRTIO_ID_RNG", DeviceId.RNG],
    ["BALLOON", "VIRTIO_ID_BALLOON", DeviceId.BALLOON],
    ["SCSI", "VIRTIO_ID_SCSI", DeviceId.SCSI],
    ["9P", "VIRTIO_ID_9P", DeviceId.NINE_P],
    ["GPU", "VIRTIO_ID_GPU", DeviceId.GPU],
    ["INPUT", "VIRTIO_ID_INPUT", DeviceId.INPUT],
    ["VSOCK", "VIRTIO_ID_VSOCK", DeviceId.VSOCK],
    ["CRYPTO", "VIRTIO_ID_CRYPTO", DeviceId.CRYPTO],
    ["IOMMU", "VIRTIO_ID_IOMMU", DeviceId.IOMMU],
    ["MEM", "VIRTIO_ID_MEM", DeviceId.MEM],
    ["SOUND", "VIRTIO_ID_SOUND", DeviceId.SOUND],
    ["FS", "VIRTIO_ID_FS", DeviceId.FS],
    ["PMEM", "VIRTIO_ID_PMEM", DeviceId.PMEM],
    ["I2C_ADAPTER", "VIRTIO_ID_I2C_ADAPTER", DeviceId.I2C_ADAPTER],
    ["GPIO", "VIRTIO_ID_GPIO", DeviceId.GPIO],
  ],
  "split ring layouts match <linux/virtio_ring.h>": [
    ["desc size", size("vring_desc"), SplitDesc.SIZE],
    ["desc.addr", off("vring_desc", "addr"), SplitDesc.ADDR],
    ["desc.len", off("vring_desc", "len"), SplitDesc.LEN],
    ["desc.flags", off("vring_desc", "flags"), SplitDesc.FLAGS],
    ["desc.next", off("vring_desc", "next"), SplitDesc.NEXT],
    ["avail.flags", off("vring_avail", "flags"), SplitAvail.FLAGS],
    ["avail.idx", off("vring_avail", "idx"), SplitAvail.IDX],
    ["avail.ring", off("vring_avail", "ring"), SplitAvail.RING],
    ["used.flags", off("vring_used", "flags"), SplitUsed.FLAGS],
    ["used.idx", off("vring_used", "idx"), SplitUsed.IDX],
    ["used.ring", off("vring_used", "ring"), SplitUsed.RING],
    ["used elem size", size("vring_used_elem"), SplitUsed.ENTRY_SIZE],
    ["used elem id", off("vring_used_elem", "id"), SplitUsed.ELEM_ID],
    ["used elem len", off("vring_used_elem", "len"), SplitUsed.ELEM_LEN],
    ["F_NEXT", "VRING_DESC_F_NEXT", SplitDescFlags.NEXT],
    ["F_WRITE", "VRING_DESC_F_WRITE", SplitDescFlags.WRITE],
    ["F_INDIRECT", "VRING_DESC_F_INDIRECT", SplitDescFlags.INDIRECT],
    ["NO_INTERRUPT", "VRING_AVAIL_F_NO_INTERRUPT", VIRTQ_AVAIL_F_NO_INTERRUPT],
    ["NO_NOTIFY", "VRING_USED_F_NO_NOTIFY", VIRTQ_USED_F_NO_NOTIFY],
  ],
  "packed ring layouts match <linux/virtio_ring.h>": [
    ["desc size", size("vring_packed_desc"), PackedDesc.SIZE],
    ["desc.addr", off("vring_packed_desc", "addr"), PackedDesc.ADDR],
    ["desc.len", off("vring_packed_desc", "len"), PackedDesc.LEN],
    ["desc.id", off("vring_packed_desc", "id"), PackedDesc.ID],
    ["desc.flags", off("vring_packed_desc", "flags"), PackedDesc.FLAGS],
    ["event size", size("vring_packed_desc_event"), PackedEvent.SIZE],
    ["event.off_wrap", off("vring_packed_desc_event", "off_wrap"), PackedEvent.OFF_WRAP],
    ["event.flags", off("vring_packed_desc_event", "flags"), PackedEvent.FLAGS],
    ["F_AVAIL", "(1 << VRING_PACKED_DESC_F_AVAIL)", PackedDescFlags.AVAIL],
    ["F_USED", "(1 << VRING_PACKED_DESC_F_USED)", PackedDescFlags.USED],
    ["EVENT_F_ENABLE", "VRING_PACKED_EVENT_FLAG_ENABLE", PackedEventFlags.ENABLE],
    ["EVENT_F_DISABLE", "VRING_PACKED_EVENT_FLAG_DISABLE", PackedEventFlags.DISABLE],
    ["EVENT_F_DESC", "VRING_PACKED_EVENT_FLAG_DESC", PackedEventFlags.DESC],
  ],
  "virtio-blk constants and structs match <linux/virtio_blk.h>": [
    ["F_SIZE_MAX", "VIRTIO_BLK_F_SIZE_MAX", BlkFeature.SIZE_MAX],
    ["F_SEG_MAX", "VIRTIO_BLK_F_SEG_MAX", BlkFeature.SEG_MAX],
    ["F_GEOMETRY", "VIRTIO_BLK_F_GEOMETRY", BlkFeature.GEOMETRY],
    ["F_RO", "VIRTIO_BLK_F_RO", BlkFeature.RO],
    ["F_BLK_SIZE", "VIRTIO_BLK_F_BLK_SIZE", BlkFeature.BLK_SIZE],
    ["F_FLUSH", "VIRTIO_BLK_F_FLUSH", BlkFeature.FLUSH],
    ["F_TOPOLOGY", "VIRTIO_BLK_F_TOPOLOGY", BlkFeature.TOPOLOGY],
    ["F_CONFIG_WCE", "VIRTIO_BLK_F_CONFIG_WCE", BlkFeature.CONFIG_WCE],
    ["F_MQ", "VIRTIO_BLK_F_MQ", BlkFeature.MQ],
    ["F_DISCARD", "VIRTIO_BLK_F_DISCARD", BlkFeature.DISCARD],
    ["F_WRITE_ZEROES", "VIRTIO_BLK_F_WRITE_ZEROES", BlkFeature.WRITE_ZEROES],
    ["F_SECURE_ERASE", "VIRTIO_BLK_F_SECURE_ERASE", BlkFeature.SECURE_ERASE],
    ["T_IN", "VIRTIO_BLK_T_IN", BlkRequestType.IN],
    ["T_OUT", "VIRTIO_BLK_T_OUT", BlkRequestType.OUT],
    ["T_FLUSH", "VIRTIO_BLK_T_FLUSH", BlkRequestType.FLUSH],
    ["T_GET_ID", "VIRTIO_BLK_T_GET_ID", BlkRequestType.GET_ID],
    ["T_DISCARD", "VIRTIO_BLK_T_DISCARD", BlkRequestType.DISCARD],
    ["T_WRITE_ZEROES", "VIRTIO_BLK_T_WRITE_ZEROES", BlkRequestType.WRITE_ZEROES],
    ["T_SECURE_ERASE", "VIRTIO_BLK_T_SECURE_ERASE", BlkRequestType.SECURE_ERASE],
    ["S_OK", "VIRTIO_BLK_S_OK", BlkStatus.OK],
    ["S_IOERR", "VIRTIO_BLK_S_IOERR", BlkStatus.IOERR],
    ["S_UNSUPP", "VIRTIO_BLK_S_UNSUPP", BlkStatus.UNSUPP],
    ["ID_BYTES", "VIRTIO_BLK_ID_BYTES", BLK_ID_BYTES],
    ["outhdr size", size("virtio_blk_outhdr"), BlkOutHdr.SIZE],
    ["outhdr.type", off("virtio_blk_outhdr", "type"), BlkOutHdr.TYPE],
    ["outhdr.ioprio", off("virtio_blk_outhdr", "ioprio"), BlkOutHdr.IOPRIO],
    ["outhdr.sector", off("virtio_blk_outhdr", "sector"), BlkOutHdr.SECTOR],
    ["dwz size", size("virtio_blk_discard_write_zeroes"), BlkDiscardWriteZeroes.SIZE],
    ["dwz.sector", off("virtio_blk_discard_write_zeroes", "sector"), BlkDiscardWriteZeroes.SECTOR],
    [
      "dwz.num_sectors",
      off("virtio_blk_discard_write_zeroes", "num_sectors"),
      BlkDiscardWriteZeroes.NUM_SECTORS,
    ],
    ["dwz.flags", off("virtio_blk_discard_write_zeroes", "flags"), BlkDiscardWriteZeroes.FLAGS],
    ["FLAG_UNMAP", "VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP", BlkDiscardWriteZeroes.FLAG_UNMAP],
    ["config size", size("virtio_blk_config"), BlkConfig.SIZE],
    ["config.capacity", off("virtio_blk_config", "capacity"), BlkConfig.CAPACITY],
    ["config.size_max", off("virtio_blk_config", "size_max"), BlkConfig.SIZE_MAX],
    ["config.seg_max", off("virtio_blk_config", "seg_max"), BlkConfig.SEG_MAX],
    [
      "config.geometry.cylinders",
      off("virtio_blk_config", "geometry.cylinders"),
      BlkConfig.GEOMETRY_CYLINDERS,
    ],
    ["config.geometry.heads", off("virtio_blk_config", "geometry.heads"), BlkConfig.GEOMETRY_HEADS],
    [
      "config.geometry.sectors",
      off("virtio_blk_config", "geometry.sectors"),
      BlkConfig.GEOMETRY_SECTORS,
    ],
    ["config.blk_size", off("virtio_blk_config", "blk_size"), BlkConfig.BLK_SIZE],
    [
      "config.physical_block_exp",
      off("virtio_blk_config", "physical_block_exp"),
      BlkConfig.PHYSICAL_BLOCK_EXP,
    ],
    [
      "config.alignment_offset",
      off("virtio_blk_config", "alignment_offset"),
      BlkConfig.ALIGNMENT_OFFSET,
    ],
    ["config.min_io_size", off("virtio_blk_config", "min_io_size"), BlkConfig.MIN_IO_SIZE],
    ["config.opt_io_size", off("virtio_blk_config", "opt_io_size"), BlkConfig.OPT_IO_SIZE],
    ["config.wce", off("virtio_blk_config", "wce"), BlkConfig.WRITEBACK],
    ["config.num_queues", off("virtio_blk_config", "num_queues"), BlkConfig.NUM_QUEUES],
    [
      "config.max_discard_sectors",
      off("virtio_blk_config", "max_discard_sectors"),
      BlkConfig.MAX_DISCARD_SECTORS,
    ],
    [
      "config.max_discard_seg",
      off("virtio_blk_config", "max_discard_seg"),
      BlkConfig.MAX_DISCARD_SEG,
    ],
    [
      "config.discard_sector_alignment",
      off("virtio_blk_config", "discard_sector_alignment"),
      BlkConfig.DISCARD_SECTOR_ALIGNMENT,
    ],
    [
      "config.max_write_zeroes_sectors",
      off("virtio_blk_config", "max_write_zeroes_sectors"),
      BlkConfig.MAX_WRITE_ZEROES_SECTORS,
    ],
    [
      "config.max_write_zeroes_seg",
      off("virtio_blk_config", "max_write_zeroes_seg"),
      BlkConfig.MAX_WRITE_ZEROES_SEG,
    ],
    [
      "config.write_zeroes_may_unmap",
      off("virtio_blk_config", "write_zeroes_may_unmap"),
      BlkConfig.WRITE_ZEROES_MAY_UNMAP,
    ],
    [
      "config.max_secure_erase_sectors",
      off("virtio_blk_config", "max_secure_erase_sectors"),
      BlkConfig.MAX_SECURE_ERASE_SECTORS,
    ],
    [
      "config.max_secure_erase_seg",
      off("virtio_blk_config", "max_secure_erase_seg"),
      BlkConfig.MAX_SECURE_ERASE_SEG,
    ],
    [
      "config.secure_erase_sector_alignment",
      off("virtio_blk_config", "secure_erase_sector_alignment"),
      BlkConfig.SECURE_ERASE_SECTOR_ALIGNMENT,
    ],
  ],
  "virtio-net constants and structs match <linux/virtio_net.h>": [
    ...(Object.entries(NetFeature).map(([k, v]) => [`F_${k}`, `VIRTIO_NET_F_${k}`, v]) as Check[]),
    ["hdr_v1 size", size("virtio_net_hdr_v1"), NetHdr.SIZE],
    ["legacy hdr size", size("virtio_net_hdr"), NetHdr.LEGACY_SIZE],
    ["hdr.flags", off("virtio_net_hdr_v1", "flags"), NetHdr.FLAGS],
    ["hdr.gso_type", off("virtio_net_hdr_v1", "gso_type"), NetHdr.GSO_TYPE],
    ["hdr.hdr_len", off("virtio_net_hdr_v1", "hdr_len"), NetHdr.HDR_LEN],
    ["hdr.gso_size", off("virtio_net_hdr_v1", "gso_size"), NetHdr.GSO_SIZE],
    ["hdr.csum_start", off("virtio_net_hdr_v1", "csum_start"), NetHdr.CSUM_START],
    ["hdr.csum_offset", off("virtio_net_hdr_v1", "csum_offset"), NetHdr.CSUM_OFFSET],
    ["hdr.num_buffers", off("virtio_net_hdr_v1", "num_buffers"), NetHdr.NUM_BUFFERS],
    ["F_NEEDS_CSUM", "VIRTIO_NET_HDR_F_NEEDS_CSUM", NetHdrFlags.NEEDS_CSUM],
    ["F_DATA_VALID", "VIRTIO_NET_HDR_F_DATA_VALID", NetHdrFlags.DATA_VALID],
    ["F_RSC_INFO", "VIRTIO_NET_HDR_F_RSC_INFO", NetHdrFlags.RSC_INFO],
    ["GSO_NONE", "VIRTIO_NET_HDR_GSO_NONE", NetGsoType.NONE],
    ["GSO_TCPV4", "VIRTIO_NET_HDR_GSO_TCPV4", NetGsoType.TCPV4],
    ["GSO_UDP", "VIRTIO_NET_HDR_GSO_UDP", NetGsoType.UDP],
    ["GSO_TCPV6", "VIRTIO_NET_HDR_GSO_TCPV6", NetGsoType.TCPV6],
    ["GSO_ECN", "VIRTIO_NET_HDR_GSO_ECN", NetGsoType.ECN],
    ["config.mac", off("virtio_net_config", "mac"), NetConfig.MAC],
    ["config.status", off("virtio_net_config", "status"), NetConfig.STATUS],
    [
      "config.max_virtqueue_pairs",
      off("virtio_net_config", "max_virtqueue_pairs"),
      NetConfig.MAX_VIRTQUEUE_PAIRS,
    ],
    ["config.mtu", off("virtio_net_config", "mtu"), NetConfig.MTU],
    ["config.speed", off("virtio_net_config", "speed"), NetConfig.SPEED],
    ["config.duplex", off("virtio_net_config", "duplex"), NetConfig.DUPLEX],
    [
      "config.rss_max_key_size",
      off("virtio_net_config", "rss_max_key_size"),
      NetConfig.RSS_MAX_KEY_SIZE,
    ],
    [
      "config.rss_max_indirection_table_length",
      off("virtio_net_config", "rss_max_indirection_table_length"),
      NetConfig.RSS_MAX_INDIRECTION_TABLE_LENGTH,
    ],
    [
      "config.supported_hash_types",
      off("virtio_net_config", "supported_hash_types"),
      NetConfig.SUPPORTED_HASH_TYPES,
    ],
    ["config size", size("virtio_net_config"), NetConfig.SIZE],
    ["S_LINK_UP", "VIRTIO_NET_S_LINK_UP", NetStatus.LINK_UP],
    ["S_ANNOUNCE", "VIRTIO_NET_S_ANNOUNCE", NetStatus.ANNOUNCE],
    ["CTRL_RX", "VIRTIO_NET_CTRL_RX", NetCtrlClass.RX],
    ["CTRL_MAC", "VIRTIO_NET_CTRL_MAC", NetCtrlClass.MAC],
    ["CTRL_VLAN", "VIRTIO_NET_CTRL_VLAN", NetCtrlClass.VLAN],
    ["CTRL_ANNOUNCE", "VIRTIO_NET_CTRL_ANNOUNCE", NetCtrlClass.ANNOUNCE],
    ["CTRL_MQ", "VIRTIO_NET_CTRL_MQ", NetCtrlClass.MQ],
    ["CTRL_GUEST_OFFLOADS", "VIRTIO_NET_CTRL_GUEST_OFFLOADS", NetCtrlClass.GUEST_OFFLOADS],
    ["RX_PROMISC", "VIRTIO_NET_CTRL_RX_PROMISC", NetCtrlCmd.RX_PROMISC],
    ["RX_ALLMULTI", "VIRTIO_NET_CTRL_RX_ALLMULTI", NetCtrlCmd.RX_ALLMULTI],
    ["RX_ALLUNI", "VIRTIO_NET_CTRL_RX_ALLUNI", NetCtrlCmd.RX_ALLUNI],
    ["RX_NOMULTI", "VIRTIO_NET_CTRL_RX_NOMULTI", NetCtrlCmd.RX_NOMULTI],
    ["RX_NOUNI", "VIRTIO_NET_CTRL_RX_NOUNI", NetCtrlCmd.RX_NOUNI],
    ["RX_NOBCAST", "VIRTIO_NET_CTRL_RX_NOBCAST", NetCtrlCmd.RX_NOBCAST],
    ["MAC_TABLE_SET", "VIRTIO_NET_CTRL_MAC_TABLE_SET", NetCtrlCmd.MAC_TABLE_SET],
    ["MAC_ADDR_SET", "VIRTIO_NET_CTRL_MAC_ADDR_SET", NetCtrlCmd.MAC_ADDR_SET],
    ["VLAN_ADD", "VIRTIO_NET_CTRL_VLAN_ADD", NetCtrlCmd.VLAN_ADD],
    ["VLAN_DEL", "VIRTIO_NET_CTRL_VLAN_DEL", NetCtrlCmd.VLAN_DEL],
    ["ANNOUNCE_ACK", "VIRTIO_NET_CTRL_ANNOUNCE_ACK", NetCtrlCmd.ANNOUNCE_ACK],
    ["MQ_VQ_PAIRS_SET", "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET", NetCtrlCmd.MQ_VQ_PAIRS_SET],
    ["MQ_VQ_PAIRS_MIN", "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN", NetMqPairs.MIN],
    ["MQ_VQ_PAIRS_MAX", "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX", NetMqPairs.MAX],
    ["GUEST_OFFLOADS_SET", "VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET", NetCtrlCmd.GUEST_OFFLOADS_SET],
    ["OK", "VIRTIO_NET_OK", NetCtrlAck.OK],
    ["ERR", "VIRTIO_NET_ERR", NetCtrlAck.ERR],
    ["ctrl hdr size", size("virtio_net_ctrl_hdr"), NetCtrlHdr.SIZE],
    ["ctrl hdr class", off("virtio_net_ctrl_hdr", "class"), NetCtrlHdr.CLASS],
    ["ctrl hdr cmd", off("virtio_net_ctrl_hdr", "cmd"), NetCtrlHdr.COMMAND],
  ],
  "virtio-console constants and structs match <linux/virtio_console.h>": [
    ["F_SIZE", "VIRTIO_CONSOLE_F_SIZE", ConsoleFeature.SIZE],
    ["F_MULTIPORT", "VIRTIO_CONSOLE_F_MULTIPORT", ConsoleFeature.MULTIPORT],
    ["F_EMERG_WRITE", "VIRTIO_CONSOLE_F_EMERG_WRITE", ConsoleFeature.EMERG_WRITE],
    ["config.cols", off("virtio_console_config", "cols"), ConsoleConfig.COLS],
    ["config.rows", off("virtio_console_config", "rows"), ConsoleConfig.ROWS],
    [
      "config.max_nr_ports",
      off("virtio_console_config", "max_nr_ports"),
      ConsoleConfig.MAX_NR_PORTS,
    ],
    ["config.emerg_wr", off("virtio_console_config", "emerg_wr"), ConsoleConfig.EMERG_WR],
    ["config size", size("virtio_console_config"), ConsoleConfig.SIZE],
    ["control.id", off("virtio_console_control", "id"), ConsoleControl.ID],
    ["control.event", off("virtio_console_control", "event"), ConsoleControl.EVENT],
    ["control.value", off("virtio_console_control", "value"), ConsoleControl.VALUE],
    ["control size", size("virtio_console_control"), ConsoleControl.SIZE],
    ["DEVICE_READY", "VIRTIO_CONSOLE_DEVICE_READY", ConsoleEvent.DEVICE_READY],
    ["PORT_ADD", "VIRTIO_CONSOLE_PORT_ADD", ConsoleEvent.DEVICE_ADD],
    ["PORT_REMOVE", "VIRTIO_CONSOLE_PORT_REMOVE", ConsoleEvent.DEVICE_REMOVE],
    ["PORT_READY", "VIRTIO_CONSOLE_PORT_READY", ConsoleEvent.PORT_READY],
    ["CONSOLE_PORT", "VIRTIO_CONSOLE_CONSOLE_PORT", ConsoleEvent.CONSOLE_PORT],
    ["RESIZE", "VIRTIO_CONSOLE_RESIZE", ConsoleEvent.RESIZE],
    ["PORT_OPEN", "VIRTIO_CONSOLE_PORT_OPEN", ConsoleEvent.PORT_OPEN],
    ["PORT_NAME", "VIRTIO_CONSOLE_PORT_NAME", ConsoleEvent.PORT_NAME],
  ],
  "virtio-mmio registers match <linux/virtio_mmio.h>": [
    ["MAGIC", "('v' | 'i' << 8 | 'r' << 16 | 't' << 24)", MMIO_MAGIC],
    ["INT_VRING", "VIRTIO_MMIO_INT_VRING", MmioInterrupt.VRING],
    ["INT_CONFIG", "VIRTIO_MMIO_INT_CONFIG", MmioInterrupt.CONFIG],
    // QUEUE_RESET (0x0c0) is newer than the Linux 6.1 headers: spec-only (VIRTIO 1.2 §4.2.2).
    ...(Object.entries(MmioReg)
      .filter(([k]) => k !== "QUEUE_RESET")
      .map(([k, v]) => [
        k,
        `VIRTIO_MMIO_${k.replace("QUEUE_DRIVER", "QUEUE_AVAIL").replace("QUEUE_DEVICE", "QUEUE_USED")}`,
        v,
      ]) as Check[]),
  ],
};

const HEADERS = [
  "virtio_config",
  "virtio_ids",
  "virtio_ring",
  "virtio_blk",
  "virtio_net",
  "virtio_mmio",
  "virtio_console",
];
let values: Record<string, number> = {};
let c: (expr: string) => string = () => "";

/** Compile and run a generated C program printing one value per line; returns the lines. */
function compileAndRun(name: string, source: string): string[] {
  const dir = mkdtempSync(join(tmpdir(), "virtio-ts-spec-"));
  const src = join(dir, `${name}.c`);
  const bin = join(dir, name);
  writeFileSync(src, source);
  try {
    execFileSync("gcc", ["-std=gnu11", "-Wall", "-Werror", "-o", bin, src], { stdio: "pipe" });
  } catch (e) {
    const err = e as { code?: string; stderr?: Buffer };
    if (err.code === "ENOENT") {
      throw new Error(
        "gcc not found: install the Debian packages gcc and linux-libc-dev (CI does)",
      );
    }
    throw new Error(
      `gcc failed (are the linux-libc-dev headers installed?):\n${err.stderr?.toString()}`,
    );
  }
  return execFileSync(bin, { encoding: "utf8" }).trim().split("\n");
}

beforeAll(() => {
  const all = Object.values(groups).flat();
  const exprs = [...new Set(all.map(([, e]) => e))];
  const source = [
    "#include <stddef.h>",
    "#include <stdio.h>",
    ...HEADERS.map((h) => `#include <linux/${h}.h>`),
    "int main(void) {",
    ...exprs.map((e) => `  printf("%llu\\n", (unsigned long long)(${e}));`),
    "  return 0;",
    "}",
  ].join("\n");
  const lines = compileAndRun("layout", source);
  values = Object.fromEntries(exprs.map((e, i) => [e, Number(lines[i])]));
  c = (expr) => `${values[expr]}`;
});

describe("@virtio-ts/spec against the Linux UAPI headers", () => {
  for (const [name, checks] of Object.entries(groups)) {
    it(name, () => {
      const ours = Object.fromEntries(checks.map(([label, , v]) => [label, v]));
      const theirs = Object.fromEntries(checks.map(([label, expr]) => [label, Number(c(expr))]));
      expect(ours).toEqual(theirs);
    });
  }

  it("vringNeedEvent agrees with vring_need_event on wrap-around cases", () => {
    const cases: [number, number, number][] = [];
    const pick = [0, 1, 2, 3, 0x7fff, 0x8000, 0xfffe, 0xffff];
    for (const e of pick) for (const n of pick) for (const o of pick) cases.push([e, n, o]);
    const source = [
      "#include <stdio.h>",
      "#include <linux/virtio_ring.h>",
      "static const unsigned short c[][3] = {",
      ...cases.map(([e, n, o]) => `  {${e}, ${n}, ${o}},`),
      "};",
      "int main(void) {",
      '  for (unsigned i = 0; i < sizeof c / sizeof c[0]; i++) printf("%d\\n", vring_need_event(c[i][0], c[i][1], c[i][2]));',
      "  return 0;",
      "}",
    ].join("\n");
    const lines = compileAndRun("need_event", source);
    expect(cases.map(([e, n, o]) => (vringNeedEvent(e, n, o) ? "1" : "0"))).toEqual(lines);
  });

  it("legacySplitLayout agrees with vring_init and vring_size for every power-of-two size", () => {
    const sizes = Array.from({ length: 16 }, (_, i) => 2 ** i);
    const source = [
      "#include <stdio.h>",
      "#include <stdint.h>",
      "#include <linux/virtio_ring.h>",
      "int main(void) {",
      "  for (unsigned n = 1; n <= 32768; n *= 2) {",
      "    struct vring vr; vring_init(&vr, n, (void *)0, 4096);",
      '    printf("%lu %lu %lu\\n", (unsigned long)(uintptr_t)vr.avail, (unsigned long)(uintptr_t)vr.used, (unsigned long)vring_size(n, 4096));',
      "  }",
      "  return 0;",
      "}",
    ].join("\n");
    const lines = compileAndRun("vring_size", source);
    expect(
      sizes.map((n) => {
        const l = legacySplitLayout(n);
        return `${l.avail} ${l.used} ${l.total}`;
      }),
    ).toEqual(lines);
  });
});
