// gymnasium's AcrobotEnv.step ("book" dynamics: rk4 over dt = 0.2, wrap, bound), operation for
// operation as fastpg/envs/classic_control/acrobot.py performs it (the constant prefixes of
// gymnasium's products evaluated as Python evaluates them), compiled without floating-point
// contraction. Float64 results agree with gymnasium's to the last bit of the C library's cos/sin.
#pragma once
#include <torch/extension.h>

#include <cmath>
#include <cstdint>

namespace fastpg {

template <typename T>
struct Acrobot {
  static constexpr int kStateDim = 4;
  static constexpr int kObsDim = 6;
  static constexpr int kNumActions = 3;
  static constexpr int kActionDim = 0;

  // TorchAcrobot._sample_reset: gymnasium's uniform(-0.1, 0.1, size=4).astype(float32), drawn in float64.
  static torch::Tensor reset(at::Generator& gen, int64_t draws, int64_t n, c10::ScalarType dtype) {
    auto u = torch::empty({draws, kStateDim, n}, torch::TensorOptions().dtype(torch::kFloat64)).uniform_(0.0, 1.0, gen);
    return u.mul_(0.2).add_(-0.1).to(torch::kFloat32).to(dtype);
  }

  // Python's float64 values of gymnasium's constant subexpressions, then rounded to T.
  static constexpr double kM1Lc1Sq = 1.0 * 0.5 * 0.5, kM2 = 1.0, kI1 = 1.0, kI2 = 1.0;
  static constexpr double kD1Inner = 1.0 * 1.0 + 0.5 * 0.5, kD1Cos = 2 * 1.0 * 0.5;
  static constexpr double kD2Inner = 0.5 * 0.5, kD2Cos = 1.0 * 0.5;
  static constexpr double kPhi2 = 1.0 * 0.5 * 9.8, kPhi1A = -1.0 * 1.0 * 0.5, kPhi1B = 2 * 1.0 * 1.0 * 0.5;
  static constexpr double kPhi1C = (1.0 * 0.5 + 1.0 * 1.0) * 9.8;
  static constexpr double kDd2 = 1.0 * 1.0 * 0.5, kDd2Den = 1.0 * 0.5 * 0.5 + 1.0;
  static constexpr double kHalfPi = M_PI / 2.0, kDt = 0.2, kDt2 = 0.2 / 2.0, kDt6 = 0.2 / 6.0;
  static constexpr double kPi = M_PI, kTwoPi = M_PI - (-M_PI);
  static constexpr double kMaxVel1 = 4 * M_PI, kMaxVel2 = 9 * M_PI;

  // gymnasium's _dsdt: the time derivative of y = [theta1, theta2, dtheta1, dtheta2] under torque.
  static inline void derivs(const T y[4], T torque, T out[4]) {
    const T theta1 = y[0], theta2 = y[1], dtheta1 = y[2], dtheta2 = y[3];
    const T cos2 = std::cos(theta2), sin2 = std::sin(theta2);
    const T d1 = (T(kM1Lc1Sq) + T(kM2) * (T(kD1Inner) + T(kD1Cos) * cos2)) + T(kI1) + T(kI2);
    const T d2 = T(kM2) * (T(kD2Inner) + T(kD2Cos) * cos2) + T(kI2);
    const T phi2 = T(kPhi2) * std::cos(theta1 + theta2 - T(kHalfPi));
    const T phi1 = T(kPhi1A) * (dtheta2 * dtheta2) * sin2 - T(kPhi1B) * dtheta2 * dtheta1 * sin2 +
                   T(kPhi1C) * std::cos(theta1 - T(kHalfPi)) + phi2;
    const T ddtheta2 = (torque + d2 / d1 * phi1 - T(kDd2) * (dtheta1 * dtheta1) * sin2 - phi2) /
                       (T(kDd2Den) - (d2 * d2) / d1);
    const T ddtheta1 = -(d2 * ddtheta2 + phi1) / d1;
    out[0] = dtheta1;
    out[1] = dtheta2;
    out[2] = ddtheta1;
    out[3] = ddtheta2;
  }

  static inline T wrap(T x) {
    while (x > T(kPi)) x = x - T(kTwoPi);
    while (x < -T(kPi)) x = x + T(kTwoPi);
    return x;
  }

  static inline T bound(T x, T m) { return std::min(std::max(x, -m), m); }

  // From state s, apply torque -1 / 0 / +1 (action 0 / 1 / 2): the next state into v and the
  // reward (-1, or 0 on the terminal step); returns whether it terminated.
  static inline bool step(const T s[4], int64_t a, int64_t /*elapsed*/, T v[4], T& reward) {
    const T torque = a == 0 ? T(-1.0) : (a == 1 ? T(0.0) : T(1.0));
    T k1[4], k2[4], k3[4], k4[4], y[4];
    derivs(s, torque, k1);
    for (int i = 0; i < 4; ++i) y[i] = s[i] + T(kDt2) * k1[i];
    derivs(y, torque, k2);
    for (int i = 0; i < 4; ++i) y[i] = s[i] + T(kDt2) * k2[i];
    derivs(y, torque, k3);
    for (int i = 0; i < 4; ++i) y[i] = s[i] + T(kDt) * k3[i];
    derivs(y, torque, k4);
    for (int i = 0; i < 4; ++i) v[i] = s[i] + T(kDt6) * (k1[i] + T(2.0) * k2[i] + T(2.0) * k3[i] + k4[i]);
    v[0] = wrap(v[0]);
    v[1] = wrap(v[1]);
    v[2] = bound(v[2], T(kMaxVel1));
    v[3] = bound(v[3], T(kMaxVel2));
    const bool terminated = -std::cos(v[0]) - std::cos(v[1] + v[0]) > T(1.0);
    reward = terminated ? T(0.0) : T(-1.0);
    return terminated;
  }

  static inline void observe(const T s[4], float o[6]) {
    o[0] = static_cast<float>(std::cos(s[0]));
    o[1] = static_cast<float>(std::sin(s[0]));
    o[2] = static_cast<float>(std::cos(s[1]));
    o[3] = static_cast<float>(std::sin(s[1]));
    o[4] = static_cast<float>(s[2]);
    o[5] = static_cast<float>(s[3]);
  }
};

}  // namespace fastpg
