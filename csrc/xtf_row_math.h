// Row math shared by the CUDA kernels and the host unit test (tests/csrc/row_math_check.cpp).
//
// Everything here is plain C++ on fp32 values: no CUDA header, no torch. Under nvcc the functions are
// __host__ __device__; under a host compiler they are ordinary inline functions, which is how CI checks
// them on a machine without a GPU against float64 references.
//
// The formulas are the ones documented in xtf_kernels/ops/spec.py. For a row of raw logits y (the
// GEMM output hidden @ weight.T + bias), the final logits are
//     z = softcap(y) / T,   softcap(y) = s * tanh(y / s)   (s = 0: no softcap)
// and with p = softmax(z), target t, label smoothing eps, z-loss coefficient c and upstream gradients
// g_loss, g_logprob, g_entropy, g_lse of the four per-row outputs
//     dL/dz_j = p_j (A + D z_j) + B [j == t] + C
//     A = g_lse + g_loss (1 + 2 c lse) - g_logprob + g_entropy (lse - entropy)
//     D = -g_entropy,  B = g_logprob - g_loss (1 - eps),  C = -g_loss eps / V
// and dL/dy_j = dL/dz_j * (1 / T) * (1 - tanh^2(y_j / s)).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define XTF_HD __host__ __device__ __forceinline__
#else
#define XTF_HD inline
#endif

namespace xtf {

// How raw logits become final logits: z = softcap(y) * inv_temperature.
struct LogitTransform {
  float softcap;          // s > 0 applies s * tanh(y / s); 0 disables it
  float inv_temperature;  // 1 / T
};

XTF_HD float final_logit(float raw, LogitTransform tr) {
  if (tr.softcap > 0.f) {
    // Same operation order as the torch backend: tanh(y * (1 / s)) * (s / T).
    return tanhf(raw * (1.f / tr.softcap)) * (tr.softcap * tr.inv_temperature);
  }
  return raw * tr.inv_temperature;
}

// The final logit and dz/dy at one raw logit.
struct TransformedLogit {
  float value;       // z
  float derivative;  // dz/dy = (1 / T)(1 - tanh^2(y / s)), or 1 / T without softcap
};

XTF_HD TransformedLogit transform_logit(float raw, LogitTransform tr) {
  if (tr.softcap > 0.f) {
    const float t = tanhf(raw * (1.f / tr.softcap));
    return {t * (tr.softcap * tr.inv_temperature), (1.f - t * t) * tr.inv_temperature};
  }
  return {raw * tr.inv_temperature, tr.inv_temperature};
}

// Online softmax statistics of a set of final logits, relative to their running maximum m:
//     sum_exp = sum_j exp(z_j - m),   shifted = sum_j exp(z_j - m) (z_j - m).
// Then lse = m + log(sum_exp) and entropy = lse - sum_j p_j z_j = log(sum_exp) - shifted / sum_exp.
// Keeping (z - m) rather than z in the second sum keeps every term bounded (|z| ~ 1e4 stays exact to
// fp32 rounding), and any two partial sets merge exactly (threads, warps, vocabulary slices).
struct SoftmaxStats {
  float max;      // -inf while empty
  float sum_exp;  // 0 while empty
  float shifted;
};

XTF_HD SoftmaxStats empty_stats() { return {-INFINITY, 0.f, 0.f}; }

// Adds one final logit. One exp per element: the running sums are rescaled only when the maximum
// grows. A -inf logit (a vocabulary entry masked through the bias) contributes nothing; a NaN logit
// propagates into the statistics instead of being dropped.
XTF_HD void push_logit(SoftmaxStats& st, float z) {
  if (z > st.max) {
    const float d = st.max - z;  // <= 0; -inf when st was empty
    const float f = expf(d);
    st.shifted = st.sum_exp > 0.f ? (st.shifted + d * st.sum_exp) * f : 0.f;
    st.sum_exp = st.sum_exp * f + 1.f;
    st.max = z;
  } else if (z != -INFINITY) {
    const float d = z - st.max;
    const float e = expf(d);
    st.sum_exp += e;
    st.shifted += e * d;
  }
}

// The statistics of the union of two disjoint sets.
XTF_HD SoftmaxStats merge_stats(SoftmaxStats a, SoftmaxStats b) {
  if (a.sum_exp == 0.f) return b;
  if (b.sum_exp == 0.f) return a;
  const float m = fmaxf(a.max, b.max);
  const float da = a.max - m;
  const float db = b.max - m;
  const float fa = expf(da);
  const float fb = expf(db);
  return {m, a.sum_exp * fa + b.sum_exp * fb, (a.shifted + da * a.sum_exp) * fa + (b.shifted + db * b.sum_exp) * fb};
}

XTF_HD float stats_lse(SoftmaxStats st) { return st.max + logf(st.sum_exp); }

XTF_HD float stats_entropy(SoftmaxStats st) { return logf(st.sum_exp) - st.shifted / st.sum_exp; }

// Coefficients of dL/dz_j = p_j (A + D z_j) + B [j == t] + C for one row.
struct RowGradCoefficients {
  float a, b, c, d;
};

XTF_HD RowGradCoefficients row_grad_coefficients(float g_loss, float g_logprob, float g_entropy, float g_lse, float lse,
                                                 float entropy, float label_smoothing, float z_loss, int64_t vocab) {
  RowGradCoefficients k;
  k.a = g_lse + g_loss * (1.f + 2.f * z_loss * lse) - g_logprob;
  // entropy is only meaningful (and only read) when it has an upstream gradient.
  if (g_entropy != 0.f) k.a += g_entropy * (lse - entropy);
  k.d = -g_entropy;
  k.b = g_logprob - g_loss * (1.f - label_smoothing);
  k.c = -g_loss * label_smoothing / static_cast<float>(vocab);
  return k;
}

// p_j = exp(z_j - shift) * scale. From the row's statistics: shift = max, scale = 1 / sum_exp, so z - max
// is exact; from a known log-sum-exp only: shift = lse, scale = 1. The first matters at large logits:
// fp32 rounds an lse near 1e4 to ~1e-3, which would be a ~1e-3 relative error in every p_j.
struct SoftmaxNormalizer {
  float shift;
  float scale;
};

XTF_HD SoftmaxNormalizer normalizer_from_stats(SoftmaxStats st) { return {st.max, 1.f / st.sum_exp}; }

XTF_HD SoftmaxNormalizer normalizer_from_lse(float lse) { return {lse, 1.f}; }

// dL/dy for one raw logit y of a row.
XTF_HD float raw_logit_grad(float raw, bool is_target, SoftmaxNormalizer norm, RowGradCoefficients k,
                            LogitTransform tr) {
  const TransformedLogit z = transform_logit(raw, tr);
  const float p = expf(z.value - norm.shift) * norm.scale;
  float dz = p * (k.a + k.d * z.value) + k.c;
  if (is_target) dz += k.b;
  return dz * z.derivative;
}

}  // namespace xtf
