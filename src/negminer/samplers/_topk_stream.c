/* Running top-K of perturbed keys over one chunk of scores, fused in one pass (see gumbel.py), and
 * the Gumbel noise itself.
 *
 * For each row b: key_j = fma(scale, s[b, j], noise[b * stride + j]); keys above the row's current
 * K-th key are inserted into its sorted list (keys, positions, logits = scale * s). Blocks of 64
 * are tested first (AVX-512 vector compares where the CPU has them), so most of the chunk costs a
 * load, an fma and a compare per 16 keys.
 * Scores are bf16 (raw uint16 bits) or fp32, row-major with leading dimension ld; -inf and NaN
 * scores are never inserted. Rows are independent, so with OpenMP they are split over threads (the
 * result does not depend on the split). Built by samplers/kernel.py with the system C compiler.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLK 64
#define PAR_MIN (1 << 18) /* elements below which a parallel region costs more than it saves */

static inline float bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline void insert(float *keys, int64_t *pos, float *lg, int K, float key, int64_t p, float l) {
    int i = K - 1;
    while (i > 0 && key > keys[i - 1]) {
        keys[i] = keys[i - 1];
        pos[i] = pos[i - 1];
        lg[i] = lg[i - 1];
        i--;
    }
    keys[i] = key;
    pos[i] = p;
    lg[i] = l;
}

/* Does any key of the block j..j+BLK-1 of this row beat thr? One vector compare per 16 keys where
 * AVX-512 is there (the same fused multiply-add as fmaf, so the same keys), else plain C. */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline int hit_bf16(const uint16_t *s, const float *g, float scale, float thr) {
    __m512 vs = _mm512_set1_ps(scale), vt = _mm512_set1_ps(thr);
    __mmask16 m = 0;
    for (int u = 0; u < BLK; u += 16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + u)));
        __m512 x = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
        m |= _mm512_cmp_ps_mask(_mm512_fmadd_ps(vs, x, _mm512_loadu_ps(g + u)), vt, _CMP_GT_OQ);
    }
    return m != 0;
}
static inline int hit_f32(const float *s, const float *g, float scale, float thr) {
    __m512 vs = _mm512_set1_ps(scale), vt = _mm512_set1_ps(thr);
    __mmask16 m = 0;
    for (int u = 0; u < BLK; u += 16)
        m |= _mm512_cmp_ps_mask(_mm512_fmadd_ps(vs, _mm512_loadu_ps(s + u), _mm512_loadu_ps(g + u)), vt, _CMP_GT_OQ);
    return m != 0;
}
#else
static inline int hit_bf16(const uint16_t *s, const float *g, float scale, float thr) {
    int any = 0;
    for (int t = 0; t < BLK; t++) any |= fmaf(scale, bf16(s[t]), g[t]) > thr;
    return any;
}
static inline int hit_f32(const float *s, const float *g, float scale, float thr) {
    int any = 0;
    for (int t = 0; t < BLK; t++) any |= fmaf(scale, s[t], g[t]) > thr;
    return any;
}
#endif

#define ROW_LOOP(LOAD, HIT)                                                                \
    _Pragma("omp parallel for schedule(static) if ((b1 - b0) * c >= PAR_MIN)")             \
    for (int64_t b = b0; b < b1; b++) {                                                    \
        const float *g = noise + b * stride;                                               \
        float *kk = keys + b * K, *ll = lg + b * K;                                        \
        int64_t *pp = pos + b * K;                                                         \
        float thr = kk[K - 1];                                                             \
        int64_t j = 0;                                                                     \
        for (; j + BLK <= c; j += BLK) {                                                   \
            if (!HIT(s + b * ld + j, g + j, scale, thr)) continue;                         \
            for (int t = 0; t < BLK; t++) {                                                \
                float v = fmaf(scale, LOAD(b, j + t), g[j + t]);                           \
                if (v > thr) {                                                             \
                    insert(kk, pp, ll, K, v, start + j + t, scale * LOAD(b, j + t));       \
                    thr = kk[K - 1];                                                       \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        for (; j < c; j++) {                                                               \
            float v = fmaf(scale, LOAD(b, j), g[j]);                                       \
            if (v > thr) {                                                                 \
                insert(kk, pp, ll, K, v, start + j, scale * LOAD(b, j));                   \
                thr = kk[K - 1];                                                           \
            }                                                                              \
        }                                                                                  \
    }

#define LOAD_BF16(b, j) bf16(s[(b) * ld + (j)])
#define LOAD_F32(b, j) s[(b) * ld + (j)]

void topk_stream_bf16(const uint16_t *s, int64_t b0, int64_t b1, int64_t c, int64_t ld, const float *noise,
                      int64_t stride, float scale, int64_t start, int K, float *keys, int64_t *pos, float *lg) {
    ROW_LOOP(LOAD_BF16, hit_bf16)
}

void topk_stream_f32(const float *s, int64_t b0, int64_t b1, int64_t c, int64_t ld, const float *noise,
                     int64_t stride, float scale, int64_t start, int K, float *keys, int64_t *pos, float *lg) {
    ROW_LOOP(LOAD_F32, hit_f32)
}

/* Before a chunk's top-k: out[i] = scale * s[wq[i], wp[i] - start] for the watched (query, position)
 * pairs, then the excluded pairs' scores set to -inf (what the torch path does with two indexings). */
#define MARK(LOAD, NEGINF)                                                                 \
    for (int64_t i = 0; i < nw; i++) out[i] = scale * LOAD(wq[i], wp[i] - start);          \
    for (int64_t i = 0; i < nx; i++) s[xq[i] * ld + xp[i] - start] = NEGINF;

void mark_bf16(uint16_t *s, int64_t ld, int64_t start, float scale, const int64_t *wq, const int64_t *wp,
               int64_t nw, float *out, const int64_t *xq, const int64_t *xp, int64_t nx) {
    MARK(LOAD_BF16, (uint16_t)0xFF80u)
}

void mark_f32(float *s, int64_t ld, int64_t start, float scale, const int64_t *wq, const int64_t *wp,
              int64_t nw, float *out, const int64_t *xq, const int64_t *xp, int64_t nx) {
    MARK(LOAD_F32, -INFINITY)
}

/* Gumbel(0, 1) noise, out[i] = -log(-log(u_i)), u_i = (h(seed, i) + 1/2) / 2^24 with h the top 24 bits of
 * splitmix64 (a counter-based generator: a pure function of seed and position, so a resumed run draws the
 * same values) and a branch-free single-precision log (Cephes logf, relative error ~1e-7) so that the loop
 * vectorises. The tails stop at -2.85 and 17.3, as for any 24-bit uniform. */
static inline float log_pos(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    int32_t e = (int32_t)((b >> 23) & 0xff) - 126;
    uint32_t mb = (b & 0x7fffffu) | 0x3f000000u; /* mantissa in [0.5, 1) */
    float m;
    memcpy(&m, &mb, 4);
    int small = m < 0.70710678f;
    e -= small;
    m = small ? m + m - 1.0f : m - 1.0f;
    float z = m * m;
    float y = (((((((( 7.0376836292E-2f * m - 1.1514610310E-1f) * m + 1.1676998740E-1f) * m - 1.2420140846E-1f) * m
                  + 1.4249322787E-1f) * m - 1.6668057665E-1f) * m + 2.0000714765E-1f) * m - 2.4999993993E-1f) * m
               + 3.3333331174E-1f) * m * z;
    y += -2.12194440E-4f * (float)e;
    y += -0.5f * z;
    return m + y + 0.693359375f * (float)e;
}

void gumbel_fill(float *out, int64_t n, uint64_t seed) {
#pragma omp parallel for simd schedule(static) if (n >= PAR_MIN / 4)
    for (int64_t i = 0; i < n; i++) {
        uint64_t z = seed + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        float u = ((float)(uint32_t)(z >> 40) + 0.5f) * 5.9604644775390625e-8f;
        out[i] = -log_pos(-log_pos(u));
    }
}

/* The softmax of a chunk, fused (see ReplacementStream in gumbel.py): for each row b, with
 * x_j = scale * s[b, j] (-inf and NaN scores have no mass), the chunk's log-mass lz_c = logsumexp_j x_j is folded into logz[b]; then,
 * when K > 0, each of the row's K slots takes a draw from this chunk's softmax with probability
 * exp(lz_c - logz_new) (weighted reservoir sampling over chunks: after the pass, every slot holds an
 * independent draw from the softmax over all chunks). work: [B, c] floats. Uniforms come from
 * splitmix64 of (seed, row, start, slot), so the draws do not depend on the threads. */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline float unif(uint64_t seed, int64_t b, int64_t start, int64_t m) {
    uint64_t z = mix64(seed + (uint64_t)(b + 1) * 0x9E3779B97F4A7C15ull);
    z = mix64(z + (uint64_t)(start + 1) * 0xD1B54A32D192ED03ull);
    z = mix64(z + (uint64_t)(m + 1) * 0x8CB92BA72F3D8DD7ull);
    return ((float)(uint32_t)(z >> 40) + 0.5f) * 5.9604644775390625e-8f;
}

/* exp(x) for x <= 0 (Cephes expf's polynomial, relative error < 1e-7), 0 below -87 and for -inf; branch-free
 * so the loop vectorises (n rounded by adding and subtracting 1.5 x 2^23: floorf is a library call here, 10x
 * slower). */
static inline float exp_neg(float x) {
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = (int32_t)(n > -126.0f ? n : -126.0f) + 127;
    uint32_t bits = (uint32_t)e << 23;
    float two;
    memcpy(&two, &bits, 4);
    return x > -87.0f ? p * two : 0.0f;
}

/* Per row: the chunk's maximum, then exp(x - max) into work with the sums of blocks of BLK (vectorised),
 * then each taking slot's uniform (sorted) is located by a walk over the block sums and one within its block. */
#define SOFTMAX_LOOP(LOAD)                                                                 \
    _Pragma("omp parallel for schedule(static) if (B * c >= PAR_MIN)")                     \
    for (int64_t b = 0; b < B; b++) {                                                      \
        float *w = work + b * c, mx = -INFINITY;                                           \
        int64_t nblk = (c + BLK - 1) / BLK;                                                \
        float bsum[nblk];                                                                  \
        _Pragma("omp simd reduction(max : mx)")                                            \
        for (int64_t j = 0; j < c; j++) {                                                  \
            float x = scale * LOAD(b, j);                                                  \
            x = x != x ? -INFINITY : x;                                                    \
            w[j] = x;                                                                      \
            mx = x > mx ? x : mx;                                                          \
        }                                                                                  \
        if (mx == -INFINITY) continue;                                                     \
        float sum = 0.0f;                                                                  \
        for (int64_t k0 = 0; k0 < nblk; k0++) {                                            \
            int64_t lo = k0 * BLK, hi = lo + BLK < c ? lo + BLK : c;                       \
            float part = 0.0f;                                                             \
            _Pragma("omp simd reduction(+ : part)")                                        \
            for (int64_t j = lo; j < hi; j++) {                                            \
                float e = exp_neg(w[j] - mx);                                              \
                w[j] = e;                                                                  \
                part += e;                                                                 \
            }                                                                              \
            bsum[k0] = part;                                                               \
            sum += part;                                                                   \
        }                                                                                  \
        float lzc = mx + logf(sum), old = logz[b];                                         \
        float hi = old > lzc ? old : lzc, lo = old > lzc ? lzc : old;                      \
        float lzn = hi + log1pf(expf(lo - hi));                                            \
        logz[b] = lzn;                                                                     \
        if (K == 0) continue;                                                              \
        float take = expf(lzc - lzn), us[K];                                               \
        int slot[K], t = 0;                                                                \
        for (int m = 0; m < K; m++) {                                                      \
            if (unif(seed, b, start, 2 * m) >= take) continue;                             \
            float u = unif(seed, b, start, 2 * m + 1) * sum;                               \
            int i = t++;                                                                   \
            while (i > 0 && us[i - 1] > u) { us[i] = us[i - 1]; slot[i] = slot[i - 1]; i--; } \
            us[i] = u;                                                                     \
            slot[i] = m;                                                                   \
        }                                                                                  \
        float acc = 0.0f;                                                                  \
        int i = 0;                                                                         \
        int64_t last = -1;                                                                 \
        for (int64_t k0 = 0; k0 < nblk && i < t; k0++) {                                   \
            if (bsum[k0] <= 0.0f) continue;                                                \
            if (k0 + 1 < nblk && us[i] >= acc + bsum[k0]) { acc += bsum[k0]; continue; }   \
            int64_t lo = k0 * BLK, hi = lo + BLK < c ? lo + BLK : c;                       \
            for (int64_t j = lo; j < hi && i < t; j++) {                                   \
                if (w[j] <= 0.0f) continue;                                                \
                acc += w[j];                                                               \
                last = j;                                                                  \
                for (; i < t && us[i] < acc; i++) {                                        \
                    pos[b * K + slot[i]] = start + j;                                      \
                    lg[b * K + slot[i]] = scale * LOAD(b, j);                              \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
        if (last < 0) /* rounding: every u beyond the walked sums; the last row with mass */ \
            for (last = c - 1; last > 0 && w[last] <= 0.0f; last--) {}                     \
        for (; i < t; i++) {                                                               \
            pos[b * K + slot[i]] = start + last;                                           \
            lg[b * K + slot[i]] = scale * LOAD(b, last);                                   \
        }                                                                                  \
    }

void softmax_stream_bf16(const uint16_t *s, int64_t B, int64_t c, int64_t ld, float scale, float *logz, int K, int64_t *pos, float *lg, int64_t start, uint64_t seed, float *work) {
    SOFTMAX_LOOP(LOAD_BF16)
}

void softmax_stream_f32(const float *s, int64_t B, int64_t c, int64_t ld, float scale, float *logz, int K, int64_t *pos, float *lg, int64_t start, uint64_t seed, float *work) {
    SOFTMAX_LOOP(LOAD_F32)
}
