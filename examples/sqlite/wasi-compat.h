/* Declarations forced into shell.c and sqlite3.c with -include: functions that
 * Debian's wasi-libc (0.0~git20220510) lacks; wasi-compat.c defines them. */
#ifndef LOCKSTEP_WASI_COMPAT_H
#define LOCKSTEP_WASI_COMPAT_H
#include <sys/types.h>
int chmod(const char *path, mode_t mode);
char *realpath(const char *path, char *resolved);
#endif
