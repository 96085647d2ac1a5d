// gymnasium's MountainCar-v0 and MountainCarContinuous-v0 steps for one env copy, as
// fastpg/envs/classic_control/mountain_car.py performs them (compiled without floating-point
// contraction, with the C library's cos). Env kernels (env_kernel.h): Discrete and Box actions.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace fastpg {

// _sample_position: position uniform in [-0.6, -0.4) (a float64 draw, one per copy), velocity 0.
inline torch::Tensor mountain_car_resets(at::Generator& gen, int64_t draws, int64_t n, c10::ScalarType dtype) {
  auto u = torch::empty({draws, n}, torch::TensorOptions().dtype(torch::kFloat64)).uniform_(0.0, 1.0, gen);
  u.mul_(0.2).add_(-0.6);
  auto out = torch::zeros({draws, 2, n}, torch::TensorOptions().dtype(dtype));
  out.select(1, 0).copy_(u);
  return out;
}

template <typename T>
struct MountainCar {
  static constexpr int kStateDim = 2;
  static constexpr int kObsDim = 2;
  static constexpr int kNumActions = 3;
  static constexpr int kActionDim = 0;

  static torch::Tensor reset(at::Generator& gen, int64_t draws, int64_t n, c10::ScalarType dtype) {
    return mountain_car_resets(gen, draws, n, dtype);
  }

  // Push left (0), none (1) or right (2); reward -1; terminated at position >= 0.5, velocity >= 0.
  static inline bool step(const T s[2], int64_t a, int64_t /*elapsed*/, T v[2], T& reward) {
    const T push = static_cast<T>((a - 1) * 0.001);
    T velocity = s[1] + (push + std::cos(T(3.0) * s[0]) * T(-0.0025));
    velocity = std::min(std::max(velocity, T(-0.07)), T(0.07));
    const T position = std::min(std::max(s[0] + velocity, T(-1.2)), T(0.6));
    if (position == T(-1.2) && velocity < T(0)) velocity = T(0);
    v[0] = position;
    v[1] = velocity;
    reward = T(-1.0);
    return position >= T(0.5) && velocity >= T(0.0);
  }

  static inline void observe(const T s[2], float o[2]) {
    o[0] = static_cast<float>(s[0]);
    o[1] = static_cast<float>(s[1]);
  }
};

// gymnasium keeps this env's state in float32 and computes most of a step in float32, except the
// first step after a reset (elapsed 0), whose state is still its float64 reset array: both paths
// are reproduced (TorchMountainCarContinuous holds the state in float64).
template <typename T>
struct MountainCarContinuous {
  static constexpr int kStateDim = 2;
  static constexpr int kObsDim = 2;
  static constexpr int kNumActions = 0;
  static constexpr int kActionDim = 1;

  static torch::Tensor reset(at::Generator& gen, int64_t draws, int64_t n, c10::ScalarType dtype) {
    return mountain_car_resets(gen, draws, n, dtype);
  }

  static inline bool step(const T s[2], const float* action, int64_t elapsed, T v[2], T& reward) {
    const float a = action[0];
    const bool fresh = elapsed == 0;
    const double position = s[0], velocity = s[1];
    const float p32 = static_cast<float>(position), v32 = static_cast<float>(velocity);
    const bool inside = !(a < -1.0f) && !(a > 1.0f);
    const double cos_term =
        0.0025 * std::cos(fresh ? 3.0 * position : static_cast<double>(3.0f * p32));
    const double dv_in = static_cast<double>(a * 0.0015f - static_cast<float>(cos_term));
    const double dv_out = (a > 0 ? 0.0015 : -0.0015) - cos_term;
    const double dv = inside ? dv_in : dv_out;
    const float v_steady = std::min(std::max(v32 + static_cast<float>(dv), -0.07f), 0.07f);
    const float p_steady = std::min(std::max(p32 + v_steady, -1.2f), 0.6f);
    const double v_first = std::min(std::max(velocity + dv, -0.07), 0.07);
    const double p_first = std::min(std::max(position + v_first, -1.2), 0.6);
    double vel = fresh ? v_first : static_cast<double>(v_steady);
    const double pos = fresh ? p_first : static_cast<double>(p_steady);
    const bool at_wall = fresh ? p_first == -1.2 : p_steady == -1.2f;
    if (at_wall && vel < 0) vel = 0.0;
    const bool reached = fresh ? p_first >= 0.45 : p_steady >= 0.45f;
    const bool terminated = reached && vel >= 0.0;
    const double a64 = a;
    reward = static_cast<T>((terminated ? 100.0 : 0.0) - (a64 * a64) * 0.1);
    v[0] = static_cast<T>(static_cast<double>(static_cast<float>(pos)));
    v[1] = static_cast<T>(static_cast<double>(static_cast<float>(vel)));
    return terminated;
  }

  static inline void observe(const T s[2], float o[2]) {
    o[0] = static_cast<float>(s[0]);
    o[1] = static_cast<float>(s[1]);
  }
};

}  // namespace fastpg
