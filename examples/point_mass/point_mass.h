// PointMass: an env kernel written outside fastpg (the interface: fastpg/csrc/env_kernel.h).
//
// A unit mass on a line, pushed by a force in [-1, 1]: state [x, v], observation [x, v]. Each
// step v += 0.1 a, then x += 0.1 v; reward -(x^2 + 0.1 a^2); the episode terminates when the mass
// rests near the origin (|x| < 0.05 and |v| < 0.05) and is truncated at 100 steps. Resets draw x
// uniform in [-1, 1) and v uniform in [-0.1, 0.1), as point_mass.py's _sample_reset does.
//
// The arithmetic is point_mass.py's, operation for operation (compiled without floating-point
// contraction), so the two agree bit for bit in float64.
#pragma once
#include <torch/extension.h>

#include <cmath>
#include <cstdint>

namespace examples {

template <typename T>
struct PointMass {
  static constexpr int kStateDim = 2;
  static constexpr int kObsDim = 2;
  static constexpr int kNumActions = 0;  // Box actions
  static constexpr int kActionDim = 1;

  // `draws` successive calls of PointMass._sample_reset(n): one float64 uniform draw [2, n] each,
  // mapped to [-1, 1) and [-0.1, 0.1).
  static torch::Tensor reset(at::Generator& gen, int64_t draws, int64_t n, c10::ScalarType dtype) {
    auto u = torch::empty({draws, kStateDim, n}, torch::TensorOptions().dtype(torch::kFloat64)).uniform_(0.0, 1.0, gen);
    double* p = u.data_ptr<double>();
    for (int64_t d = 0; d < draws; ++d)
      for (int k = 0; k < kStateDim; ++k) {
        const double high = k == 0 ? 1.0 : 0.1;
        double* row = p + (d * kStateDim + k) * n;
        for (int64_t i = 0; i < n; ++i) row[i] = (2.0 * high) * row[i] - high;
      }
    return u.to(dtype);
  }

  static inline bool step(const T* s, const float* action, int64_t /*elapsed*/, T* next, T& reward) {
    const T a = static_cast<T>(action[0]);  // already clipped to [-1, 1]
    const T v = s[1] + T(0.1) * a;
    const T x = s[0] + T(0.1) * v;
    next[0] = x;
    next[1] = v;
    reward = -(s[0] * s[0] + T(0.1) * (a * a));
    return std::abs(x) < T(0.05) && std::abs(v) < T(0.05);
  }

  static inline void observe(const T* s, float* o) {
    o[0] = static_cast<float>(s[0]);
    o[1] = static_cast<float>(s[1]);
  }
};

}  // namespace examples
