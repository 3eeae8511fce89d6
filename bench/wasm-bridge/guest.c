// Guest for the wasm-bridge benchmark: N calls to a "blocking" host import,
// a little (or a lot of) work per call. No WASI sockets; only memcpy from wasi-libc.
#include <stdint.h>
#include <string.h>

__attribute__((import_module("env"), import_name("next_input")))
int32_t next_input(uint8_t *buf, int32_t len);

#define REQ 64
static uint8_t inbuf[REQ];
static uint8_t copy[REQ];
// Data area for asyncify's saved stack (unused by the plain host).
static uint8_t async_area[64 * 1024] __attribute__((aligned(16)));

__attribute__((export_name("async_area"))) uint8_t *async_area_addr(void) { return async_area; }
__attribute__((export_name("async_area_size"))) int32_t async_area_size(void) { return sizeof async_area; }

// A few frames deep, like a real server loop (main -> serve -> handle -> recv).
__attribute__((noinline)) static int32_t recv_req(uint8_t *b) { return next_input(b, REQ); }

__attribute__((noinline)) static uint32_t handle(int32_t got, int32_t work, uint32_t h) {
  memcpy(copy, inbuf, (size_t)got);
  for (int32_t w = 0; w < work; w++)
    for (int32_t i = 0; i < got; i++) h = (h ^ copy[i]) * 16777619u;   // FNV-1a
  return h;
}

// n host calls, `work` passes over each 64-byte request.
__attribute__((export_name("run"))) uint32_t run(int32_t n, int32_t work) {
  uint32_t h = 2166136261u;
  for (int32_t k = 0; k < n; k++) {
    int32_t got = recv_req(inbuf);
    if (got <= 0) break;
    h = handle(got, work, h);
  }
  return h;
}

// Same compute as `run` with no host call at all (asyncify leaves it uninstrumented).
__attribute__((export_name("compute"))) uint32_t compute(int32_t n, int32_t work) {
  uint32_t h = 2166136261u;
  for (int32_t i = 0; i < REQ; i++) inbuf[i] = (uint8_t)i;
  for (int32_t k = 0; k < n; k++) h = handle(REQ, work, h);
  return h;
}

// Like `run`, but each host call is made `depth` frames further down (a deeper server stack);
// asyncify has to save and restore every one of those frames on each unwind.
__attribute__((noinline)) static uint32_t deep(int32_t d, int32_t work, uint32_t h, int32_t *got) {
  if (d == 0) {
    *got = recv_req(inbuf);
    return *got > 0 ? handle(*got, work, h) : h;
  }
  volatile int32_t pad = d;                 // keeps a real frame (no tail-call / loop rewrite)
  uint32_t r = deep(d - 1, work, h, got);
  return r ^ (uint32_t)(pad - d);
}

__attribute__((export_name("run_deep"))) uint32_t run_deep(int32_t n, int32_t work, int32_t depth) {
  uint32_t h = 2166136261u;
  for (int32_t k = 0; k < n; k++) {
    int32_t got;
    h = deep(depth, work, h, &got);
    if (got <= 0) break;
  }
  return h;
}
