// Row math shared by the CUDA kernels and the host unit test (tests/csrc/row_math_check.cpp).
//
// Everything here is plain C++ on fp32 values: no CUDA header, no torch. Under nvcc the functions are
// __host__ __device__; under a host compiler they are ordinary inline functions, which is how CI checks
// them on a machine without a GPU against float64 references.
//
// The formulas are the ones documented in xtf_kernels/ops/spec.py. For a row of raw logits r (the
// GEMM output hidden @ weight.T + bias), the final logits are
//     z = softcap(a r) / T,   softcap(y) = s * tanh(y / s)   (s = 0: no softcap; a: the logit scale)
// and with p = softmax(z), target t, label smoothing eps, z-loss coefficient c, class weights w (w = 1
// without them, S = sum_j w_j) and upstream gradients g_loss, g_logprob, g_entropy, g_lse of the four
// per-row outputs (loss = (1 - eps) w_t (lse - z_t) + (eps / V) sum_j w_j (lse - z_j) + c lse^2)
//     dL/dz_j = p_j (A + D z_j) + B [j == t] + C w_j
//     A = g_lse + g_loss ((1 - eps) w_t + eps S / V + 2 c lse) - g_logprob + g_entropy (lse - entropy)
//     D = -g_entropy,  B = g_logprob - g_loss (1 - eps) w_t,  C = -g_loss eps / V
// and dL/dr_j = dL/dz_j * (a / T) * (1 - tanh^2(a r_j / s)).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define XTF_HD __host__ __device__ __forceinline__
#else
#define XTF_HD inline
#endif

namespace xtf {

// How raw logits become final logits, as three fp32 constants formed once in double (one rounding each,
// the same constants the Triton kernels take, xtf_kernels/ops/_triton/row_math.py):
//     with softcap s:  z = out_scale * tanh(tanh_scale * r),  tanh_scale = a / s,  out_scale = s / T
//     without:         z = out_scale * r,                     out_scale = a / T
//     dz/dr = slope_scale * (1 - tanh^2),                     slope_scale = a / T
struct LogitTransform {
  float tanh_scale;  // 0 without softcap
  float out_scale;
  float slope_scale;
  bool softcap;
};

// softcap s > 0 or 0 (off), inv_temperature 1 / T, logit_scale a > 0.
XTF_HD LogitTransform make_transform(float softcap, float inv_temperature, float logit_scale) {
  const double slope = static_cast<double>(logit_scale) * static_cast<double>(inv_temperature);
  if (softcap > 0.f) {
    return {static_cast<float>(static_cast<double>(logit_scale) / softcap),
            static_cast<float>(static_cast<double>(softcap) * inv_temperature), static_cast<float>(slope), true};
  }
  return {0.f, static_cast<float>(slope), static_cast<float>(slope), false};
}

XTF_HD float final_logit(float raw, LogitTransform tr) {
  if (tr.softcap) return tanhf(raw * tr.tanh_scale) * tr.out_scale;
  return raw * tr.out_scale;
}

// The final logit and dz/dr at one raw logit.
struct TransformedLogit {
  float value;       // z
  float derivative;  // dz/dr = slope_scale (1 - tanh^2), or slope_scale without softcap
};

// 1 - tanh^2(x) = 4 e / (1 + e)^2 with e = exp(-2|x|): a few ulp for every x. The textbook 1 - t * t
// subtracts two numbers near 1 for large |x| (at |x| = 5 it keeps ~3 digits of 1.8e-4) and is 0 from |x| ~ 9.
XTF_HD float sech2(float x) {
  const float e = expf(-2.f * fabsf(x));
  const float one_plus_e = 1.f + e;
  return 4.f * e / (one_plus_e * one_plus_e);
}

XTF_HD TransformedLogit transform_logit(float raw, LogitTransform tr) {
  if (tr.softcap) {
    const float x = raw * tr.tanh_scale;
    return {tanhf(x) * tr.out_scale, tr.slope_scale * sech2(x)};
  }
  return {raw * tr.out_scale, tr.slope_scale};
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

// The first index of the maximal final logit (torch.argmax's tie rule, NaN aside): a larger value wins,
// an equal one keeps the smaller index, so any order of pushes and merges gives the same answer. Empty:
// value -inf and the largest index, so it loses every merge; a row of -inf logits gets index 0.
struct ArgMax {
  float value;
  int64_t index;
};

XTF_HD ArgMax empty_argmax() { return {-INFINITY, INT64_MAX}; }

XTF_HD void push_argmax(ArgMax& a, float z, int64_t j) {
  if (z > a.value || (z == a.value && j < a.index)) a = {z, j};
}

XTF_HD ArgMax merge_argmax(ArgMax a, ArgMax b) {
  return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
}

// Coefficients of dL/dz_j = p_j (A + D (z_j - shift)) + B [j == t] + C w_j for one row: the formula above
// with the entropy term taken relative to the normalizer's shift (A's g_entropy (lse - entropy) becomes
// g_entropy (log_norm - entropy), log_norm = lse - shift), so at logits ~1e4 no two logit-sized numbers
// are subtracted when the row's statistics are at hand. target_weight = w_t and weight_mean = S / V
// (both 1 without class weights).
struct RowGradCoefficients {
  float a, b, c, d;
};

XTF_HD RowGradCoefficients row_grad_coefficients(float g_loss, float g_logprob, float g_entropy, float g_lse, float lse,
                                                 float log_norm, float entropy, float label_smoothing, float z_loss,
                                                 int64_t vocab, float target_weight, float weight_mean) {
  RowGradCoefficients k;
  const float nll_weight = (1.f - label_smoothing) * target_weight;
  k.a = g_lse + g_loss * (nll_weight + label_smoothing * weight_mean + 2.f * z_loss * lse) - g_logprob;
  // entropy is only meaningful (and only read) when it has an upstream gradient.
  if (g_entropy != 0.f) k.a += g_entropy * (log_norm - entropy);
  k.d = -g_entropy;
  k.b = g_logprob - g_loss * nll_weight;
  k.c = -g_loss * label_smoothing / static_cast<float>(vocab);
  return k;
}

// p_j = exp(z_j - shift) * scale. From the row's statistics: shift = max, scale = 1 / sum_exp, so z - max
// is exact; from a known log-sum-exp only: shift = lse, scale = 1. The first matters at large logits:
// fp32 rounds an lse near 1e4 to ~1e-3, which would be a ~1e-3 relative error in every p_j.
struct SoftmaxNormalizer {
  float shift;
  float scale;
  float log_norm;  // lse - shift: log(sum_exp) from the statistics, 0 from a known lse
};

XTF_HD SoftmaxNormalizer normalizer_from_stats(SoftmaxStats st) { return {st.max, 1.f / st.sum_exp, logf(st.sum_exp)}; }

XTF_HD SoftmaxNormalizer normalizer_from_lse(float lse) { return {lse, 1.f, 0.f}; }

// dL/dr for one raw logit r of a row; class_weight: w_j (1 without class weights).
XTF_HD float raw_logit_grad(float raw, bool is_target, float class_weight, SoftmaxNormalizer norm,
                            RowGradCoefficients k, LogitTransform tr) {
  const TransformedLogit z = transform_logit(raw, tr);
  const float shifted = z.value - norm.shift;
  const float p = expf(shifted) * norm.scale;
  // A -inf logit has p = 0: its p D (z - shift) term is 0, not 0 * -inf = NaN.
  float dz = p * (k.a + (p > 0.f ? k.d * shifted : 0.f)) + k.c * class_weight;
  if (is_target) dz += k.b;
  return dz * z.derivative;
}

}  // namespace xtf
