/*
 * kvserver: a key/value server over TCP with its own line protocol, written
 * for lockstep's WASI preview1 host (and buildable natively for testing).
 *
 * Host conventions it relies on:
 *   - fds 4, 5, ... are already-listening TCP sockets (the config's `listen`
 *     list); LOCKSTEP_LISTEN_FDS holds how many (default 1);
 *   - fd 3 is the preopened guest directory, guest path "/" (for --persist).
 *
 * One thread, one poll() loop, up to MAX_CLIENTS connections, one input and
 * one output buffer per connection. Protocol: see README.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#ifdef __wasi__
#include <wasi/api.h>
#endif

#define FIRST_LISTEN_FD 4
#define MAX_LISTEN 16
#define MAX_CLIENTS 64
#define MAX_KEY 1024
#define MAX_VALUE 65536
/* The longest command line, without its line ending: "APPEND key value". */
#define MAX_LINE (7 + MAX_KEY + 1 + MAX_VALUE)
/* Room for the longest line, an optional '\r' and the '\n'. */
#define IN_MAX (MAX_LINE + 2)
#define IN_START 4096
/* Stop executing a connection's commands while this much output waits. */
#define OUT_HIGH (256 * 1024)
/* After QUIT or an error, read and discard at most this much before closing. */
#define DRAIN_MAX (1024 * 1024)
/* The most one send() on a blocking socket is given. */
#define BLOCKING_SEND_MAX 16384
/* Flush the persistence log early when its buffer grows past this. */
#define LOG_FLUSH_AT (1024 * 1024)

#ifdef MSG_NOSIGNAL
#define SEND_FLAGS MSG_NOSIGNAL
#else
#define SEND_FLAGS 0
#endif

/* ------------------------------------------------------------------------ */
/* Growable byte buffers                                                     */

struct buf {
  char *data;
  size_t len;
  size_t cap;
};

/* Returns 0 on success, -1 when memory is exhausted. */
static int buf_reserve(struct buf *b, size_t extra) {
  size_t need, cap;
  char *p;
  if (extra > SIZE_MAX - b->len) return -1;
  need = b->len + extra;
  if (need <= b->cap) return 0;
  cap = b->cap ? b->cap : 256;
  while (cap < need) {
    if (cap > SIZE_MAX / 2) {
      cap = need;
      break;
    }
    cap *= 2;
  }
  p = realloc(b->data, cap);
  if (p == NULL) return -1;
  b->data = p;
  b->cap = cap;
  return 0;
}

static int buf_add(struct buf *b, const char *s, size_t n) {
  if (buf_reserve(b, n) != 0) return -1;
  if (n > 0) memcpy(b->data + b->len, s, n);
  b->len += n;
  return 0;
}

static int buf_adds(struct buf *b, const char *s) { return buf_add(b, s, strlen(s)); }

static void buf_free(struct buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ------------------------------------------------------------------------ */
/* The store: a chained hash table                                          */

struct entry {
  struct entry *next;
  uint64_t hash;
  char *val;
  size_t vlen;
  size_t vcap;
  size_t klen;
  char key[];
};

static struct entry **table;
static size_t table_size; /* a power of two */
static size_t key_count;

static uint64_t hash_key(const char *k, size_t n) {
  uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)k[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

static int table_init(void) {
  table_size = 1024;
  table = calloc(table_size, sizeof *table);
  return table ? 0 : -1;
}

/* Doubles the table; on failure keeps the old one (longer chains, still correct). */
static void table_grow(void) {
  size_t nsize = table_size * 2;
  struct entry **nt = calloc(nsize, sizeof *nt);
  if (nt == NULL) return;
  for (size_t i = 0; i < table_size; i++) {
    struct entry *e = table[i];
    while (e != NULL) {
      struct entry *next = e->next;
      size_t j = (size_t)e->hash & (nsize - 1);
      e->next = nt[j];
      nt[j] = e;
      e = next;
    }
  }
  free(table);
  table = nt;
  table_size = nsize;
}

static struct entry **find_slot(const char *k, size_t kn, uint64_t h) {
  struct entry **pp = &table[(size_t)h & (table_size - 1)];
  while (*pp != NULL) {
    struct entry *e = *pp;
    if (e->hash == h && e->klen == kn && memcmp(e->key, k, kn) == 0) return pp;
    pp = &e->next;
  }
  return pp;
}

static struct entry *lookup(const char *k, size_t kn) {
  return *find_slot(k, kn, hash_key(k, kn));
}

/* Finds or creates the entry for k; NULL when out of memory. */
static struct entry *lookup_or_create(const char *k, size_t kn) {
  uint64_t h = hash_key(k, kn);
  struct entry **pp = find_slot(k, kn, h);
  struct entry *e;
  if (*pp != NULL) return *pp;
  e = malloc(sizeof *e + kn);
  if (e == NULL) return NULL;
  e->next = NULL;
  e->hash = h;
  e->val = NULL;
  e->vlen = e->vcap = 0;
  e->klen = kn;
  memcpy(e->key, k, kn);
  *pp = e;
  key_count++;
  if (key_count > table_size) table_grow();
  return e;
}

static int entry_set(struct entry *e, const char *v, size_t vn) {
  if (vn > e->vcap || e->val == NULL) {
    size_t cap = vn > 16 ? vn : 16;
    char *p = realloc(e->val, cap);
    if (p == NULL) return -1;
    e->val = p;
    e->vcap = cap;
  }
  if (vn > 0) memcpy(e->val, v, vn);
  e->vlen = vn;
  return 0;
}

static int entry_append(struct entry *e, const char *v, size_t vn) {
  size_t need = e->vlen + vn;
  if (need > e->vcap || e->val == NULL) {
    size_t cap = e->vcap ? e->vcap : 16;
    char *p;
    while (cap < need) cap *= 2;
    if (cap > MAX_VALUE) cap = need > MAX_VALUE ? need : MAX_VALUE;
    p = realloc(e->val, cap);
    if (p == NULL) return -1;
    e->val = p;
    e->vcap = cap;
  }
  if (vn > 0) memcpy(e->val + e->vlen, v, vn);
  e->vlen = need;
  return 0;
}

/* Removes an entry freshly created by lookup_or_create after a failed write. */
static int delete_key(const char *k, size_t kn) {
  struct entry **pp = find_slot(k, kn, hash_key(k, kn));
  struct entry *e = *pp;
  if (e == NULL) return 0;
  *pp = e->next;
  free(e->val);
  free(e);
  key_count--;
  return 1;
}

/* ------------------------------------------------------------------------ */
/* Persistence: an append-only log of write commands                        */

static const char *log_path;
static int log_fd = -1;
static struct buf log_pending; /* records not yet written and synced */

static void log_record3(const char *cmd, const char *k, size_t kn, const char *v, size_t vn,
                        int has_value) {
  if (log_fd < 0) return;
  if (buf_adds(&log_pending, cmd) != 0 || buf_add(&log_pending, " ", 1) != 0 ||
      buf_add(&log_pending, k, kn) != 0 ||
      (has_value && (buf_add(&log_pending, " ", 1) != 0 || buf_add(&log_pending, v, vn) != 0)) ||
      buf_add(&log_pending, "\n", 1) != 0) {
    fprintf(stderr, "kvserver: out of memory for the persistence log; exiting\n");
    exit(1);
  }
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Writes and syncs every pending record. Replies to the commands behind them
 * are sent only after this (group commit). A log that cannot be written ends
 * the server: its replies promised durability. */
static void log_flush(void) {
  if (log_fd < 0 || log_pending.len == 0) return;
  if (write_all(log_fd, log_pending.data, log_pending.len) != 0 || fsync(log_fd) != 0) {
    fprintf(stderr, "kvserver: writing %s: %s; exiting\n", log_path, strerror(errno));
    exit(1);
  }
  log_pending.len = 0;
}

/* ------------------------------------------------------------------------ */
/* Commands                                                                  */

static int ieq(const char *a, size_t an, const char *b) {
  size_t bn = strlen(b);
  if (an != bn) return 0;
  for (size_t i = 0; i < an; i++) {
    char c = a[i];
    if (c >= 'a' && c <= 'z') c = (char)(c - 'a' + 'A');
    if (c != b[i]) return 0;
  }
  return 1;
}

/* Parses a whole decimal int64 ("-?[0-9]+"). Returns 0 on success. */
static int parse_i64(const char *s, size_t n, int64_t *out) {
  int neg = 0;
  uint64_t v = 0, limit;
  size_t i = 0;
  if (n > 0 && s[0] == '-') {
    neg = 1;
    i = 1;
  }
  if (i == n || n - i > 19) return -1;
  limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
  for (; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    if (v > (limit - (uint64_t)(s[i] - '0')) / 10) return -1;
    v = v * 10 + (uint64_t)(s[i] - '0');
  }
  if (neg) *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
  else *out = (int64_t)v;
  return 0;
}

enum { CMD_OK = 0, CMD_QUIT = 1 };

/* Reply helpers: every reply is one line. */
static void reply(struct buf *out, const char *s) {
  if (buf_adds(out, s) != 0 || buf_add(out, "\n", 1) != 0) {
    fprintf(stderr, "kvserver: out of memory for a reply; exiting\n");
    exit(1);
  }
}

static void reply_u64(struct buf *out, uint64_t v) {
  char tmp[32];
  snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
  reply(out, tmp);
}

/*
 * --ballast MB: that much memory filled with pseudo-random bytes at start, so
 * the guest has a big memory to snapshot (issue 9 item 4's tests and bench).
 * BALLAST replies its checksum (FNV-1a over it, 16 hex digits); POKE N adds 1 to
 * one byte of its 4 KiB page N (mod its pages) and replies the byte's value.
 */
static unsigned char *ballast;
static size_t ballast_len;

static void ballast_fill(size_t mb) {
  uint64_t x = 0x9e3779b97f4a7c15ull;
  struct timespec ts;
  ballast_len = mb << 20;
  ballast = malloc(ballast_len);
  if (ballast == NULL) {
    fprintf(stderr, "kvserver: out of memory for a ballast of %zu MiB\n", mb);
    exit(1);
  }
  for (size_t at = 0; at < ballast_len; at += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    memcpy(ballast + at, &x, 8);
    /* A host call per MiB: lockstep's host ends a time slice only at a call. */
    if ((at & 0xfffff) == 0) clock_gettime(CLOCK_MONOTONIC, &ts);
  }
}

static void ballast_command(int poke, const char *key, size_t kn, struct buf *out) {
  char msg[40];
  if (ballast_len == 0) {
    reply(out, "ERR no ballast (start with --ballast MB)");
    return;
  }
  if (poke) {
    size_t page = 0;
    for (size_t j = 0; j < kn && key[j] >= '0' && key[j] <= '9'; j++) page = page * 10 + (size_t)(key[j] - '0');
    unsigned char *b = ballast + (page % (ballast_len >> 12)) * 4096 + 17;
    *b += 1;
    reply_u64(out, *b);
    return;
  }
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t j = 0; j < ballast_len; j++) h = (h ^ ballast[j]) * 0x100000001b3ull;
  snprintf(msg, sizeof msg, "%016llx", (unsigned long long)h);
  reply(out, msg);
}

/*
 * Executes one command line (without its line ending) and appends exactly one
 * reply line to out. Write commands that change the store are appended to the
 * persistence log unless `replaying`. Returns CMD_QUIT for QUIT.
 *
 * Syntax: COMMAND SP+ KEY [SP VALUE]; the value is everything after the single
 * space that ends the key, spaces included, and may be empty.
 */
static int execute(const char *line, size_t len, struct buf *out, int replaying) {
  size_t i = 0, cs, cn, ks, kn = 0;
  const char *value = NULL;
  size_t vn = 0;
  int has_value = 0;

  while (i < len && line[i] == ' ') i++;
  cs = i;
  while (i < len && line[i] != ' ') i++;
  cn = i - cs;
  while (i < len && line[i] == ' ') i++;
  ks = i;
  while (i < len && line[i] != ' ') i++;
  kn = i - ks;
  if (i < len) { /* line[i] is the space after the key */
    has_value = 1;
    value = line + i + 1;
    vn = len - i - 1;
  }
  const char *cmd = line + cs;
  const char *key = line + ks;

  if (cn == 0) {
    reply(out, "ERR empty command");
    return CMD_OK;
  }

  if (ieq(cmd, cn, "COUNT") || ieq(cmd, cn, "QUIT")) {
    if (kn != 0) {
      reply(out, ieq(cmd, cn, "COUNT") ? "ERR wrong number of arguments for 'COUNT'"
                                       : "ERR wrong number of arguments for 'QUIT'");
      return CMD_OK;
    }
    if (ieq(cmd, cn, "QUIT")) {
      reply(out, "BYE");
      return CMD_QUIT;
    }
    reply_u64(out, key_count);
    return CMD_OK;
  }

  if (ieq(cmd, cn, "BALLAST") || ieq(cmd, cn, "POKE")) {
    ballast_command(ieq(cmd, cn, "POKE"), key, kn, out);
    return CMD_OK;
  }

  int is_set = ieq(cmd, cn, "SET"), is_append = ieq(cmd, cn, "APPEND");
  int is_get = ieq(cmd, cn, "GET"), is_del = ieq(cmd, cn, "DEL"), is_incr = ieq(cmd, cn, "INCR");
  if (!(is_set || is_append || is_get || is_del || is_incr)) {
    char msg[80];
    size_t m = 0;
    /* Echo at most 32 printable bytes of the unknown name. */
    m = (size_t)snprintf(msg, sizeof msg, "ERR unknown command '");
    for (size_t j = 0; j < cn && j < 32; j++) {
      char c = cmd[j];
      msg[m++] = (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    msg[m++] = '\'';
    msg[m] = '\0';
    reply(out, msg);
    return CMD_OK;
  }

  if ((is_get || is_del || is_incr) && has_value) { /* trailing spaces are fine */
    size_t j = 0;
    while (j < vn && value[j] == ' ') j++;
    if (j == vn) has_value = 0;
  }
  if (kn == 0 || ((is_set || is_append) && !has_value) ||
      ((is_get || is_del || is_incr) && has_value)) {
    reply(out, is_set      ? "ERR wrong number of arguments for 'SET'"
               : is_append ? "ERR wrong number of arguments for 'APPEND'"
               : is_get    ? "ERR wrong number of arguments for 'GET'"
               : is_del    ? "ERR wrong number of arguments for 'DEL'"
                           : "ERR wrong number of arguments for 'INCR'");
    return CMD_OK;
  }
  if (kn > MAX_KEY) {
    reply(out, "ERR key too long");
    return CMD_OK;
  }
  if (vn > MAX_VALUE) {
    reply(out, "ERR value too long");
    return CMD_OK;
  }

  if (is_get) {
    struct entry *e = lookup(key, kn);
    if (e == NULL) {
      reply(out, "NIL");
    } else if (buf_adds(out, "VALUE ") != 0 || buf_add(out, e->val, e->vlen) != 0 ||
               buf_add(out, "\n", 1) != 0) {
      fprintf(stderr, "kvserver: out of memory for a reply; exiting\n");
      exit(1);
    }
    return CMD_OK;
  }

  if (is_del) {
    int n = delete_key(key, kn);
    if (n && !replaying) log_record3("DEL", key, kn, NULL, 0, 0);
    reply(out, n ? "1" : "0");
    return CMD_OK;
  }

  if (is_set) {
    struct entry *e = lookup_or_create(key, kn);
    if (e == NULL || entry_set(e, value, vn) != 0) {
      if (e != NULL && e->val == NULL) delete_key(key, kn);
      reply(out, "ERR out of memory");
      return CMD_OK;
    }
    if (!replaying) log_record3("SET", key, kn, value, vn, 1);
    reply(out, "OK");
    return CMD_OK;
  }

  if (is_append) {
    struct entry *e = lookup(key, kn);
    size_t old = e ? e->vlen : 0;
    if (vn > MAX_VALUE - old) {
      reply(out, "ERR value too long");
      return CMD_OK;
    }
    if (e == NULL) e = lookup_or_create(key, kn);
    if (e == NULL || entry_append(e, value, vn) != 0) {
      if (e != NULL && e->val == NULL) delete_key(key, kn);
      reply(out, "ERR out of memory");
      return CMD_OK;
    }
    if (!replaying) log_record3("APPEND", key, kn, value, vn, 1);
    reply_u64(out, e->vlen);
    return CMD_OK;
  }

  /* INCR */
  {
    struct entry *e = lookup(key, kn);
    int64_t v = 0;
    char tmp[32];
    int n;
    if (e != NULL && parse_i64(e->val, e->vlen, &v) != 0) {
      reply(out, "ERR value is not an integer");
      return CMD_OK;
    }
    if (v == INT64_MAX) {
      reply(out, "ERR increment would overflow");
      return CMD_OK;
    }
    v++;
    n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    if (e == NULL) e = lookup_or_create(key, kn);
    if (e == NULL || entry_set(e, tmp, (size_t)n) != 0) {
      if (e != NULL && e->val == NULL) delete_key(key, kn);
      reply(out, "ERR out of memory");
      return CMD_OK;
    }
    /* Logged as the SET of its result: replaying it is then idempotent. */
    if (!replaying) log_record3("SET", key, kn, tmp, (size_t)n, 1);
    reply(out, tmp);
    return CMD_OK;
  }
}

/* Replays the log at start, then opens it for appending. */
static void log_open(const char *path) {
  struct buf scratch = {0};
  char *buf;
  size_t len = 0;
  unsigned long replayed = 0, skipped = 0;
  int fd, torn = 0;

  log_path = path;
  buf = malloc(IN_MAX + 65536);
  if (buf == NULL) {
    fprintf(stderr, "kvserver: out of memory\n");
    exit(1);
  }
  fd = open(path, O_RDONLY);
  if (fd < 0 && errno != ENOENT) {
    fprintf(stderr, "kvserver: opening %s: %s\n", path, strerror(errno));
    exit(1);
  }
  if (fd >= 0) {
    for (;;) {
      ssize_t r = read(fd, buf + len, IN_MAX + 65536 - len);
      size_t start = 0;
      if (r < 0) {
        if (errno == EINTR || errno == EAGAIN) continue;
        fprintf(stderr, "kvserver: reading %s: %s\n", path, strerror(errno));
        exit(1);
      }
      len += (size_t)r;
      for (;;) {
        char *nl = memchr(buf + start, '\n', len - start);
        size_t n;
        if (nl == NULL) break;
        n = (size_t)(nl - (buf + start));
        /* Only the write commands this server logs; anything else is skipped. */
        if (n > 0 && n <= MAX_LINE &&
            (ieq(buf + start, n < 4 ? n : 4, "SET ") || ieq(buf + start, n < 4 ? n : 4, "DEL ") ||
             ieq(buf + start, n < 7 ? n : 7, "APPEND "))) {
          scratch.len = 0;
          execute(buf + start, n, &scratch, 1);
          if (scratch.len >= 4 && memcmp(scratch.data, "ERR ", 4) == 0) skipped++;
          else replayed++;
        } else {
          skipped++;
        }
        start += n + 1;
      }
      memmove(buf, buf + start, len - start);
      len -= start;
      if (r == 0) break;
      if (len == IN_MAX + 65536) { /* an overlong line: drop it */
        skipped++;
        len = 0;
        /* the rest of that line up to its '\n' is dropped as a line of its own */
      }
    }
    if (len > 0) { /* a torn last record (a crash mid-write): ignored */
      skipped++;
      torn = 1;
    }
    close(fd);
  }
  free(buf);
  buf_free(&scratch);

  log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
  if (log_fd < 0) {
    fprintf(stderr, "kvserver: opening %s for appending: %s\n", path, strerror(errno));
    exit(1);
  }
  if (torn) { /* end the torn line so that the next record starts on a line of its own */
    if (write_all(log_fd, "\n", 1) != 0 || fsync(log_fd) != 0) {
      fprintf(stderr, "kvserver: writing %s: %s\n", path, strerror(errno));
      exit(1);
    }
  }
  printf("kvserver: replayed %lu commands from %s (%lu lines skipped), %lu keys\n", replayed,
         path, skipped, (unsigned long)key_count);
}

/* ------------------------------------------------------------------------ */
/* Connections                                                               */

struct conn {
  int fd; /* -1: free slot */
  unsigned long id;
  int nonblock;    /* O_NONBLOCK could be set: send without waiting for POLLOUT */
  int read_closed; /* the peer sent EOF */
  int closing;     /* no more commands: close once the output is sent */
  int draining;    /* output sent and write side shut: discard input until EOF */
  size_t drained;
  struct buf in;   /* bytes received, not yet executed */
  struct buf out;  /* replies not yet sent: out.data[out_off .. out.len) */
  size_t out_off;
};

static struct conn conns[MAX_CLIENTS];
static int nconns;
static unsigned long next_conn_id = 1;
static int listen_fds[MAX_LISTEN];
static int nlisten;

static size_t out_pending(const struct conn *c) { return c->out.len - c->out_off; }

static void close_conn(struct conn *c, const char *why) {
  close(c->fd);
  printf("kvserver: connection %lu closed (%s)\n", c->id, why);
  buf_free(&c->in);
  buf_free(&c->out);
  c->out_off = 0;
  c->fd = -1;
  nconns--;
}

static int set_nonblock(int fd) {
#ifdef KVSERVER_TEST_NO_NONBLOCK /* native-test.sh: a host that keeps sockets blocking */
  (void)fd;
  errno = ENOTSUP;
  return -1;
#endif
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) return -1;
  if (fl & O_NONBLOCK) return 0;
  return fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Executes the complete lines in c->in while the output is below OUT_HIGH. */
static void process_input(struct conn *c) {
  size_t start = 0;
  if (c->in.len == 0) {
    if (c->read_closed) c->closing = 1;
    return;
  }
  while (!c->closing && out_pending(c) < OUT_HIGH) {
    char *base = c->in.data + start;
    size_t avail = c->in.len - start;
    char *nl = avail ? memchr(base, '\n', avail) : NULL;
    size_t n;
    if (nl == NULL) {
      if (avail > MAX_LINE + 1) { /* cannot become a valid line */
        reply(&c->out, "ERR line too long");
        c->closing = 1;
        start = c->in.len;
        break;
      }
      if (!c->read_closed || avail == 0) break;
      n = avail; /* EOF ends the last line */
      start = c->in.len;
    } else {
      n = (size_t)(nl - base);
      start += n + 1;
    }
    if (n > 0 && base[n - 1] == '\r') n--;
    if (n > MAX_LINE) {
      reply(&c->out, "ERR line too long");
      c->closing = 1;
      start = c->in.len;
      break;
    }
    if (execute(base, n, &c->out, 0) == CMD_QUIT) {
      c->closing = 1;
      start = c->in.len;
    }
  }
  if (c->closing) start = c->in.len; /* what follows QUIT or an error is ignored */
  if (start > 0) {
    memmove(c->in.data, c->in.data + start, c->in.len - start);
    c->in.len -= start;
  }
  if (c->read_closed && c->in.len == 0) c->closing = 1;
}

/* One recv() into the input buffer. Returns -1 if the connection was closed. */
static int conn_read(struct conn *c) {
  char sink[4096];
  ssize_t r;
  if (c->draining) {
    r = recv(c->fd, sink, sizeof sink, 0);
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
    if (r > 0) c->drained += (size_t)r;
    if (r <= 0 || c->drained > DRAIN_MAX) {
      close_conn(c, r == 0 ? "peer closed" : r < 0 ? strerror(errno) : "drain limit");
      return -1;
    }
    return 0;
  }
  if (c->in.len == c->in.cap) {
    size_t grow = c->in.cap < IN_START ? IN_START : c->in.cap;
    if (c->in.cap + grow > IN_MAX) grow = IN_MAX - c->in.cap;
    if (grow == 0 || buf_reserve(&c->in, grow) != 0) {
      /* Full (process_input has answered "line too long") or out of memory. */
      close_conn(c, "input buffer");
      return -1;
    }
    if (c->in.cap > IN_MAX) c->in.cap = IN_MAX; /* never read past IN_MAX */
  }
  r = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
  if (r < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return 0;
    close_conn(c, strerror(errno));
    return -1;
  }
  if (r == 0) c->read_closed = 1;
  c->in.len += (size_t)r;
  return 0;
}

/* Sends as much pending output as the socket takes. Returns -1 if the
 * connection was closed. */
static int conn_flush(struct conn *c) {
  while (out_pending(c) > 0) {
    /* A blocking socket gets one bounded send per POLLOUT, so that a slow
     * reader stalls the server as little as a blocking socket allows. */
    size_t n = c->nonblock || out_pending(c) < BLOCKING_SEND_MAX ? out_pending(c) : BLOCKING_SEND_MAX;
    ssize_t w = send(c->fd, c->out.data + c->out_off, n, SEND_FLAGS);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      close_conn(c, strerror(errno));
      return -1;
    }
    c->out_off += (size_t)w;
    if (!c->nonblock) break;
  }
  if (out_pending(c) == 0) {
    c->out.len = c->out_off = 0;
    if (c->out.cap > 4 * OUT_HIGH) buf_free(&c->out); /* give back a large buffer */
  } else if (c->out_off > OUT_HIGH) {
    memmove(c->out.data, c->out.data + c->out_off, out_pending(c));
    c->out.len -= c->out_off;
    c->out_off = 0;
  }
  return 0;
}

/* Closes, or starts the lingering close of, a finished connection. */
static void conn_finish(struct conn *c) {
  if (c->fd < 0 || !c->closing || c->draining || out_pending(c) > 0) return;
  if (c->read_closed) {
    close_conn(c, "peer closed");
    return;
  }
  /* The peer may still be sending (after QUIT or an overlong line): closing
   * now could reset the connection and lose the last reply. Shut our side,
   * then read until the peer closes. */
  if (shutdown(c->fd, SHUT_WR) != 0) {
    close_conn(c, "closed by server");
    return;
  }
  c->draining = 1;
  buf_free(&c->in);
}

/* Has input that process_input would execute now: complete lines (or the
 * last line before EOF) held back while the output was above OUT_HIGH. */
static int runnable(const struct conn *c) {
  if (c->fd < 0 || c->closing || c->draining || c->in.len == 0) return 0;
  if (out_pending(c) >= OUT_HIGH) return 0;
  return c->read_closed || memchr(c->in.data, '\n', c->in.len) != NULL;
}

static void accept_one(int lfd) {
  struct sockaddr_storage ss; /* wasi-libc's accept writes here: never pass NULL */
  socklen_t sl = sizeof ss;
  int fd = accept(lfd, (struct sockaddr *)&ss, &sl);
  struct conn *c = NULL;
  if (fd < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
      fprintf(stderr, "kvserver: accept on fd %d: %s\n", lfd, strerror(errno));
    return;
  }
  for (int i = 0; i < MAX_CLIENTS; i++) {
    if (conns[i].fd < 0) {
      c = &conns[i];
      break;
    }
  }
  if (c == NULL) {
    static const char full[] = "ERR too many connections\n";
    size_t off = 0;
    set_nonblock(fd);
    /* Best effort: a fresh connection takes 25 bytes at once in practice;
     * stop at the first error or EAGAIN rather than wait. */
    while (off < sizeof full - 1) {
      ssize_t w = send(fd, full + off, sizeof full - 1 - off, SEND_FLAGS);
      if (w <= 0) {
        if (w < 0 && errno == EINTR) continue;
        break;
      }
      off += (size_t)w;
    }
    close(fd);
    printf("kvserver: connection refused on fd %d: %d connections already\n", lfd, MAX_CLIENTS);
    return;
  }
  memset(c, 0, sizeof *c);
  c->fd = fd;
  c->id = next_conn_id++;
  c->nonblock = set_nonblock(fd) == 0;
  nconns++;
  printf("kvserver: connection %lu accepted on fd %d as fd %d\n", c->id, lfd, fd);
}

/* ------------------------------------------------------------------------ */
/* Start-up                                                                  */

/* 1 if fd is a socket (stream), 0 if not or not open. */
static int is_socket(int fd) {
#ifdef __wasi__
  __wasi_fdstat_t st;
  if (__wasi_fd_fdstat_get((__wasi_fd_t)fd, &st) != 0) return 0;
  return st.fs_filetype == __WASI_FILETYPE_SOCKET_STREAM;
#else
  struct stat st;
  if (fstat(fd, &st) != 0) return 0;
  return S_ISSOCK(st.st_mode);
#endif
}

static void usage(void) {
  fprintf(stderr, "usage: kvserver [--persist FILE] [--ballast MB]\n");
  exit(64);
}

int main(int argc, char **argv) {
  const char *persist = NULL;
  size_t ballast_mb = 0;
  const char *env;
  struct pollfd pfds[MAX_LISTEN + MAX_CLIENTS];
  struct conn *pconn[MAX_LISTEN + MAX_CLIENTS];

  setvbuf(stdout, NULL, _IOLBF, 0);
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--persist") == 0 && i + 1 < argc) persist = argv[++i];
    else if (strcmp(argv[i], "--ballast") == 0 && i + 1 < argc) ballast_mb = (size_t)strtoul(argv[++i], NULL, 10);
    else usage();
  }

  nlisten = 1;
  env = getenv("LOCKSTEP_LISTEN_FDS");
  if (env != NULL) {
    char *end;
    long n = strtol(env, &end, 10);
    if (*env == '\0' || *end != '\0' || n < 1 || n > MAX_LISTEN) {
      fprintf(stderr, "kvserver: LOCKSTEP_LISTEN_FDS=%s: want a count from 1 to %d\n", env,
              MAX_LISTEN);
      return 2;
    }
    nlisten = (int)n;
  }
  for (int i = 0; i < nlisten; i++) {
    int fd = FIRST_LISTEN_FD + i;
    if (!is_socket(fd)) {
      fprintf(stderr,
              "kvserver: fd %d is not a socket: run me under lockstep's host with a `listen` "
              "entry (fds 4, 5, ... are the listening sockets)\n",
              fd);
      return 2;
    }
    listen_fds[i] = fd;
    (void)set_nonblock(fd); /* if the host refuses, one accept per POLLIN never blocks */
  }
  for (int i = 0; i < MAX_CLIENTS; i++) conns[i].fd = -1;
  if (table_init() != 0) {
    fprintf(stderr, "kvserver: out of memory\n");
    return 1;
  }
  if (persist != NULL) log_open(persist);
  if (ballast_mb > 0) ballast_fill(ballast_mb);
  for (int i = 0; i < nlisten; i++) printf("kvserver: listening on fd %d\n", listen_fds[i]);

  for (;;) {
    int np = 0, n, timeout = -1;

    /* 1. Execute the commands received. */
    for (int i = 0; i < MAX_CLIENTS; i++) {
      struct conn *c = &conns[i];
      if (c->fd >= 0 && !c->draining && !c->closing) process_input(c);
      if (log_pending.len > LOG_FLUSH_AT) log_flush();
    }

    /* 2. Make their writes durable before any reply to them leaves. */
    log_flush();

    /* 3. Send the replies (a blocking socket waits for its POLLOUT); close
     *    the connections that are done. */
    for (int i = 0; i < MAX_CLIENTS; i++) {
      struct conn *c = &conns[i];
      if (c->fd < 0) continue;
      if (c->nonblock && out_pending(c) > 0 && conn_flush(c) != 0) continue;
      conn_finish(c);
    }

    /* 4. Wait. */
    for (int i = 0; i < nlisten; i++) {
      pfds[np].fd = listen_fds[i];
      pfds[np].events = POLLIN;
      pfds[np].revents = 0;
      pconn[np++] = NULL;
    }
    for (int i = 0; i < MAX_CLIENTS; i++) {
      struct conn *c = &conns[i];
      short ev = 0;
      if (c->fd < 0) continue;
      if (runnable(c)) timeout = 0; /* held back by output that has since left */
      if (c->draining || (!c->closing && !c->read_closed && out_pending(c) < OUT_HIGH &&
                          c->in.len < IN_MAX))
        ev |= POLLIN;
      if (out_pending(c) > 0) ev |= POLLOUT;
      if (ev == 0) {
        /* wasi-libc's poll refuses a pollfd that asks for neither POLLIN
         * nor POLLOUT: leave this one out. */
        if (runnable(c)) continue;
        close_conn(c, "done"); /* not reached: conn_finish closed it */
        continue;
      }
      pfds[np].fd = c->fd;
      pfds[np].events = ev;
      pfds[np].revents = 0;
      pconn[np++] = c;
    }

    n = poll(pfds, (nfds_t)np, timeout);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      fprintf(stderr, "kvserver: poll: %s\n", strerror(errno));
      return 1;
    }

    /* 5. Accept, read, and send the output that step 3 left. */
    for (int i = 0; i < np && n > 0; i++) {
      short re = pfds[i].revents;
      struct conn *c = pconn[i];
      if (re == 0) continue;
      if (c == NULL) {
        accept_one(pfds[i].fd); /* one per readiness: never blocks */
        continue;
      }
      if (c->fd < 0) continue;
      if (re & POLLNVAL) {
        close_conn(c, "invalid fd");
        continue;
      }
      if ((re & POLLOUT) && conn_flush(c) != 0) continue;
      if ((re & (POLLIN | POLLHUP | POLLERR)) && (pfds[i].events & POLLIN)) {
        if (conn_read(c) != 0) continue;
      } else if ((re & (POLLHUP | POLLERR)) && !(re & POLLOUT)) {
        /* Not reading (output backlog) and the peer is gone: try sending,
         * which fails if the connection is really dead. */
        if (conn_flush(c) != 0) continue;
      }
    }
  }
}
