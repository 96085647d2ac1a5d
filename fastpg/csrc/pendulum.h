// gymnasium's PendulumEnv.step (g = 10) for one env copy, as fastpg/envs/classic_control/pendulum.py
// performs it: the torque and its terms in float32 (the action space's dtype), the rest in the
// state's dtype, compiled without floating-point contraction and with the C library's cos/sin.
// An env kernel (env_kernel.h) with Box actions.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastpg {

template <typename T>
struct Pendulum {
  static constexpr int kStateDim = 2;
  static constexpr int kObsDim = 3;
  static constexpr int kNumActions = 0;
  static constexpr int kActionDim = 1;

  // TorchPendulum._sample_reset: numpy's uniform(-high, high) with high = [pi, 1], drawn in float64.
  static torch::Tensor reset(at::Generator& gen, int64_t draws, int64_t n, c10::ScalarType dtype) {
    auto u = torch::empty({draws, kStateDim, n}, torch::TensorOptions().dtype(torch::kFloat64)).uniform_(0.0, 1.0, gen);
    double* p = u.data_ptr<double>();
    for (int64_t d = 0; d < draws; ++d)
      for (int k = 0; k < kStateDim; ++k) {
        const double high = k == 0 ? M_PI : 1.0;
        double* row = p + (d * kStateDim + k) * n;
        for (int64_t i = 0; i < n; ++i) row[i] = -high + (high - -high) * row[i];
      }
    return u.to(dtype);
  }

  // torch.remainder / numpy's %: fmod, moved into the divisor's sign.
  static inline T remainder(T a, T b) {
    T mod = std::fmod(a, b);
    if (mod != T(0) && ((b < T(0)) != (mod < T(0)))) mod += b;
    return mod;
  }

  static inline bool step(const T s[2], const float* action, int64_t /*elapsed*/, T v[2], T& reward) {
    const T th = s[0], thdot = s[1];
    const float u = std::min(std::max(action[0], -2.0f), 2.0f);
    const T normalized = remainder(th + T(M_PI), T(2 * M_PI)) - T(M_PI);  // angle_normalize
    const T costs = normalized * normalized + T(0.1) * (thdot * thdot) + static_cast<T>(0.001f * (u * u));
    const T accel = T(3 * 10.0 / (2 * 1.0)) * std::sin(th) + static_cast<T>(3.0f * u);
    const T newthdot = std::min(std::max(thdot + accel * T(0.05), T(-8.0)), T(8.0));
    v[0] = th + newthdot * T(0.05);
    v[1] = newthdot;
    reward = -costs;
    return false;
  }

  static inline void observe(const T s[2], float o[3]) {
    o[0] = static_cast<float>(std::cos(s[0]));
    o[1] = static_cast<float>(std::sin(s[0]));
    o[2] = static_cast<float>(s[1]);
  }
};

}  // namespace fastpg
