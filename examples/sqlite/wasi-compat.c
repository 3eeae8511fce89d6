/* Functions that shell.c calls and that Debian's wasi-libc (0.0~git20220510)
 * does not provide. SQLite's own sources are compiled unmodified; this file is
 * linked beside them. */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "wasi-compat.h"

/* WASI preview1 has no permission bits: succeed when the file exists. */
int chmod(const char *path, mode_t mode) {
  struct stat st;
  (void)mode;
  return stat(path, &st);
}

/* WASI has no processes: no command processor is available. */
int system(const char *command) {
  if (command == NULL) return 0;
  errno = ENOSYS;
  return -1;
}

/* Lexical realpath: makes the path absolute (against getcwd, "/" at start)
 * and removes ".", ".." and repeated slashes. WASI preview1 programs see no
 * symlink targets outside the preopen, so links are not resolved. The path
 * must exist. */
char *realpath(const char *path, char *resolved) {
  char buf[PATH_MAX];
  size_t n = 0;
  struct stat st;
  const char *p;
  if (path == NULL) { errno = EINVAL; return NULL; }
  if (path[0] == '\0') { errno = ENOENT; return NULL; }
  if (stat(path, &st) != 0) return NULL;
  if (path[0] != '/') {
    if (getcwd(buf, sizeof buf) == NULL) return NULL;
    n = strlen(buf);
    while (n > 0 && buf[n - 1] == '/') n--;
  }
  buf[n] = '\0';
  p = path;
  while (*p) {
    const char *s;
    size_t len;
    while (*p == '/') p++;
    s = p;
    while (*p && *p != '/') p++;
    len = (size_t)(p - s);
    if (len == 0 || (len == 1 && s[0] == '.')) continue;
    if (len == 2 && s[0] == '.' && s[1] == '.') {
      while (n > 0 && buf[n - 1] != '/') n--;
      if (n > 0) n--;
      buf[n] = '\0';
      continue;
    }
    if (n + 1 + len + 1 > sizeof buf) { errno = ENAMETOOLONG; return NULL; }
    buf[n++] = '/';
    memcpy(buf + n, s, len);
    n += len;
    buf[n] = '\0';
  }
  if (n == 0) { buf[0] = '/'; buf[1] = '\0'; n = 1; }
  if (resolved == NULL) {
    resolved = malloc(n + 1);
    if (resolved == NULL) { errno = ENOMEM; return NULL; }
  }
  memcpy(resolved, buf, n + 1);
  return resolved;
}
