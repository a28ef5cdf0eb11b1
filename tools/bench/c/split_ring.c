// C baseline for tools/bench: the same split-ring round trip as the TypeScript bench
// (driver: add + publish, device: pop + push, driver: reap), over a <linux/virtio_ring.h>
// vring with VIRTIO_F_EVENT_IDX notification suppression, in one thread or in two pthreads.
//
// Same shape as the TypeScript code it is compared with:
// - 2-descriptor chains (16 readable bytes, 64 writable bytes), driver batches of BATCH;
// - the driver keeps a private shadow of its free list and checks every used id and length;
// - the device validates every descriptor (head and next in range, no loop: an epoch-stamped
//   visited map, chain length within the queue size, readable before writable, buffer inside
//   guest memory, no INDIRECT) and remembers which heads are in flight;
// - idx fields are C11 atomics (release store / acquire load), with a seq_cst fence between
//   publishing an index and reading the other side's event index (Linux's virtio_mb);
// - doorbells are futex words (the Atomics.wait / Atomics.notify analogue); a waker makes the
//   wake syscall only if someone may be asleep, as V8 does.
//
// Build: gcc -O2 -pthread -o split_ring split_ring.c
// Usage: split_ring single|single-deferred|threads OPS QUEUE_SIZE BATCH
// (single-deferred: the device writes each used element and publishes used.idx once per batch,
// QEMU's virtqueue_fill / virtqueue_flush, as the TypeScript rows with `use` + `publishUsed`.)
// Prints: "<measured ops> <nanoseconds> <kicks> <interrupts> <cpu nanoseconds>" (the first fifth
// of OPS is warm-up, not measured; kicks and interrupts are counted over the whole run; CPU time
// is the process's, every thread, over the measured part).
#define _GNU_SOURCE
#include <linux/futex.h>
#include <linux/virtio_ring.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RING_ALIGN 4096
#define DATA_READ_LEN 16
#define DATA_WRITE_LEN 64
#define MEM_SIZE (1u << 20)

#define A16(p) ((_Atomic uint16_t *)(p))

static uint8_t *mem;
static struct vring vr;
static unsigned num;

static void die(const char *what) {
  fprintf(stderr, "split_ring: %s\n", what);
  exit(2);
}

/* CPU time of the whole process (every thread), for the CPU-time ratios. */
static uint64_t cpu_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- driver */

static struct {
  uint16_t free_head, num_free, avail_idx, kicked_idx, last_used;
  int interrupts_enabled;
  uint16_t *next;      /* private shadow of the free list / chains */
  uint16_t *ndesc;     /* descriptors per in-flight head */
  uint32_t *writable;  /* writable bytes offered per in-flight head */
  uint32_t *token;     /* token per in-flight head */
  uint8_t *in_flight;
  uint32_t last_len;
} drv;

static void driver_init(void) {
  drv.next = calloc(num, sizeof *drv.next);
  drv.ndesc = calloc(num, sizeof *drv.ndesc);
  drv.writable = calloc(num, sizeof *drv.writable);
  drv.token = calloc(num, sizeof *drv.token);
  drv.in_flight = calloc(num, 1);
  for (unsigned i = 0; i < num; i++) drv.next[i] = (uint16_t)(i + 1);
  drv.num_free = (uint16_t)num;
  drv.interrupts_enabled = 1;
}

static void write_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
  vr.desc[i].addr = addr;
  vr.desc[i].len = len;
  vr.desc[i].flags = flags;
  vr.desc[i].next = next;
}

/* One readable and one writable segment. Returns 0 if the ring is full. */
static int driver_add(uint64_t raddr, uint32_t rlen, uint64_t waddr, uint32_t wlen, uint32_t token) {
  if (drv.num_free < 2) return 0;
  uint16_t head = drv.free_head;
  uint16_t second = drv.next[head];
  write_desc(head, raddr, rlen, VRING_DESC_F_NEXT, second);
  write_desc(second, waddr, wlen, VRING_DESC_F_WRITE, 0);
  drv.free_head = drv.next[second];
  drv.num_free -= 2;
  drv.ndesc[head] = 2;
  drv.writable[head] = wlen;
  drv.token[head] = token;
  drv.in_flight[head] = 1;
  vr.avail->ring[drv.avail_idx & (num - 1)] = head;
  drv.avail_idx++;
  return 1;
}

/* Returns whether the device must be kicked. */
static int driver_publish(void) {
  uint16_t new_idx = drv.avail_idx, old = drv.kicked_idx;
  drv.kicked_idx = new_idx;
  if (new_idx == old) return 0;
  atomic_store_explicit(A16(&vr.avail->idx), new_idx, memory_order_release);
  atomic_thread_fence(memory_order_seq_cst);
  uint16_t event = atomic_load_explicit(A16(&vring_avail_event(&vr)), memory_order_relaxed);
  return vring_need_event(event, new_idx, old);
}

/* Returns 1 and the token, 0 if nothing is used, -1 if the device misbehaved. */
static int driver_reap(uint32_t *token) {
  uint16_t used_idx = atomic_load_explicit(A16(&vr.used->idx), memory_order_acquire);
  uint16_t last = drv.last_used;
  uint16_t pending = (uint16_t)(used_idx - last);
  if (pending == 0) return 0;
  if (pending > num) return -1;
  struct vring_used_elem *e = &vr.used->ring[last & (num - 1)];
  uint32_t id = e->id, len = e->len;
  if (id >= num || !drv.in_flight[id] || len > drv.writable[id]) return -1;
  drv.last_used = (uint16_t)(last + 1);
  drv.in_flight[id] = 0;
  *token = drv.token[id];
  drv.last_len = len;
  uint16_t tail = (uint16_t)id;
  for (unsigned i = drv.ndesc[id] - 1u; i > 0; i--) tail = drv.next[tail];
  drv.next[tail] = drv.free_head;
  drv.free_head = (uint16_t)id;
  drv.num_free += drv.ndesc[id];
  if (drv.interrupts_enabled)
    atomic_store_explicit(A16(&vring_used_event(&vr)), drv.last_used, memory_order_relaxed);
  return 1;
}

static int driver_enable_interrupts(void) {
  drv.interrupts_enabled = 1;
  atomic_store_explicit(A16(&vring_used_event(&vr)), drv.last_used, memory_order_relaxed);
  atomic_thread_fence(memory_order_seq_cst);
  return atomic_load_explicit(A16(&vr.used->idx), memory_order_acquire) != drv.last_used;
}

static void driver_disable_interrupts(void) {
  drv.interrupts_enabled = 0;
  atomic_store_explicit(A16(&vring_used_event(&vr)), (uint16_t)(drv.last_used - 1), memory_order_relaxed);
}

/* ---------------------------------------------------------------- device */

struct chain {
  uint16_t head, count, readable;
  uint64_t addr[2];
  uint32_t len[2];
  uint32_t writable_bytes;
};

static struct {
  uint16_t last_avail, used_idx, signalled_used;
  int signalled_valid, notify_enabled;
  uint8_t *in_flight;
  uint32_t *writable;
  uint32_t *visited;
  uint32_t epoch;
  unsigned cap; /* segments a chain cursor holds */
} dev;

static void device_init(void) {
  dev.in_flight = calloc(num, 1);
  dev.writable = calloc(num, sizeof *dev.writable);
  dev.visited = calloc(num, sizeof *dev.visited);
  dev.notify_enabled = 1;
  dev.cap = 2;
}

/* Returns 1 with a validated chain, 0 if none is available, -1 on hostile input. */
static int device_pop(struct chain *c) {
  uint16_t avail_idx = atomic_load_explicit(A16(&vr.avail->idx), memory_order_acquire);
  uint16_t last = dev.last_avail;
  uint16_t pending = (uint16_t)(avail_idx - last);
  if (pending == 0) return 0;
  if (pending > num) return -1;
  uint16_t head = vr.avail->ring[last & (num - 1)];
  dev.last_avail = (uint16_t)(last + 1);
  if (dev.notify_enabled)
    atomic_store_explicit(A16(&vring_avail_event(&vr)), dev.last_avail, memory_order_relaxed);
  if (head >= num || dev.in_flight[head]) return -1;
  dev.in_flight[head] = 1;
  if (++dev.epoch == 0) {
    memset(dev.visited, 0, num * sizeof *dev.visited);
    dev.epoch = 1;
  }
  unsigned budget = dev.cap < num ? dev.cap : num;
  c->head = head;
  c->count = c->readable = 0;
  c->writable_bytes = 0;
  uint64_t readable_bytes = 0, writable_bytes = 0;
  int seen_writable = 0;
  uint16_t idx = head;
  for (;;) {
    if (dev.visited[idx] == dev.epoch) return -1;
    dev.visited[idx] = dev.epoch;
    struct vring_desc d = vr.desc[idx]; /* read once */
    if (d.flags & VRING_DESC_F_INDIRECT) return -1;
    int w = (d.flags & VRING_DESC_F_WRITE) != 0;
    if (w) seen_writable = 1;
    else if (seen_writable) return -1;
    if (c->count >= budget) return -1;
    if (d.addr > MEM_SIZE || d.len > MEM_SIZE - d.addr) return -1;
    c->addr[c->count] = d.addr;
    c->len[c->count] = d.len;
    c->count++;
    if (w) writable_bytes += d.len;
    else {
      c->readable++;
      readable_bytes += d.len;
    }
    if (readable_bytes > UINT32_MAX || writable_bytes > UINT32_MAX) return -1;
    if (!(d.flags & VRING_DESC_F_NEXT)) break;
    if (d.next >= num) return -1;
    idx = d.next;
  }
  c->writable_bytes = (uint32_t)writable_bytes;
  dev.writable[head] = c->writable_bytes;
  return 1;
}

/* Write the used element without publishing it (QEMU's virtqueue_fill). */
static int device_use(uint16_t head, uint32_t written) {
  if (head >= num || !dev.in_flight[head] || written > dev.writable[head]) return -1;
  dev.in_flight[head] = 0;
  struct vring_used_elem *e = &vr.used->ring[dev.used_idx & (num - 1)];
  e->id = head;
  e->len = written;
  dev.used_idx++;
  return 0;
}

/* Publish every used element written so far (QEMU's virtqueue_flush). */
static void device_publish_used(void) {
  atomic_store_explicit(A16(&vr.used->idx), dev.used_idx, memory_order_release);
}

static int device_push(uint16_t head, uint32_t written) {
  if (device_use(head, written) != 0) return -1;
  device_publish_used();
  return 0;
}

static int device_needs_interrupt(void) {
  uint16_t now = dev.used_idx, old = dev.signalled_used;
  int valid = dev.signalled_valid;
  dev.signalled_used = now;
  dev.signalled_valid = 1;
  if (valid && now == old) return 0;
  atomic_thread_fence(memory_order_seq_cst);
  uint16_t event = atomic_load_explicit(A16(&vring_used_event(&vr)), memory_order_relaxed);
  return !valid || vring_need_event(event, now, old);
}

static int device_enable_notifications(void) {
  dev.notify_enabled = 1;
  atomic_store_explicit(A16(&vring_avail_event(&vr)), dev.last_avail, memory_order_relaxed);
  atomic_thread_fence(memory_order_seq_cst);
  return atomic_load_explicit(A16(&vr.avail->idx), memory_order_acquire) != dev.last_avail;
}

static void device_disable_notifications(void) { dev.notify_enabled = 0; }

/* ---------------------------------------------------------------- doorbells */

struct bell {
  _Atomic int count;
  _Atomic int waiters;
};

static struct bell kick_bell, irq_bell;
static uint64_t kicks_sent, irqs_sent;

static void bell_ring(struct bell *b) {
  atomic_fetch_add(&b->count, 1);
  if (atomic_load(&b->waiters) > 0)
    syscall(SYS_futex, &b->count, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static void bell_wait(struct bell *b, int seen) {
  atomic_fetch_add(&b->waiters, 1);
  syscall(SYS_futex, &b->count, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
  atomic_fetch_sub(&b->waiters, 1);
}

/* ---------------------------------------------------------------- benches */

static uint64_t total_ops, warm_ops, batch;
static uint64_t t_warm, t_end, cpu_warm, cpu_end;
#define DATA_BASE 0x10000u

static void check(int ok, const char *what) {
  if (!ok) die(what);
}

/* deferred: the device writes each used element and publishes used.idx once per batch. */
static void run_single(int deferred) {
  struct chain c;
  uint64_t sent = 0, reaped = 0;
  uint32_t token;
  while (reaped < total_ops) {
    for (uint64_t b = 0; b < batch && sent < total_ops; b++, sent++)
      check(driver_add(DATA_BASE, DATA_READ_LEN, DATA_BASE + 64, DATA_WRITE_LEN, (uint32_t)sent), "add");
    driver_publish();
    int r;
    if (deferred) {
      while ((r = device_pop(&c)) == 1) check(device_use(c.head, c.writable_bytes) == 0, "use");
      device_publish_used();
    } else {
      while ((r = device_pop(&c)) == 1) check(device_push(c.head, c.writable_bytes) == 0, "push");
    }
    check(r == 0, "pop");
    device_needs_interrupt();
    while ((r = driver_reap(&token)) == 1) {
      if (++reaped == warm_ops) {
        t_warm = now_ns();
        cpu_warm = cpu_ns();
      }
    }
    check(r == 0, "reap");
  }
  t_end = now_ns();
  cpu_end = cpu_ns();
}

static void *device_thread(void *arg) {
  (void)arg;
  struct chain c;
  uint64_t done = 0;
  while (done < total_ops) {
    int kicks = atomic_load(&kick_bell.count);
    uint64_t popped = 0;
    int r = 0;
    while (popped < batch && (r = device_pop(&c)) == 1) {
      check(device_push(c.head, c.writable_bytes) == 0, "push");
      popped++;
    }
    check(r >= 0, "pop");
    if (popped > 0) {
      done += popped;
      if (device_needs_interrupt()) {
        irqs_sent++;
        bell_ring(&irq_bell);
      }
      device_disable_notifications();
      continue;
    }
    if (device_enable_notifications()) continue;
    bell_wait(&kick_bell, kicks);
  }
  return NULL;
}

static void run_threads(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, device_thread, NULL) != 0) die("pthread_create");
  uint64_t sent = 0, reaped = 0;
  uint32_t token;
  while (reaped < total_ops) {
    int irqs = atomic_load(&irq_bell.count);
    uint64_t added = 0;
    while (added < batch && sent < total_ops &&
           driver_add(DATA_BASE, DATA_READ_LEN, DATA_BASE + 64, DATA_WRITE_LEN, (uint32_t)sent)) {
      added++;
      sent++;
    }
    if (added > 0 && driver_publish()) {
      kicks_sent++;
      bell_ring(&kick_bell);
    }
    uint64_t got = 0;
    int r;
    while ((r = driver_reap(&token)) == 1) {
      got++;
      if (++reaped == warm_ops) {
        t_warm = now_ns();
        cpu_warm = cpu_ns();
      }
    }
    check(r == 0, "reap");
    if (got > 0) {
      driver_disable_interrupts();
      continue;
    }
    if (added > 0) continue;
    if (driver_enable_interrupts()) continue;
    bell_wait(&irq_bell, irqs);
  }
  t_end = now_ns();
  cpu_end = cpu_ns();
  pthread_join(t, NULL);
}

int main(int argc, char **argv) {
  if (argc != 5) die("usage: split_ring single|single-deferred|threads OPS QUEUE_SIZE BATCH");
  total_ops = strtoull(argv[2], NULL, 10);
  num = (unsigned)strtoul(argv[3], NULL, 10);
  batch = strtoull(argv[4], NULL, 10);
  if (total_ops < 10 || num < 2 || (num & (num - 1)) != 0 || num > 32768 || batch < 1 || 2 * batch > num)
    die("bad arguments");
  warm_ops = total_ops / 5;
  if (vring_size(num, RING_ALIGN) > DATA_BASE) die("queue too large");
  mem = aligned_alloc(RING_ALIGN, MEM_SIZE);
  if (!mem) die("out of memory");
  memset(mem, 0, MEM_SIZE);
  vring_init(&vr, num, mem, RING_ALIGN);
  driver_init();
  device_init();
  if (strcmp(argv[1], "single") == 0) run_single(0);
  else if (strcmp(argv[1], "single-deferred") == 0) run_single(1);
  else if (strcmp(argv[1], "threads") == 0) run_threads();
  else die("mode must be single, single-deferred or threads");
  printf("%llu %llu %llu %llu %llu\n", (unsigned long long)(total_ops - warm_ops),
         (unsigned long long)(t_end - t_warm), (unsigned long long)kicks_sent,
         (unsigned long long)irqs_sent, (unsigned long long)(cpu_end - cpu_warm));
  return 0;
}
