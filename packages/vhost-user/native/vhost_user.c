/*
 * @virtio-ts/vhost-user native addon: the few system calls Node cannot make by itself.
 *
 *   - sendmsg/recvmsg on an AF_UNIX stream socket with SCM_RIGHTS file descriptors
 *     (vhost-user passes memory, kick and call fds in ancillary data);
 *   - memfd_create + ftruncate, and mmap(MAP_SHARED) of a fd into an external ArrayBuffer
 *     whose finalizer munmaps it (guest memory shared with the other process);
 *   - eventfd create/read/write (kick and call notifications);
 *   - uv_poll watchers on the Node event loop, so JS learns that a socket or an eventfd is
 *     readable without blocking the loop;
 *   - file seals (F_GET_SEALS / F_ADD_SEALS) and a SIGBUS guard for mappings of memory files
 *     the peer could still shrink (see "SIGBUS guard" below), and explicit unmapping.
 *
 * Policy stays in TypeScript (src/native.ts validates every argument before calling here);
 * this file only checks what it needs not to crash. Every fd this file creates is
 * close-on-exec, and sockets and eventfds are non-blocking. Errors are thrown as Error with
 * `code` = the errno name-like "E<num>" and a strerror message.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

/* At most this many fds in one sendmsg/recvmsg (vhost-user sends at most 8, the back-end
 * channel at most 8); a bigger limit only grows the control buffer. */
#define MAX_FDS 64

#define CHECK(call)                                                     \
  do {                                                                  \
    if ((call) != napi_ok) {                                            \
      throw_last(env, #call);                                           \
      return NULL;                                                      \
    }                                                                   \
  } while (0)

static void throw_last(napi_env env, const char *what) {
  const napi_extended_error_info *info = NULL;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  napi_get_last_error_info(env, &info);
  char msg[256];
  snprintf(msg, sizeof msg, "%s failed: %s", what,
           info && info->error_message ? info->error_message : "napi error");
  napi_throw_error(env, NULL, msg);
}

static napi_value throw_errno(napi_env env, const char *what, int err) {
  char code[16];
  char msg[256];
  snprintf(code, sizeof code, "E%d", err);
  snprintf(msg, sizeof msg, "%s: %s (errno %d)", what, strerror(err), err);
  napi_throw_error(env, code, msg);
  return NULL;
}

static napi_value throw_type(napi_env env, const char *msg) {
  napi_throw_type_error(env, NULL, msg);
  return NULL;
}

static bool get_int(napi_env env, napi_value v, int64_t *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number) return false;
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return false;
  if (!(d >= -9007199254740991.0 && d <= 9007199254740991.0) || d != (double)(int64_t)d) return false;
  *out = (int64_t)d;
  return true;
}

static bool get_fd(napi_env env, napi_value v, int *fd) {
  int64_t n;
  if (!get_int(env, v, &n) || n < 0 || n > INT32_MAX) return false;
  *fd = (int)n;
  return true;
}

static napi_value make_int(napi_env env, int64_t n) {
  napi_value v;
  if (napi_create_int64(env, n, &v) != napi_ok) return NULL;
  return v;
}

/* memfdCreate(name: string, size: number, allowSealing?: boolean): fd */
static napi_value memfd_create_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  char name[64];
  size_t len = 0;
  if (argc < 2 || napi_get_value_string_utf8(env, argv[0], name, sizeof name, &len) != napi_ok) {
    return throw_type(env, "memfdCreate(name: string, size: number)");
  }
  int64_t size;
  if (!get_int(env, argv[1], &size) || size <= 0) return throw_type(env, "memfdCreate: bad size");
  bool sealing = false;
  if (argc >= 3) {
    napi_valuetype t;
    if (napi_typeof(env, argv[2], &t) == napi_ok && t == napi_boolean) {
      CHECK(napi_get_value_bool(env, argv[2], &sealing));
    }
  }
  int fd = memfd_create(name, MFD_CLOEXEC | (sealing ? MFD_ALLOW_SEALING : 0));
  if (fd < 0) return throw_errno(env, "memfd_create", errno);
  if (ftruncate(fd, (off_t)size) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "ftruncate", e);
  }
  return make_int(env, fd);
}

/* ---- mappings: records, explicit unmap, SIGBUS guard ----
 *
 * Every mapping made by mmapShared has a record shared by its ArrayBuffer's finalizer and by
 * the handle returned to JS (two references, freed with the last). Whichever of the finalizer
 * and unmap() runs first unmaps; the other does nothing. unmap() detaches the ArrayBuffer
 * first, so views over it become empty instead of pointing at unmapped memory.
 *
 * SIGBUS guard. A MAP_SHARED mapping of a memory file raises SIGBUS on access when the file's
 * owner has shrunk it (ftruncate) under the mapping: the pages have no backing any more, and
 * the default action kills the whole process. A mapping made with guard = true is registered in
 * a fixed table; the process-wide SIGBUS handler, on a fault inside a registered range,
 * replaces the whole range with private anonymous memory (MAP_FIXED, zero-filled), marks the
 * slot faulted, writes the fault eventfd and returns: the faulting access restarts and reads
 * zeros (or writes memory nobody else sees). JS, woken through the eventfd, takes the faulted
 * slots and closes the connections that own them. A fault outside every registered range is
 * not ours: the previous handler runs, or the default action (the process dies as it would
 * have without us). The handler only loads atomics, calls mmap and write, and sets errno back.
 */
#define MAX_GUARDS 4096

typedef struct guard_slot {
  _Atomic(uintptr_t) start; /* 0 while the slot is free or being set up */
  _Atomic(size_t) len;
  atomic_int faulted;
  atomic_int used;
} guard_slot;

static guard_slot guards[MAX_GUARDS];
static atomic_int fault_efd = -1;
static atomic_int bus_installed = 0;
static struct sigaction prev_bus;
static _Atomic(long long) mapped_total = 0;

static void bus_handler(int sig, siginfo_t *si, void *uc) {
  uintptr_t a = (uintptr_t)si->si_addr;
  for (int i = 0; i < MAX_GUARDS; i++) {
    uintptr_t s = atomic_load(&guards[i].start);
    if (s == 0) continue;
    size_t l = atomic_load(&guards[i].len);
    if (a < s || a - s >= l) continue;
    int saved = errno;
    void *p = mmap((void *)s, l, PROT_READ | PROT_WRITE,
                   MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == (void *)s) {
      atomic_store(&guards[i].faulted, 1);
      int efd = atomic_load(&fault_efd);
      if (efd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(efd, &one, sizeof one);
        (void)w;
      }
      errno = saved;
      return;
    }
    errno = saved;
    break;
  }
  /* Not ours, or the replacement failed: behave as if this handler were not installed. */
  if ((prev_bus.sa_flags & SA_SIGINFO) != 0 && prev_bus.sa_sigaction != NULL) {
    prev_bus.sa_sigaction(sig, si, uc);
    return;
  }
  if ((prev_bus.sa_flags & SA_SIGINFO) == 0 && prev_bus.sa_handler != SIG_DFL &&
      prev_bus.sa_handler != SIG_IGN) {
    prev_bus.sa_handler(sig);
    return;
  }
  /* The default action: restore it and return; the access faults again and ends the process. */
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  sigaction(SIGBUS, &dfl, NULL);
}

/* Install the handler and create the fault eventfd, once. Returns 0 or an errno. */
static int guard_install(void) {
  if (atomic_load(&bus_installed)) return 0;
  int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return errno;
  int expected = -1;
  if (!atomic_compare_exchange_strong(&fault_efd, &expected, efd)) close(efd);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = bus_handler;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &prev_bus) < 0) return errno;
  atomic_store(&bus_installed, 1);
  return 0;
}

static int guard_claim(void *addr, size_t len) {
  for (int i = 0; i < MAX_GUARDS; i++) {
    int free_slot = 0;
    if (atomic_compare_exchange_strong(&guards[i].used, &free_slot, 1)) {
      atomic_store(&guards[i].faulted, 0);
      atomic_store(&guards[i].len, len);
      atomic_store(&guards[i].start, (uintptr_t)addr);
      return i;
    }
  }
  return -1;
}

static void guard_free(int i) {
  atomic_store(&guards[i].start, 0);
  atomic_store(&guards[i].len, 0);
  atomic_store(&guards[i].faulted, 0);
  atomic_store(&guards[i].used, 0);
}

typedef struct mapping {
  void *addr;
  size_t len;
  int slot; /* guard slot, or -1 */
  atomic_int unmapped;
  atomic_int refs;
} mapping;

static void mapping_release(mapping *m) {
  if (atomic_exchange(&m->unmapped, 1) != 0) return;
  /* Unregister first: the range may be reused by the next mmap. */
  if (m->slot >= 0) guard_free(m->slot);
  munmap(m->addr, m->len);
  atomic_fetch_sub(&mapped_total, (long long)m->len);
}

static void mapping_unref(mapping *m) {
  if (atomic_fetch_sub(&m->refs, 1) == 1) free(m);
}

static void buffer_finalizer(napi_env env, void *data, void *hint) {
  (void)env;
  (void)data;
  mapping *m = (mapping *)hint;
  mapping_release(m);
  mapping_unref(m);
}

static void handle_finalizer(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  mapping_unref((mapping *)data);
}

/*
 * mmapShared(fd, size, offset, guard?): [ArrayBuffer, bigint address, handle, guard slot].
 * The slot is -1 without a guard; with guard = true and the table full, nothing is mapped and
 * the result is null.
 */
static napi_value mmap_shared_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  int fd;
  int64_t size, offset;
  if (argc < 3 || !get_fd(env, argv[0], &fd) || !get_int(env, argv[1], &size) || size <= 0 ||
      !get_int(env, argv[2], &offset) || offset < 0) {
    return throw_type(env, "mmapShared(fd: number, size: number, offset: number, guard?: boolean)");
  }
  bool guard = false;
  if (argc >= 4) {
    napi_valuetype t;
    if (napi_typeof(env, argv[3], &t) == napi_ok && t == napi_boolean) {
      CHECK(napi_get_value_bool(env, argv[3], &guard));
    }
  }
  if (guard) {
    int e = guard_install();
    if (e != 0) return throw_errno(env, "installing the SIGBUS guard", e);
  }
  mapping *m = calloc(1, sizeof *m);
  if (m == NULL) return throw_errno(env, "mmapShared", ENOMEM);
  void *p = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
  if (p == MAP_FAILED) {
    int e = errno;
    free(m);
    return throw_errno(env, "mmap", e);
  }
  m->addr = p;
  m->len = (size_t)size;
  m->slot = -1;
  atomic_store(&m->refs, 2);
  atomic_fetch_add(&mapped_total, (long long)size);
  if (guard) {
    m->slot = guard_claim(p, (size_t)size);
    if (m->slot < 0) {
      munmap(p, (size_t)size);
      atomic_fetch_sub(&mapped_total, (long long)size);
      free(m);
      napi_value null_v;
      CHECK(napi_get_null(env, &null_v));
      return null_v;
    }
  }
  napi_value ab;
  if (napi_create_external_arraybuffer(env, p, (size_t)size, buffer_finalizer, m, &ab) != napi_ok) {
    atomic_store(&m->refs, 1);
    mapping_release(m);
    free(m);
    throw_last(env, "napi_create_external_arraybuffer");
    return NULL;
  }
  /* From here the buffer's finalizer owns one reference. */
  napi_value handle;
  if (napi_create_external(env, m, handle_finalizer, NULL, &handle) != napi_ok) {
    mapping_unref(m);
    throw_last(env, "napi_create_external");
    return NULL;
  }
  napi_value addr, out;
  CHECK(napi_create_bigint_uint64(env, (uint64_t)(uintptr_t)p, &addr));
  CHECK(napi_create_array_with_length(env, 4, &out));
  CHECK(napi_set_element(env, out, 0, ab));
  CHECK(napi_set_element(env, out, 1, addr));
  CHECK(napi_set_element(env, out, 2, handle));
  CHECK(napi_set_element(env, out, 3, make_int(env, m->slot)));
  return out;
}

/*
 * unmap(handle, buffer?): unmap a mapping of mmapShared now (idempotent). `buffer`, its
 * ArrayBuffer, is detached first so that views over it become empty.
 */
static napi_value unmap_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  napi_valuetype t;
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_external) {
    return throw_type(env, "unmap(handle, buffer?: ArrayBuffer)");
  }
  mapping *m;
  CHECK(napi_get_value_external(env, argv[0], (void **)&m));
  if (argc >= 2) {
    bool is_ab = false;
    if (napi_is_arraybuffer(env, argv[1], &is_ab) == napi_ok && is_ab) {
      void *data = NULL;
      size_t len = 0;
      CHECK(napi_get_arraybuffer_info(env, argv[1], &data, &len));
      if (data != m->addr && data != NULL) return throw_type(env, "unmap: buffer is not this mapping's");
      bool detached = false;
      CHECK(napi_is_detached_arraybuffer(env, argv[1], &detached));
      if (!detached) CHECK(napi_detach_arraybuffer(env, argv[1]));
    }
  }
  mapping_release(m);
  return NULL;
}

/* mappedBytes(): bytes mapped by mmapShared and not yet unmapped, in this process */
static napi_value mapped_bytes_js(napi_env env, napi_callback_info cbinfo) {
  (void)cbinfo;
  return make_int(env, atomic_load(&mapped_total));
}

/* faultFd(): the eventfd the SIGBUS guard writes (installing the guard if needed) */
static napi_value fault_fd_js(napi_env env, napi_callback_info cbinfo) {
  (void)cbinfo;
  int e = guard_install();
  if (e != 0) return throw_errno(env, "installing the SIGBUS guard", e);
  return make_int(env, atomic_load(&fault_efd));
}

/* takeFaults(): guard slots that faulted since the last call (their flags cleared) */
static napi_value take_faults_js(napi_env env, napi_callback_info cbinfo) {
  (void)cbinfo;
  napi_value out;
  CHECK(napi_create_array(env, &out));
  uint32_t k = 0;
  for (int i = 0; i < MAX_GUARDS; i++) {
    if (atomic_load(&guards[i].used) && atomic_exchange(&guards[i].faulted, 0) != 0) {
      CHECK(napi_set_element(env, out, k++, make_int(env, i)));
    }
  }
  return out;
}

/* getSeals(fd): F_GET_SEALS, or -1 when the file does not support seals (EINVAL) */
static napi_value get_seals_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  int fd;
  if (argc < 1 || !get_fd(env, argv[0], &fd)) return throw_type(env, "getSeals(fd: number)");
  int r = fcntl(fd, F_GET_SEALS);
  if (r < 0) {
    if (errno == EINVAL) return make_int(env, -1);
    return throw_errno(env, "fcntl(F_GET_SEALS)", errno);
  }
  return make_int(env, r);
}

/* addSeals(fd, seals): true, or false when the file refuses them (EPERM, EBUSY, EINVAL) */
static napi_value add_seals_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  int fd;
  int64_t seals;
  if (argc < 2 || !get_fd(env, argv[0], &fd) || !get_int(env, argv[1], &seals) || seals < 0 ||
      seals > INT32_MAX) {
    return throw_type(env, "addSeals(fd: number, seals: number)");
  }
  napi_value out;
  if (fcntl(fd, F_ADD_SEALS, (int)seals) < 0) {
    if (errno == EPERM || errno == EBUSY || errno == EINVAL) {
      CHECK(napi_get_boolean(env, false, &out));
      return out;
    }
    return throw_errno(env, "fcntl(F_ADD_SEALS)", errno);
  }
  CHECK(napi_get_boolean(env, true, &out));
  return out;
}

/* eventfdCreate(): fd (non-blocking, counter 0) */
static napi_value eventfd_create_js(napi_env env, napi_callback_info cbinfo) {
  (void)cbinfo;
  int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) return throw_errno(env, "eventfd", errno);
  return make_int(env, fd);
}

/* eventfdWrite(fd, value): true, or false if the counter would overflow (EAGAIN) */
static napi_value eventfd_write_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  int fd;
  int64_t v;
  if (argc < 2 || !get_fd(env, argv[0], &fd) || !get_int(env, argv[1], &v) || v <= 0) {
    return throw_type(env, "eventfdWrite(fd: number, value: number)");
  }
  uint64_t value = (uint64_t)v;
  ssize_t n;
  do n = write(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  napi_value out;
  if (n < 0) {
    if (errno == EAGAIN) {
      CHECK(napi_get_boolean(env, false, &out));
      return out;
    }
    return throw_errno(env, "eventfd write", errno);
  }
  CHECK(napi_get_boolean(env, true, &out));
  return out;
}

/* eventfdRead(fd): the counter as a bigint (then 0), or null if it was 0 (EAGAIN) */
static napi_value eventfd_read_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  int fd;
  if (argc < 1 || !get_fd(env, argv[0], &fd)) return throw_type(env, "eventfdRead(fd: number)");
  uint64_t value = 0;
  ssize_t n;
  do n = read(fd, &value, sizeof value);
  while (n < 0 && errno == EINTR);
  napi_value out;
  if (n < 0) {
    if (errno == EAGAIN) {
      CHECK(napi_get_null(env, &out));
      return out;
    }
    return throw_errno(env, "eventfd read", errno);
  }
  if (n != sizeof value) return throw_errno(env, "eventfd read (short)", EIO);
  CHECK(napi_create_bigint_uint64(env, value, &out));
  return out;
}

/* closeFd(fd) */
static napi_value close_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  int fd;
  if (argc < 1 || !get_fd(env, argv[0], &fd)) return throw_type(env, "closeFd(fd: number)");
  /* Linux closes the fd even when close() reports EINTR: never retry. */
  if (close(fd) < 0 && errno != EINTR) return throw_errno(env, "close", errno);
  return NULL;
}

/* connectUnix(path): a connected, non-blocking AF_UNIX stream socket fd */
static napi_value connect_unix_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  size_t len = 0;
  if (argc < 1 ||
      napi_get_value_string_utf8(env, argv[0], sa.sun_path, sizeof sa.sun_path, &len) != napi_ok) {
    return throw_type(env, "connectUnix(path: string)");
  }
  if (len == 0 || len >= sizeof sa.sun_path - 1) return throw_type(env, "connectUnix: bad path length");
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  /* A blocking connect on a unix socket returns at once (or fails); non-blocking after. */
  int r;
  do r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
  while (r < 0 && errno == EINTR);
  if (r < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "connect", e);
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
    int e = errno;
    close(fd);
    return throw_errno(env, "fcntl", e);
  }
  return make_int(env, fd);
}

/* socketPair(): [fd, fd], a connected non-blocking AF_UNIX stream pair */
static napi_value socket_pair_js(napi_env env, napi_callback_info cbinfo) {
  (void)cbinfo;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0) {
    return throw_errno(env, "socketpair", errno);
  }
  napi_value out;
  CHECK(napi_create_array_with_length(env, 2, &out));
  CHECK(napi_set_element(env, out, 0, make_int(env, sv[0])));
  CHECK(napi_set_element(env, out, 1, make_int(env, sv[1])));
  return out;
}

static bool get_bytes(napi_env env, napi_value v, void **data, size_t *len) {
  bool is;
  if (napi_is_typedarray(env, v, &is) != napi_ok || !is) return false;
  napi_typedarray_type type;
  size_t length, offset;
  napi_value ab;
  if (napi_get_typedarray_info(env, v, &type, &length, data, &ab, &offset) != napi_ok) return false;
  if (type != napi_uint8_array) return false;
  *len = length;
  return true;
}

/* sendMsg(fd, bytes: Uint8Array, fds: number[]): bytes sent, or -1 if it would block */
static napi_value send_msg_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  int fd;
  void *data;
  size_t len;
  bool is_array = false;
  if (argc < 3 || !get_fd(env, argv[0], &fd) || !get_bytes(env, argv[1], &data, &len) ||
      napi_is_array(env, argv[2], &is_array) != napi_ok || !is_array) {
    return throw_type(env, "sendMsg(fd: number, bytes: Uint8Array, fds: number[])");
  }
  uint32_t nfds;
  CHECK(napi_get_array_length(env, argv[2], &nfds));
  if (nfds > MAX_FDS) return throw_type(env, "sendMsg: too many fds");
  int fds[MAX_FDS];
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value e;
    CHECK(napi_get_element(env, argv[2], i, &e));
    if (!get_fd(env, e, &fds[i])) return throw_type(env, "sendMsg: fds must be fd numbers");
  }
  struct iovec iov = {.iov_base = data, .iov_len = len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } ctl;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (nfds > 0) {
    memset(&ctl, 0, sizeof ctl);
    msg.msg_control = ctl.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n;
  do n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return make_int(env, -1);
    return throw_errno(env, "sendmsg", errno);
  }
  return make_int(env, n);
}

/*
 * recvMsg(fd, into: Uint8Array, maxFds): [n, fds, truncated]. n is the byte count, 0 at end
 * of stream, -1 if nothing is available (EAGAIN). fds are close-on-exec and now owned by the
 * caller; truncated is true when the peer sent more fds than maxFds (the kernel dropped the
 * excess: MSG_CTRUNC) or data that did not fit (MSG_TRUNC never happens on a stream).
 */
static napi_value recv_msg_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  int fd;
  void *data;
  size_t len;
  int64_t max_fds;
  if (argc < 3 || !get_fd(env, argv[0], &fd) || !get_bytes(env, argv[1], &data, &len) ||
      !get_int(env, argv[2], &max_fds) || max_fds < 0 || max_fds > MAX_FDS) {
    return throw_type(env, "recvMsg(fd: number, into: Uint8Array, maxFds: number)");
  }
  struct iovec iov = {.iov_base = data, .iov_len = len};
  union {
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS)];
    struct cmsghdr align;
  } ctl;
  struct msghdr msg;
  memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  /* Even with maxFds 0 give the kernel a control buffer for one fd, so an unexpected fd is
   * seen (and closed by the caller) rather than silently discarded. */
  size_t want = max_fds > 0 ? (size_t)max_fds : 1;
  msg.msg_control = ctl.buf;
  msg.msg_controllen = CMSG_SPACE(sizeof(int) * want);
  ssize_t n;
  do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) n = -1;
    else return throw_errno(env, "recvmsg", errno);
  }
  napi_value fds_arr;
  CHECK(napi_create_array(env, &fds_arr));
  uint32_t k = 0;
  if (n >= 0) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      int got[MAX_FDS];
      if (count > MAX_FDS) count = MAX_FDS;
      memcpy(got, CMSG_DATA(c), count * sizeof(int));
      for (size_t i = 0; i < count; i++) CHECK(napi_set_element(env, fds_arr, k++, make_int(env, got[i])));
    }
  }
  napi_value out, trunc;
  CHECK(napi_get_boolean(env, n >= 0 && (msg.msg_flags & (MSG_CTRUNC | MSG_TRUNC)) != 0, &trunc));
  CHECK(napi_create_array_with_length(env, 3, &out));
  CHECK(napi_set_element(env, out, 0, make_int(env, n)));
  CHECK(napi_set_element(env, out, 1, fds_arr));
  CHECK(napi_set_element(env, out, 2, trunc));
  return out;
}

/* ---- uv_poll watchers ---- */

typedef struct watcher {
  uv_poll_t poll;
  napi_env env;
  napi_ref cb;
  napi_async_context ctx;
  int closing;
} watcher;

static void watcher_closed(uv_handle_t *h) { free(h->data); }

static void watcher_stop(watcher *w, bool delete_refs) {
  if (w->closing) return;
  w->closing = 1;
  uv_poll_stop(&w->poll);
  if (delete_refs) {
    napi_delete_reference(w->env, w->cb);
    napi_async_destroy(w->env, w->ctx);
  }
  uv_close((uv_handle_t *)&w->poll, watcher_closed);
}

static void watcher_cleanup_hook(void *arg) { watcher_stop((watcher *)arg, false); }

static void watcher_cb(uv_poll_t *h, int status, int events) {
  watcher *w = (watcher *)h->data;
  if (w->closing) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[2], result;
  if (napi_get_reference_value(env, w->cb, &cb) == napi_ok && cb != NULL &&
      napi_get_global(env, &recv) == napi_ok &&
      napi_create_int32(env, status, &argv[0]) == napi_ok &&
      napi_create_int32(env, events, &argv[1]) == napi_ok) {
    /* napi_make_callback runs queued microtasks afterwards, so promises settled by the
     * callback continue at once. */
    if (napi_make_callback(env, w->ctx, recv, cb, 2, argv, &result) == napi_pending_exception) {
      napi_value e;
      if (napi_get_and_clear_last_exception(env, &e) == napi_ok) napi_fatal_exception(env, e);
    }
  }
  napi_close_handle_scope(env, scope);
}

/* watch(fd, callback(status, events)): handle. Calls back while fd is readable (or hung up /
 * in error); level-triggered, so the callback must drain the fd or unwatch it. */
static napi_value watch_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  int fd;
  napi_valuetype t;
  if (argc < 2 || !get_fd(env, argv[0], &fd) || napi_typeof(env, argv[1], &t) != napi_ok ||
      t != napi_function) {
    return throw_type(env, "watch(fd: number, callback: function)");
  }
  uv_loop_t *loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  watcher *w = calloc(1, sizeof *w);
  if (w == NULL) return throw_errno(env, "watch", ENOMEM);
  w->env = env;
  int r = uv_poll_init(loop, &w->poll, fd);
  if (r != 0) {
    free(w);
    return throw_errno(env, "uv_poll_init", -r);
  }
  w->poll.data = w;
  napi_value resource, name;
  if (napi_create_object(env, &resource) != napi_ok ||
      napi_create_string_utf8(env, "vhost-user:watch", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, resource, name, &w->ctx) != napi_ok ||
      napi_create_reference(env, argv[1], 1, &w->cb) != napi_ok) {
    w->closing = 1;
    uv_close((uv_handle_t *)&w->poll, watcher_closed);
    throw_last(env, "watch");
    return NULL;
  }
  r = uv_poll_start(&w->poll, UV_READABLE | UV_DISCONNECT, watcher_cb);
  if (r != 0) {
    watcher_stop(w, true);
    return throw_errno(env, "uv_poll_start", -r);
  }
  napi_add_env_cleanup_hook(env, watcher_cleanup_hook, w);
  napi_value ext;
  CHECK(napi_create_external(env, w, NULL, NULL, &ext));
  return ext;
}

/* unwatch(handle): stop a watcher (idempotent, safe inside its own callback) */
static napi_value unwatch_js(napi_env env, napi_callback_info cbinfo) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(napi_get_cb_info(env, cbinfo, &argc, argv, NULL, NULL));
  napi_valuetype t;
  if (argc < 1 || napi_typeof(env, argv[0], &t) != napi_ok || t != napi_external) {
    return throw_type(env, "unwatch(handle)");
  }
  void *p;
  CHECK(napi_get_value_external(env, argv[0], &p));
  watcher *w = (watcher *)p;
  if (w->closing) return NULL;
  napi_remove_env_cleanup_hook(env, watcher_cleanup_hook, w);
  watcher_stop(w, true);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor props[] = {
      {"memfdCreate", NULL, memfd_create_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mmapShared", NULL, mmap_shared_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"eventfdCreate", NULL, eventfd_create_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"eventfdWrite", NULL, eventfd_write_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"eventfdRead", NULL, eventfd_read_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"closeFd", NULL, close_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"connectUnix", NULL, connect_unix_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"socketPair", NULL, socket_pair_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sendMsg", NULL, send_msg_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"recvMsg", NULL, recv_msg_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"watch", NULL, watch_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"unwatch", NULL, unwatch_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"unmap", NULL, unmap_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mappedBytes", NULL, mapped_bytes_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"faultFd", NULL, fault_fd_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"takeFaults", NULL, take_faults_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"getSeals", NULL, get_seals_js, NULL, NULL, NULL, napi_enumerable, NULL},
      {"addSeals", NULL, add_seals_js, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) {
    return NULL;
  }
  return exports;
}
