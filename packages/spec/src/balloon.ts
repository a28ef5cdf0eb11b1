/**
 * virtio-balloon (traditional memory balloon device) constants and layouts.
 * @see VIRTIO 1.3 §5.5 "Traditional Memory Balloon Device"
 * @module
 */

/**
 * The balloon's virtqueues in the standard's order. §5.5.2 lists them at fixed indices 0–4 and
 * says statsq, free_page_vq and reporting_vq exist only with their feature; deployed drivers
 * (Linux's `virtio_balloon` through `find_vqs`, both virtio-pci and virtio-mmio) number the
 * queues that exist densely instead, so the index of a queue depends on the negotiated features:
 * see {@link balloonQueueIndex}.
 */
export const BalloonQueue = {
  /** `inflateq`: arrays of page frame numbers the driver gives to the balloon. */
  INFLATE: 0,
  /** `deflateq`: arrays of page frame numbers the driver takes back. */
  DEFLATE: 1,
  /** `statsq` (VIRTIO_BALLOON_F_STATS_VQ): memory statistics, driven by the device. */
  STATS: 2,
  /** `free_page_vq` (VIRTIO_BALLOON_F_FREE_PAGE_HINT): free page hints. */
  FREE_PAGE: 3,
  /** `reporting_vq` (VIRTIO_BALLOON_F_PAGE_REPORTING): runs of free pages the driver reports. */
  REPORTING: 4,
} as const;
/** One balloon queue, by its position in the standard's list. */
export type BalloonQueue = (typeof BalloonQueue)[keyof typeof BalloonQueue];

/** virtio-balloon feature bits. §5.5.3 */
export const BalloonFeature = {
  /** The host has to be told before pages from the balloon are used. */
  MUST_TELL_HOST: 0,
  /** A virtqueue for guest memory statistics is present. */
  STATS_VQ: 1,
  /** The driver deflates the balloon when the guest runs out of memory. */
  DEFLATE_ON_OOM: 2,
  /** Free page hinting: the free_page_vq and `free_page_hint_cmd_id` are present. */
  FREE_PAGE_HINT: 3,
  /** The driver writes `poison_val` to pages after deflating them; `poison_val` is valid. */
  PAGE_POISON: 4,
  /** Free page reporting: the reporting_vq is present (Linux: VIRTIO_BALLOON_F_REPORTING). */
  PAGE_REPORTING: 5,
} as const;
/** One virtio-balloon feature bit number. */
export type BalloonFeature = (typeof BalloonFeature)[keyof typeof BalloonFeature];

/**
 * Device configuration `struct virtio_balloon_config` (every field little-endian, also for the
 * legacy interface). Writers: `num_pages` and `free_page_hint_cmd_id` the device; `actual` and
 * `poison_val` the driver. §5.5.4
 */
export const BalloonConfig = {
  /** `le32 num_pages`: the number of 4 KiB pages the host wants in the balloon. */
  NUM_PAGES: 0,
  /** `le32 actual`: the number of 4 KiB pages the driver has put in the balloon. */
  ACTUAL: 4,
  /** `le32 free_page_hint_cmd_id` (VIRTIO_BALLOON_F_FREE_PAGE_HINT), read-only for the driver. */
  FREE_PAGE_HINT_CMD_ID: 8,
  /** `le32 poison_val` (VIRTIO_BALLOON_F_PAGE_POISON), written by the driver before DRIVER_OK. */
  POISON_VAL: 12,
  /** Size in bytes. */
  SIZE: 16,
} as const;

/**
 * Page frame numbers on the inflate and deflate queues are addresses divided by 4096, "historical,
 * and independent of the guest page size" (§5.5.6): a guest with 64 KiB pages sends 16 PFNs per
 * page. This is the shift (Linux: VIRTIO_BALLOON_PFN_SHIFT).
 */
export const BALLOON_PFN_SHIFT = 12;

/** The balloon's page size in bytes: 1 << {@link BALLOON_PFN_SHIFT}. §5.5.6 */
export const BALLOON_PAGE_SIZE = 4096;

/** Reserved free page hint command IDs. §5.5.6.5 */
export const BalloonCmdId = {
  /** Any earlier command ID is invalid; stop hinting, keep the hinted pages. */
  STOP: 0,
  /** Any earlier command ID is invalid; stop hinting and release every hinted page. */
  DONE: 1,
} as const;
/** One reserved free page hint command ID. */
export type BalloonCmdId = (typeof BalloonCmdId)[keyof typeof BalloonCmdId];

/**
 * One memory statistic on the stats queue, `struct virtio_balloon_stat`: a `le16 tag` then a
 * `le64 val`, packed (10 bytes, so the value is not naturally aligned). §5.5.6.3.1 says "a multiple
 * of 6 bytes" for the buffer size; the structure it defines is 10 bytes and every driver sends
 * multiples of 10.
 */
export const BalloonStat = {
  /** `le16 tag`: one of {@link BalloonStatTag} (unknown tags are ignored, §5.5.6.3.2). */
  TAG: 0,
  /** `le64 val`: bytes for the memory figures, counts for the others. */
  VAL: 2,
  /** Size in bytes. */
  SIZE: 10,
} as const;

/** Memory statistics tags. §5.5.6.4 */
export const BalloonStatTag = {
  /** Memory swapped in (bytes). */
  SWAP_IN: 0,
  /** Memory swapped out to disk (bytes). */
  SWAP_OUT: 1,
  /** Major page faults (count). */
  MAJFLT: 2,
  /** Minor page faults (count). */
  MINFLT: 3,
  /** Memory not used for any purpose (bytes). */
  MEMFREE: 4,
  /** Total memory available (bytes). */
  MEMTOT: 5,
  /** Estimate of the memory available for new applications without swapping (bytes). */
  AVAIL: 6,
  /** Memory that can be reclaimed quickly without I/O, e.g. file caches (bytes). */
  CACHES: 7,
  /** Successful hugetlb page allocations (count). */
  HTLB_PGALLOC: 8,
  /** Failed hugetlb page allocations (count). */
  HTLB_PGFAIL: 9,
} as const;
/** One memory statistics tag. */
export type BalloonStatTag = (typeof BalloonStatTag)[keyof typeof BalloonStatTag];

/** Number of standard statistics tags (Linux: VIRTIO_BALLOON_S_NR). */
export const BALLOON_STAT_TAGS = 10;

/**
 * Queue features in their standard order: the feature that makes each optional queue exist
 * (index = position in {@link BalloonQueue}).
 */
const OPTIONAL_QUEUES: readonly [BalloonQueue, BalloonFeature][] = [
  [BalloonQueue.STATS, BalloonFeature.STATS_VQ],
  [BalloonQueue.FREE_PAGE, BalloonFeature.FREE_PAGE_HINT],
  [BalloonQueue.REPORTING, BalloonFeature.PAGE_REPORTING],
];

/**
 * The virtqueue index of balloon queue `queue` for the feature set `features`, as drivers in the
 * field number them: inflateq 0, deflateq 1, then the optional queues whose feature is in
 * `features`, in the order of §5.5.2, one after the other. Linux 6.1's `virtio_balloon` asks
 * `find_vqs` for all five and gets the absent ones skipped (virtio-pci and virtio-mmio alike). With `fixed`, the indices of the §5.5.2 list
 * (0–4) are returned instead. (QEMU numbers by the features it *offers*, with the stats queue
 * always present because it always offers STATS_VQ; the two agree whenever the driver accepts
 * every optional queue offered, which Linux does.)
 *
 * @param queue - the queue, as a {@link BalloonQueue}
 * @param features - the negotiated feature bits (a bigint mask)
 * @param fixed - number by the standard's list instead (default false)
 * @returns the index, or undefined when the queue does not exist for `features`
 */
export function balloonQueueIndex(
  queue: BalloonQueue,
  features: bigint,
  fixed = false,
): number | undefined {
  if (queue === BalloonQueue.INFLATE || queue === BalloonQueue.DEFLATE) return queue;
  let index = 2;
  for (const [q, bit] of OPTIONAL_QUEUES) {
    const present = ((features >> BigInt(bit)) & 1n) === 1n;
    if (q === queue) {
      if (!present) return undefined;
      return fixed ? q : index;
    }
    if (present) index++;
  }
  return undefined;
}
