/*
 * lab-io: the disk workload of `pnpm lab linux`, run inside the i686 guest. A freestanding
 * static i386 program (no libc: Linux system calls through int $0x80), built on the host by
 * `gcc -m32 -static -nostdlib -ffreestanding` when the lab starts.
 *
 *   lab-io rand|seq DEVICE BLOCK_BYTES MAX_REQUESTS MAX_SECONDS SPAN_MIB TAG SEED
 *   lab-io udp IPV4 PORT PAYLOAD_BYTES MAX_DATAGRAMS MAX_SECONDS TAG
 *
 * Opens DEVICE with O_DIRECT (so the guest page cache is bypassed: every read is a request to
 * the device) and reads BLOCK_BYTES at a time, one request in flight: at random block-aligned
 * offsets in the first SPAN_MIB (xorshift32 from SEED) or sequentially (wrapping at SPAN_MIB),
 * until MAX_REQUESTS or MAX_SECONDS. Prints, on the serial console, one line right before the
 * first request and one right after the last, so the host can read its counters at those
 * instants:
 *
 *   @@LAB begin TAG cpu <user> <nice> <system> <idle> <iowait> <irq> <softirq>@@
 *   @@LAB end TAG requests=<n> bytes=<b> ns=<t> errors=<e> cpu <...same fields...>@@
 *
 * The cpu fields are the first line of /proc/stat (jiffies).
 *
 * udp: a bulk send (BusyBox's nc has no UDP mode in Debian's build): one connected UDP socket,
 * datagrams of PAYLOAD_BYTES as fast as the socket takes them (a blocking write waits for the
 * NIC's queue), until MAX_DATAGRAMS or MAX_SECONDS; the end line carries `sent=<n>`.
 */

typedef unsigned int u32;
typedef unsigned long long u64;

#define SYS_exit 1
#define SYS_read 3
#define SYS_write 4
#define SYS_open 5
#define SYS_close 6
#define SYS_pread64 180
#define SYS_clock_gettime 265
#define SYS_socket 359
#define SYS_connect 362
#define O_RDONLY 0
#define O_DIRECT 040000
#define O_LARGEFILE 0100000
#define CLOCK_MONOTONIC 1
#define MAX_BLOCK (1 << 20)

static long sys5(long n, long a, long b, long c, long d, long e) {
  long r;
  __asm__ volatile("int $0x80"
                   : "=a"(r)
                   : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
                   : "memory");
  return r;
}
#define sys3(n, a, b, c) sys5(n, a, b, c, 0, 0)

static unsigned char buf[MAX_BLOCK] __attribute__((aligned(4096)));
static char out[512];
static int outlen;

static void puts_(const char *s) {
  for (u32 i = 0; s[i] && outlen < (int)sizeof(out) - 1; i++) out[outlen++] = s[i];
}
/* v / 10 and v % 10 with 32-bit divisions only (no libgcc helpers in a -nostdlib build). */
static u64 divmod10(u64 v, u32 *rem) {
  u32 hi = (u32)(v >> 32), lo = (u32)v;
  u32 qhi = hi / 10, r = hi % 10;
  u32 a = (r << 16) | (lo >> 16), qa = a / 10;
  r = a % 10;
  u32 b = (r << 16) | (lo & 0xffff), qb = b / 10;
  *rem = b % 10;
  return ((u64)qhi << 32) | ((u64)qa << 16) | qb;
}
static void putu(u64 v) {
  char t[24];
  int n = 0;
  do {
    u32 d;
    v = divmod10(v, &d);
    t[n++] = (char)('0' + d);
  } while (v);
  while (n) {
    char c[2] = {t[--n], 0};
    puts_(c);
  }
}
static void flush(void) {
  out[outlen++] = '\n';
  sys3(SYS_write, 1, (long)out, outlen);
  outlen = 0;
}
static u64 atou(const char *s) {
  u64 v = 0;
  while (*s >= '0' && *s <= '9') v = v * 10 + (u64)(*s++ - '0');
  return v;
}
static int streq(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return *a == *b;
}
static u64 now_ns(void) {
  struct {
    long s, ns;
  } ts;
  sys3(SYS_clock_gettime, CLOCK_MONOTONIC, (long)&ts, 0);
  return (u64)ts.s * 1000000000ull + (u64)ts.ns;
}
/* The first line of /proc/stat, "cpu  u n s i w q sq ...", as " cpu u n s i w q sq". */
static void put_cpu(void) {
  static char st[256];
  int fd = (int)sys3(SYS_open, (long)"/proc/stat", O_RDONLY, 0);
  long n = fd < 0 ? 0 : sys3(SYS_read, fd, (long)st, sizeof(st) - 1);
  if (fd >= 0) sys3(SYS_close, fd, 0, 0);
  if (n < 4) return;
  st[n] = 0;
  puts_(" cpu");
  const char *p = st + 3;
  for (int f = 0; f < 7; f++) {
    while (*p == ' ') p++;
    if (*p < '0' || *p > '9') break;
    puts_(" ");
    putu(atou(p));
    while (*p >= '0' && *p <= '9') p++;
  }
}

static void put_marker_begin(const char *tag) {
  puts_("@@LAB begin ");
  puts_(tag);
  put_cpu();
  puts_("@@");
  flush();
}

/* "a.b.c.d" in network byte order as it lies in memory. */
static u32 ipv4(const char *s) {
  u32 v = 0;
  for (int i = 0; i < 4; i++) {
    u32 o = (u32)atou(s);
    v |= (o & 0xff) << (8 * i);
    while (*s >= '0' && *s <= '9') s++;
    if (*s == '.') s++;
  }
  return v;
}

static int udp_main(char **argv) {
  u32 port = (u32)atou(argv[3]);
  u32 size = (u32)atou(argv[4]);
  u64 max = atou(argv[5]);
  u64 maxns = atou(argv[6]) * 1000000000ull;
  const char *tag = argv[7];
  if (size == 0 || size > 65507) {
    puts_("lab-io: bad payload size");
    flush();
    return 2;
  }
  struct {
    unsigned short family, port;
    u32 addr;
    unsigned char zero[8];
  } sa = {2, (unsigned short)(((port & 0xff) << 8) | (port >> 8)), ipv4(argv[2]), {0}};
  int fd = (int)sys3(SYS_socket, 2 /* AF_INET */, 2 /* SOCK_DGRAM */, 0);
  if (fd < 0 || sys3(SYS_connect, fd, (long)&sa, sizeof(sa)) < 0) {
    puts_("lab-io: cannot open the UDP socket");
    flush();
    return 1;
  }
  for (u32 i = 0; i < size; i++) buf[i] = (unsigned char)i;
  u64 n = 0, errors = 0;
  put_marker_begin(tag);
  u64 t0 = now_ns(), t = t0;
  while (n < max && t - t0 < maxns) {
    if (sys3(SYS_write, fd, (long)buf, size) == (long)size)
      n++;
    else
      errors++;
    t = now_ns();
  }
  puts_("@@LAB end ");
  puts_(tag);
  puts_(" sent=");
  putu(n);
  puts_(" ns=");
  putu(t - t0);
  puts_(" errors=");
  putu(errors);
  put_cpu();
  puts_("@@");
  flush();
  sys3(SYS_close, fd, 0, 0);
  return 0;
}

int cmain(long *sp) {
  int argc = (int)sp[0];
  char **argv = (char **)(sp + 1);
  if (argc >= 8 && streq(argv[1], "udp")) return udp_main(argv);
  if (argc < 9) {
    puts_("usage: lab-io rand|seq DEVICE BLOCK MAX_REQUESTS MAX_SECONDS SPAN_MIB TAG SEED");
    flush();
    return 2;
  }
  int rnd = streq(argv[1], "rand");
  u32 bs = (u32)atou(argv[3]);
  u64 maxreq = atou(argv[4]);
  u64 maxns = atou(argv[5]) * 1000000000ull;
  u32 spanmib = (u32)atou(argv[6]);
  const char *tag = argv[7];
  u32 x = (u32)atou(argv[8]) | 1;
  u32 span = spanmib << 20;
  if (bs == 0 || bs > MAX_BLOCK || bs % 512 || spanmib == 0 || spanmib > 4095 || span < bs) {
    puts_("lab-io: bad block size or span");
    flush();
    return 2;
  }
  int fd = (int)sys3(SYS_open, (long)argv[2], O_RDONLY | O_DIRECT | O_LARGEFILE, 0);
  if (fd < 0) {
    puts_("lab-io: cannot open ");
    puts_(argv[2]);
    flush();
    return 1;
  }
  u32 blocks = span / bs, next = 0;
  u64 n = 0, bytes = 0, errors = 0;
  put_marker_begin(tag);
  u64 t0 = now_ns(), t = t0;
  while (n < maxreq && t - t0 < maxns) {
    u32 b;
    if (rnd) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      b = x % blocks;
    } else {
      b = next;
      next = next + 1 == blocks ? 0 : next + 1;
    }
    u64 off = (u64)b * bs;
    long r = sys5(SYS_pread64, fd, (long)buf, bs, (long)(u32)off, (long)(u32)(off >> 32));
    if (r == (long)bs)
      bytes += bs;
    else
      errors++;
    n++;
    t = now_ns();
  }
  puts_("@@LAB end ");
  puts_(tag);
  puts_(" requests=");
  putu(n);
  puts_(" bytes=");
  putu(bytes);
  puts_(" ns=");
  putu(t - t0);
  puts_(" errors=");
  putu(errors);
  put_cpu();
  puts_("@@");
  flush();
  sys3(SYS_close, fd, 0, 0);
  return errors ? 1 : 0;
}

__asm__(".globl _start\n"
        "_start:\n"
        "  xor %ebp, %ebp\n"
        "  mov %esp, %eax\n"
        "  and $-16, %esp\n"
        "  push %eax\n"
        "  push %eax\n"
        "  push %eax\n"
        "  push %eax\n"
        "  call cmain\n"
        "  mov %eax, %ebx\n"
        "  mov $1, %eax\n"
        "  int $0x80\n");
