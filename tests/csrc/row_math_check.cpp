// Host driver for csrc/xtf_row_math.h: evaluates the shared row math on the CPU for test_row_math.py.
//
// Reads one command per line on stdin and prints one line of results (%.9g, which round-trips fp32):
//   stats N z_1..z_N
//       -> lse entropy (one element at a time)  lse entropy (slices of 3 merged right to left)
//   transform y softcap inv_temperature
//       -> z dz/dy
//   coef g_loss g_logprob g_entropy g_lse lse entropy label_smoothing z_loss V
//       -> A B C D
//   row V target softcap inv_temperature label_smoothing z_loss g_loss g_logprob g_entropy g_lse y_1..y_V
//       -> lse entropy mean_logit target_logit dL/dy_1..dL/dy_V   (what the kernels compute for one row,
//          p from the row's max and sum of exponentials)
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

void stats(std::istream& in) {
  long n;
  in >> n;
  const std::vector<float> z = read_floats(in, n);
  const xtf::SoftmaxStats pushed = stats_of(z, 0, z.size());
  const xtf::SoftmaxStats merged = merged_stats(z);
  print({xtf::stats_lse(pushed), xtf::stats_entropy(pushed), xtf::stats_lse(merged), xtf::stats_entropy(merged)});
}

void transform(std::istream& in) {
  const float y = next_float(in), softcap = next_float(in), inv_temperature = next_float(in);
  const xtf::TransformedLogit z = xtf::transform_logit(y, {softcap, inv_temperature});
  print({z.value, z.derivative, xtf::final_logit(y, {softcap, inv_temperature})});
}

void coef(std::istream& in) {
  const std::vector<float> v = read_floats(in, 8);  // g_loss g_logprob g_entropy g_lse lse entropy eps c
  long vocab;
  in >> vocab;
  const xtf::RowGradCoefficients k = xtf::row_grad_coefficients(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], vocab);
  print({k.a, k.b, k.c, k.d});
}

void row(std::istream& in, bool known_lse) {
  long vocab, target;
  in >> vocab >> target;
  // softcap inv_temperature label_smoothing z_loss g_loss g_logprob g_entropy g_lse
  const std::vector<float> o = read_floats(in, 8);
  const std::vector<float> y = read_floats(in, vocab);
  if (in.fail() || vocab < 1 || target < 0 || target >= vocab) {
    in.setstate(std::ios::failbit);
    return;
  }
  const xtf::LogitTransform tr{o[0], o[1]};
  std::vector<float> z(y.size());
  float sum = 0.f;
  for (size_t j = 0; j < y.size(); ++j) {
    z[j] = xtf::final_logit(y[j], tr);
    sum += z[j];
  }
  const xtf::SoftmaxStats st = merged_stats(z);
  const float lse = xtf::stats_lse(st);
  const float entropy = xtf::stats_entropy(st);
  const xtf::RowGradCoefficients k =
      xtf::row_grad_coefficients(o[4], o[5], o[6], o[7], lse, entropy, o[2], o[3], vocab);
  std::vector<float> out = {lse, entropy, sum / static_cast<float>(vocab), z[static_cast<size_t>(target)]};
  const xtf::SoftmaxNormalizer norm = known_lse ? xtf::normalizer_from_lse(lse) : xtf::normalizer_from_stats(st);
  for (long j = 0; j < vocab; ++j) {
    out.push_back(xtf::raw_logit_grad(y[static_cast<size_t>(j)], j == target, norm, k, tr));
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
