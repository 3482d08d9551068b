// Host driver for csrc/xtf_row_math.h: evaluates the shared row math on the CPU for test_row_math.py.
//
// Reads one command per line on stdin and prints one line of results (%.9g, which round-trips fp32):
//   stats N z_1..z_N
//       -> lse entropy (one element at a time)  lse entropy (slices of 3 merged right to left)
//   argmax N z_1..z_N
//       -> first index of the maximum (one element at a time)  the same (slices of 3 merged right to left)
//   transform y softcap inv_temperature logit_scale
//       -> z dz/dy z (final_logit)
//   coef g_loss g_logprob g_entropy g_lse lse log_norm entropy label_smoothing z_loss target_weight
//        weight_mean V
//       -> A B C D
//   row V target softcap inv_temperature logit_scale label_smoothing z_loss g_loss g_logprob g_entropy g_lse
//       weighted [w_1..w_V if weighted is 1] y_1..y_V
//       -> lse entropy mean_logit target_logit argmax dL/dy_1..dL/dy_V   (what the kernels compute for one
//          row, p from the row's max and sum of exponentials; mean_logit = (1 / V) sum w z)
//   row_known_lse ...  the same, with p from the log-sum-exp alone (the recomputing backward)
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "xtf_row_math.h"

namespace {

// strtof rather than operator>>, which rejects "inf" and "nan".
float next_float(std::istream& in) {
  std::string token;
  in >> token;
  char* end = nullptr;
  const float value = std::strtof(token.c_str(), &end);
  if (token.empty() || *end != '\0') in.setstate(std::ios::failbit);
  return value;
}

std::vector<float> read_floats(std::istream& in, long count) {
  std::vector<float> values(static_cast<size_t>(count));
  for (float& v : values) v = next_float(in);
  return values;
}

void print(const std::vector<float>& values) {
  for (size_t i = 0; i < values.size(); ++i) std::printf(i ? " %.9g" : "%.9g", static_cast<double>(values[i]));
  std::printf("\n");
}

xtf::SoftmaxStats stats_of(const std::vector<float>& z, size_t lo, size_t hi) {
  xtf::SoftmaxStats st = xtf::empty_stats();
  for (size_t j = lo; j < hi; ++j) xtf::push_logit(st, z[j]);
  return st;
}

// Slices of 3 elements merged from the last to the first: a different association order than pushing,
// as the kernels' thread, warp and vocabulary-slice merges are.
xtf::SoftmaxStats merged_stats(const std::vector<float>& z) {
  xtf::SoftmaxStats st = xtf::empty_stats();
  for (size_t hi = z.size(); hi > 0;) {
    const size_t lo = hi >= 3 ? hi - 3 : 0;
    st = xtf::merge_stats(stats_of(z, lo, hi), st);
    hi = lo;
  }
  return st;
}

// Slices of 3 merged from the last to the first, as merged_stats does.
xtf::ArgMax merged_argmax(const std::vector<float>& z) {
  xtf::ArgMax best = xtf::empty_argmax();
  for (size_t hi = z.size(); hi > 0;) {
    const size_t lo = hi >= 3 ? hi - 3 : 0;
    xtf::ArgMax slice = xtf::empty_argmax();
    for (size_t j = lo; j < hi; ++j) xtf::push_argmax(slice, z[j], static_cast<int64_t>(j));
    best = xtf::merge_argmax(slice, best);
    hi = lo;
  }
  return best;
}

void argmax(std::istream& in) {
  long n;
  in >> n;
  const std::vector<float> z = read_floats(in, n);
  xtf::ArgMax pushed = xtf::empty_argmax();
  for (size_t j = 0; j < z.size(); ++j) xtf::push_argmax(pushed, z[j], static_cast<int64_t>(j));
  std::printf("%lld %lld\n", static_cast<long long>(pushed.index), static_cast<long long>(merged_argmax(z).index));
}

void stats(std::istream& in) {
  long n;
  in >> n;
  const std::vector<float> z = read_floats(in, n);
  const xtf::SoftmaxStats pushed = stats_of(z, 0, z.size());
  const xtf::SoftmaxStats merged = merged_stats(z);
  print({xtf::stats_lse(pushed), xtf::stats_entropy(pushed), xtf::stats_lse(merged), xtf::stats_entropy(merged)});
}

void transform(std::istream& in) {
  const std::vector<float> v = read_floats(in, 4);  // y softcap inv_temperature logit_scale
  const xtf::LogitTransform tr = xtf::make_transform(v[1], v[2], v[3]);
  const xtf::TransformedLogit z = xtf::transform_logit(v[0], tr);
  print({z.value, z.derivative, xtf::final_logit(v[0], tr)});
}

void coef(std::istream& in) {
  // g_loss g_logprob g_entropy g_lse lse log_norm entropy eps c target_weight weight_mean
  const std::vector<float> v = read_floats(in, 11);
  long vocab;
  in >> vocab;
  const xtf::RowGradCoefficients k =
      xtf::row_grad_coefficients(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], vocab, v[9], v[10]);
  print({k.a, k.b, k.c, k.d});
}

void row(std::istream& in, bool known_lse) {
  long vocab, target, weighted;
  in >> vocab >> target;
  // softcap inv_temperature logit_scale label_smoothing z_loss g_loss g_logprob g_entropy g_lse
  const std::vector<float> o = read_floats(in, 9);
  in >> weighted;
  const std::vector<float> w = weighted ? read_floats(in, vocab) : std::vector<float>(vocab > 0 ? vocab : 0, 1.f);
  const std::vector<float> y = read_floats(in, vocab);
  if (in.fail() || vocab < 1 || target < 0 || target >= vocab) {
    in.setstate(std::ios::failbit);
    return;
  }
  const xtf::LogitTransform tr = xtf::make_transform(o[0], o[1], o[2]);
  std::vector<float> z(y.size());
  float sum = 0.f, weight_sum = 0.f;
  for (size_t j = 0; j < y.size(); ++j) {
    z[j] = xtf::final_logit(y[j], tr);
    sum += w[j] * z[j];
    weight_sum += w[j];
  }
  const xtf::SoftmaxStats st = merged_stats(z);
  const float lse = xtf::stats_lse(st);
  const float entropy = xtf::stats_entropy(st);
  const xtf::SoftmaxNormalizer norm = known_lse ? xtf::normalizer_from_lse(lse) : xtf::normalizer_from_stats(st);
  const xtf::RowGradCoefficients k =
      xtf::row_grad_coefficients(o[5], o[6], o[7], o[8], lse, norm.log_norm, entropy, o[3], o[4], vocab,
                                 w[static_cast<size_t>(target)], weight_sum / static_cast<float>(vocab));
  const float mean = sum / static_cast<float>(vocab);
  std::vector<float> out = {lse, entropy, mean, z[static_cast<size_t>(target)],
                            static_cast<float>(merged_argmax(z).index)};
  for (long j = 0; j < vocab; ++j) {
    const size_t u = static_cast<size_t>(j);
    out.push_back(xtf::raw_logit_grad(y[u], j == target, w[u], norm, k, tr));
  }
  print(out);
}

}  // namespace

int main() {
  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string command;
    if (!(in >> command)) continue;
    if (command == "stats") {
      stats(in);
    } else if (command == "argmax") {
      argmax(in);
    } else if (command == "transform") {
      transform(in);
    } else if (command == "coef") {
      coef(in);
    } else if (command == "row" || command == "row_known_lse") {
      row(in, command == "row_known_lse");
    } else {
      std::fprintf(stderr, "unknown command %s\n", command.c_str());
      return 2;
    }
    if (in.fail()) {
      std::fprintf(stderr, "malformed line: %s\n", line.c_str());
      return 2;
    }
  }
  return 0;
}
