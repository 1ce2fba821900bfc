/* Running top-K of perturbed keys over one chunk of scores, fused in one pass (see gumbel.py).
 *
 * For each row b: key_j = fma(scale, s[b, j], noise[b * stride + j]); keys above the row's current
 * K-th key are inserted into its sorted list (keys, positions, logits = scale * s). Blocks of 16
 * are tested with one vector compare, so most of the chunk costs a load, an fma and a compare.
 * Scores are bf16 (raw uint16 bits) or fp32, row-major with leading dimension ld; -inf and NaN
 * scores are never inserted. Built by samplers/kernel.py with the system C compiler.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLK 32

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

#define ROW_LOOP(LOAD)                                                                     \
    for (int64_t b = b0; b < b1; b++) {                                                    \
        const float *g = noise + b * stride;                                               \
        float *kk = keys + b * K, *ll = lg + b * K;                                        \
        int64_t *pp = pos + b * K;                                                         \
        float thr = kk[K - 1];                                                             \
        int64_t j = 0;                                                                     \
        for (; j + BLK <= c; j += BLK) {                                                   \
            float v[BLK];                                                                  \
            int any = 0;                                                                   \
            for (int t = 0; t < BLK; t++) v[t] = fmaf(scale, LOAD(b, j + t), g[j + t]);    \
            for (int t = 0; t < BLK; t++) any |= v[t] > thr;                               \
            if (any)                                                                       \
                for (int t = 0; t < BLK; t++)                                              \
                    if (v[t] > thr) {                                                      \
                        insert(kk, pp, ll, K, v[t], start + j + t, scale * LOAD(b, j + t)); \
                        thr = kk[K - 1];                                                   \
                    }                                                                      \
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
    ROW_LOOP(LOAD_BF16)
}

void topk_stream_f32(const float *s, int64_t b0, int64_t b1, int64_t c, int64_t ld, const float *noise,
                     int64_t stride, float scale, int64_t start, int K, float *keys, int64_t *pos, float *lg) {
    ROW_LOOP(LOAD_F32)
}
