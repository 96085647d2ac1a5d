// gymnasium's CartPoleEnv.step for one env copy, operation for operation (compiled without
// floating-point contraction, with the C library's cos/sin as numpy uses): bit-identical to
// gymnasium in float64. Shared by the step kernel and the fused epoch (an env kernel: env_kernel.h).
#pragma once
#include <torch/extension.h>

#include <cmath>
#include <cstdint>

namespace fastpg {

template <typename T>
struct CartPole {
  static constexpr int kStateDim = 4;
  static constexpr int kObsDim = 4;
  static constexpr int kNumActions = 2;
  static constexpr int kActionDim = 0;

  // TorchCartPole._sample_reset: uniform in [-0.05, 0.05]^4 in the env's dtype.
  static torch::Tensor reset(at::Generator& gen, int64_t draws, int64_t n, c10::ScalarType dtype) {
    return torch::empty({draws, kStateDim, n}, torch::TensorOptions().dtype(dtype)).uniform_(-0.05, 0.05, gen);
  }

  // From state s, take action a (0 push left, 1 push right): the next state into v; returns
  // whether it terminated (|x| > 2.4 or |theta| > 12 degrees).
  static inline bool step(const T s[4], int64_t a, T v[4]) {
    const T gravity = 9.8, masspole = 0.1, length = 0.5, force_mag = 10.0, tau = 0.02;
    const T total_mass = T(0.1 + 1.0);
    const T polemass_length = T(0.1 * 0.5);
    const T theta_threshold = T(12 * 2 * M_PI / 360), x_threshold = T(2.4), four_thirds = T(4.0 / 3.0);
    const T x = s[0], x_dot = s[1], theta = s[2], theta_dot = s[3];
    const T force = a == 1 ? force_mag : -force_mag;
    const T costheta = std::cos(theta), sintheta = std::sin(theta);
    const T temp = (force + polemass_length * (theta_dot * theta_dot) * sintheta) / total_mass;
    const T thetaacc = (gravity * sintheta - costheta * temp) /
                       (length * (four_thirds - masspole * (costheta * costheta) / total_mass));
    const T xacc = temp - polemass_length * thetaacc * costheta / total_mass;
    v[0] = x + tau * x_dot;
    v[1] = x_dot + tau * xacc;
    v[2] = theta + tau * theta_dot;
    v[3] = theta_dot + tau * thetaacc;
    return v[0] < -x_threshold || v[0] > x_threshold || v[2] < -theta_threshold || v[2] > theta_threshold;
  }

  // The step as the fused collect takes it: reward 1 for every step, the terminal one included.
  static inline bool step(const T s[4], int64_t a, int64_t /*elapsed*/, T v[4], T& reward) {
    reward = T(1.0);
    return step(s, a, v);
  }

  static inline void observe(const T s[4], float o[4]) {
    for (int i = 0; i < 4; ++i) o[i] = static_cast<float>(s[i]);
  }
};

}  // namespace fastpg
