/*
 * nanloop: the determinism guard's guest. A hot loop makes NaNs in many ways
 * (f64 and f32), stores the raw bits of every result in a 2 MiB array in
 * linear memory (so a hash of memory sees the NaN bit patterns), and mixes
 * them into hashes printed as hex at the end (never printf of a float).
 *
 *   nanloop [ITERATIONS]     default 1000000
 *
 * WebAssembly leaves the bits of a NaN made by arithmetic open (any
 * "arithmetic NaN": sign and payload may vary), and engines differ:
 * x86 makes 0xfff8... for 0/0 where ARM makes 0x7ff8..., and when both
 * operands are NaN the one whose payload survives can depend on the operand
 * order an optimizing compiler picks. The work is in nan_step(), a function
 * called once per iteration, so the engine tiers it up mid-run (V8: Liftoff,
 * then TurboFan) and a difference between the tiers shows up too.
 *
 * Its inputs come from volatile globals and argc, so clang cannot fold them.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOUT 32                      /* results per iteration */
#define SLOTS (1u << 18)             /* results[]: 2 MiB of uint64 */
static uint64_t results[SLOTS];

static const char *const names[NOUT] = {
    "f64 0/0",          "f64 sqrt(neg)",      "f64 inf-inf",        "f64 inf*0",
    "f64 nan+x",        "f64 x*nan",          "f64 nanA-nanB",      "f64 nanB/nanA",
    "f64 nanA+nanB",    "f64 nanB+nanA",      "f64 nanA*nanB",      "f64 nanB*nanA",
    "f64.min(nan,x)",   "f64.max(x,nan)",     "f64.min(nanA,nanB)", "libm fmin/fmax",
    "f32->f64 promote", "f64->f32 demote",    "f32 0/0",            "f32 sqrt(neg)",
    "f32 nan*x",        "f32 nanA+nanB",      "f32 nanB+nanA",      "f32.min/max",
    "f64 ceil/floor",   "f64 trunc/nearest",  "f32 ceil/nearest",   "copysign/neg/abs",
    "f64 nan op (int)", "f32 inf-inf",        "f64 sNaN*1",         "f32 sNaN+0",
};

struct inputs {
  double zero, one, neg_one, inf;
  float zerof, onef, neg_onef, inff;
  uint64_t salt;
};

static volatile double v_zero = 0.0, v_one = 1.0;
static volatile float v_zerof = 0.0f, v_onef = 1.0f;

static inline uint64_t b64(double d) {
  uint64_t u;
  memcpy(&u, &d, sizeof u);
  return u;
}
static inline uint32_t b32(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
static inline double d64(uint64_t u) {
  double d;
  memcpy(&d, &u, sizeof d);
  return d;
}
static inline float f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline uint64_t pair(float lo, float hi) { return (uint64_t)b32(lo) | (uint64_t)b32(hi) << 32; }

/* One iteration: NOUT results, stored at out[0..NOUT). Returns a mix of them. */
__attribute__((noinline)) static uint64_t nan_step(const struct inputs *in, uint32_t i,
                                                   uint64_t *out) {
  /* NaNs with payloads made from i: A may be signaling (quiet bit from the
   * payload) and of either sign; B is quiet and positive. */
  uint64_t mant = ((uint64_t)i * 0x9E3779B97F4A7C15ULL + in->salt) & 0x000FFFFFFFFFFFFFULL;
  if (mant == 0) mant = 1;
  double nanA = d64((uint64_t)(i & 1) << 63 | 0x7FF0000000000000ULL | mant);
  double nanB = d64(0x7FF8000000000000ULL | (mant >> 7) | 5);
  double snan = d64(0x7FF0000000000000ULL | ((mant & 0x0007FFFFFFFFFFFFULL) | 1)); /* signaling */
  uint32_t m32 = (uint32_t)(mant >> 29) & 0x007FFFFF;
  if (m32 == 0) m32 = 1;
  float fA = f32((i & 2 ? 0x80000000u : 0) | 0x7F800000u | m32);
  float fB = f32(0x7FC00000u | (m32 >> 3) | 3);
  float fS = f32(0x7F800000u | ((m32 & 0x003FFFFF) | 1)); /* signaling */
  double x = in->one + (double)(i & 7);
  float xf = in->onef + (float)(i & 7);
  uint64_t h;

  out[0] = b64(in->zero / in->zero);
  out[1] = b64(__builtin_sqrt(in->neg_one - x));
  out[2] = b64(in->inf - in->inf);
  out[3] = b64(in->inf * in->zero);
  out[4] = b64(nanA + x);
  out[5] = b64(x * nanB);
  out[6] = b64(nanA - nanB);
  out[7] = b64(nanB / nanA);
  out[8] = b64(nanA + nanB);
  out[9] = b64(nanB + nanA);
  out[10] = b64(nanA * nanB);
  out[11] = b64(nanB * nanA);
  out[12] = b64(__builtin_wasm_min_f64(nanA, x));
  out[13] = b64(__builtin_wasm_max_f64(x, nanB));
  out[14] = b64(__builtin_wasm_min_f64(nanA, nanB));
  out[15] = b64(fmin(nanA, x)) ^ b64(fmax(nanB, nanA)); /* libm: returns an operand */
  out[16] = b64((double)fA);                            /* f64.promote_f32 */
  out[17] = b32((float)nanA);                           /* f32.demote_f64 */
  out[18] = b32(in->zerof / in->zerof);
  out[19] = b32(__builtin_sqrtf(in->neg_onef - xf));
  out[20] = b32(fA * xf);
  out[21] = b32(fA + fB);
  out[22] = b32(fB + fA);
  out[23] = pair(__builtin_wasm_min_f32(fA, xf), __builtin_wasm_max_f32(fB, fA));
  out[24] = b64(__builtin_ceil(nanA)) ^ (b64(__builtin_floor(nanB)) << 1);
  out[25] = b64(__builtin_trunc(nanA)) ^ (b64(__builtin_rint(nanB)) << 1); /* rint: f64.nearest */
  out[26] = pair(__builtin_ceilf(fA), __builtin_rintf(fB));
  /* Sign operations are bit operations in wasm: deterministic, for contrast. */
  out[27] = b64(__builtin_copysign(nanA, -x)) ^ b64(-nanB) ^ (b64(__builtin_fabs(nanA)) << 1);
  out[28] = b64(d64(b64(nanA) ^ (uint64_t)i) * x); /* a NaN rebuilt from integer bits */
  out[29] = b32(in->inff - in->inff);
  out[30] = b64(snan * in->one);
  out[31] = b32(fS + in->zerof);

  h = 0x9E3779B97F4A7C15ULL ^ i;
  for (int j = 0; j < NOUT; j++) {
    h ^= out[j];
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
  }
  return h;
}

/* Mixes v into h (xor, then murmur3's 64-bit finalizer step). */
static inline uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  return h;
}

static int is_nan64(uint64_t u) { return (u & 0x7FF0000000000000ULL) == 0x7FF0000000000000ULL && (u & 0x000FFFFFFFFFFFFFULL); }

int main(int argc, char **argv) {
  long iters = 1000000;
  struct inputs in;
  uint64_t total = 0xcbf29ce484222325ULL, mem = 0xcbf29ce484222325ULL;
  uint64_t per[NOUT], first[NOUT];
  unsigned long nans = 0;

  if (argc > 2) {
    fprintf(stderr, "usage: nanloop [ITERATIONS]\n");
    return 64;
  }
  if (argc == 2) {
    char *end;
    iters = strtol(argv[1], &end, 10);
    if (*argv[1] == '\0' || *end != '\0' || iters < 1 || iters > 1000000000L) {
      fprintf(stderr, "nanloop: ITERATIONS must be 1..1000000000, got %s\n", argv[1]);
      return 64;
    }
  }

  in.zero = v_zero;
  in.one = v_one;
  in.neg_one = -v_one;
  in.inf = v_one / v_zero;
  in.zerof = v_zerof;
  in.onef = v_onef;
  in.neg_onef = -v_onef;
  in.inff = v_onef / v_zerof;
  in.salt = (uint64_t)argc * 0x2545F4914F6CDD1DULL;
  for (int j = 0; j < NOUT; j++) per[j] = 0xcbf29ce484222325ULL;

  for (long i = 0; i < iters; i++) {
    uint64_t *out = &results[((uint32_t)i * NOUT) & (SLOTS - 1)];
    uint64_t h = nan_step(&in, (uint32_t)i, out);
    total = mix(total, h);
    if (i == 0) memcpy(first, out, sizeof first);
    for (int j = 0; j < NOUT; j++) {
      per[j] = mix(per[j], out[j]);
      /* the slots that hold one f64 result each */
      if (j <= 14 || j == 16 || j == 28 || j == 30) nans += (unsigned long)is_nan64(out[j]);
    }
  }
  for (uint32_t k = 0; k < SLOTS; k++) mem = mix(mem, results[k]);

  printf("nanloop: %ld iterations, %d results each\n", iters, NOUT);
  for (int j = 0; j < NOUT; j++) {
    /* the bits of iteration 0's result and the hash of that result over all iterations */
    printf("  %2d %-20s first=%016llx hash=%016llx\n", j, names[j],
           (unsigned long long)first[j], (unsigned long long)per[j]);
  }
  printf("f64 NaN results: %lu\n", nans);
  printf("memory hash (results[], %u bytes): %016llx\n", (unsigned)sizeof results,
         (unsigned long long)mem);
  printf("total hash: %016llx\n", (unsigned long long)total);
  return 0;
}
