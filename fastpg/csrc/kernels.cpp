// fastpg's compiled CPU kernels (built on first use by fastpg/_kernels.py):
//
//   cartpole_step   one lockstep step of native CartPole (the env's kernel "cpp")
//   mlp_act         sample actions of the MLP policy (what the fused collect does per step)
//   collect         the fused collect: T steps of an env kernel + MLP policy + sampling + storage
//                   writes, for the built-in env kernels (env_kernel.h; users' own are built as
//                   modules of their own by fastpg/kernel_env.py)
//   update_grads    the fused update's math: returns (bootstrapped where asked), entries in the
//                   loss, the baseline (mean, or the value network), the advantage, the policy's
//                   (Categorical or diagonal Gaussian) and the value network's forward and
//                   backward, gradient norm and clipping, the non-finite check, and (where Python
//                   hands it over) the Adam step, as torch's own ops
//   collect_many, update_grads_many
//                   the same for many independent jobs (population members), spread over threads
//   epoch_data_many the episodes that ended in each member's epoch, its valid steps, a finite check
//   env_step, env_reset, env_kernels
//                   one step / the reset draws of a built-in env kernel, and their list (tests)
//
// Random numbers are drawn by torch's own uniform_ / normal_ from the env's and the trainer's
// generators, as many and in the same order as the torch-op path draws them: the same reset
// states, the same draws behind each sampled action.
//
// Floating point: the env dynamics are compiled without contraction (-ffp-contract=off) so they
// stay bit-identical to gymnasium in float64; the MLP's arithmetic uses explicit fused
// multiply-adds where the CPU has them.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "acrobot.h"
#include "cartpole.h"
#include "env_kernel.h"
#include "mlp.h"
#include "mountain_car.h"
#include "pendulum.h"

namespace fastpg {

// ---------------------------------------------------------------------------------------------
// cartpole_step: one lockstep step (state [4, N] feature-major), as before the fused epoch.

template <typename T>
static void cartpole_step_impl(const T* s, T* fin, T* nxt, const T* fresh, const int64_t* action,
                               int64_t* elapsed, bool* done, bool* term, int64_t N, int64_t max_steps) {
  at::parallel_for(0, N, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T st[4] = {s[n], s[N + n], s[2 * N + n], s[3 * N + n]};
      T v[4];
      const bool t = CartPole<T>::step(st, action[n], v);
      const int64_t el = elapsed[n] + 1;
      const bool d = t || el >= max_steps;
      term[n] = t;
      done[n] = d;
      elapsed[n] = d ? 0 : el;
      for (int k = 0; k < 4; ++k) {
        fin[k * N + n] = v[k];
        if (nxt != nullptr) nxt[k * N + n] = d ? fresh[k * N + n] : v[k];
      }
    }
  });
}

// fin: the state reached (final observation); nxt (if defined): the state after resetting the
// done copies to `fresh`. elapsed is updated in place (0 for done copies).
void cartpole_step(torch::Tensor s, torch::Tensor fin, torch::Tensor nxt, torch::Tensor fresh, torch::Tensor action,
                   torch::Tensor elapsed, torch::Tensor done, torch::Tensor term, int64_t max_steps) {
  TORCH_CHECK(s.is_cpu() && s.is_contiguous() && s.dim() == 2 && s.size(0) == 4,
              "state must be a contiguous CPU [4, N] tensor");
  TORCH_CHECK(action.scalar_type() == torch::kInt64 && action.is_contiguous() && action.numel() == s.size(1),
              "action must be a contiguous int64 [N] tensor");
  const bool select = nxt.defined() && nxt.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "cartpole_step", [&] {
    cartpole_step_impl<scalar_t>(s.data_ptr<scalar_t>(), fin.data_ptr<scalar_t>(),
                                 select ? nxt.data_ptr<scalar_t>() : nullptr,
                                 select ? fresh.data_ptr<scalar_t>() : nullptr, action.data_ptr<int64_t>(),
                                 elapsed.data_ptr<int64_t>(), done.data_ptr<bool>(), term.data_ptr<bool>(), s.size(1),
                                 max_steps);
  });
}

// ---------------------------------------------------------------------------------------------
// mlp_act: actions [N] for obs [N, D] (tests hold it to the policy's distribution).

torch::Tensor mlp_act(std::vector<torch::Tensor> weights, std::vector<torch::Tensor> biases, int64_t act,
                      torch::Tensor obs, at::Generator gen) {
  c10::InferenceMode guard;
  const Mlp mlp(weights, biases, act);
  auto x = obs.to(torch::kFloat32).contiguous();
  TORCH_CHECK(x.dim() == 2 && x.size(1) == mlp.obs_dim(), "mlp_act: obs must be [N, ", mlp.obs_dim(), "]");
  const int64_t N = x.size(0), A = mlp.num_actions(), per = draws_per_action(A);
  auto u = torch::empty({N * per}, torch::kFloat32);
  fill_uniform(u, 0.0, 1.0, gen);
  auto out = torch::empty({N}, torch::kInt64);
  std::vector<vec16> scratch(act_scratch(mlp));
  for (int64_t n = 0; n < N; n += kLanes)
    act_block(mlp, x.data_ptr<float>() + n * mlp.obs_dim(), std::min(kLanes, N - n), u.data_ptr<float>() + n * per,
              scratch.data(), out.data_ptr<int64_t>() + n);
  return out;
}



// Whether x[0, n) are all finite: an exponent of all ones is inf or NaN. Integer tests, so the
// loop vectorizes (std::isfinite with an early exit did not: 15 of a CartPole epoch read's 24 us).
static bool all_finite(const float* x, int64_t n) {
  const uint32_t* bits = reinterpret_cast<const uint32_t*>(x);
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) bad |= (bits[i] & 0x7f800000u) == 0x7f800000u;
  return bad == 0;
}

// What a trainer reads from its epoch after the collect (fastpg.trainer.Trainer.collected), for
// many members at once: the return and length of every episode that ended, in the order they
// ended (t-major, as buf["episode_return"][done]), the count of valid steps, and whether every
// reward and observation is finite.
struct EpochDataJob {
  torch::Tensor done, valid, reward, obs, episode_return, episode_length;
  torch::Tensor returns, lengths;
  int64_t valid_steps = 0;
  bool finite = true;
};

static void run_epoch_data(EpochDataJob& job) {
  const int64_t n = job.done.numel();
  const bool* done = job.done.data_ptr<bool>();
  const bool* valid = job.valid.data_ptr<bool>();
  int64_t ended = 0, valid_steps = 0;
  for (int64_t i = 0; i < n; ++i) {
    ended += done[i];
    valid_steps += valid[i];
  }
  job.returns = torch::empty({ended}, torch::kFloat32);
  job.lengths = torch::empty({ended}, torch::kInt64);
  const float* ret = job.episode_return.data_ptr<float>();
  const int64_t* len = job.episode_length.data_ptr<int64_t>();
  float* out_ret = job.returns.data_ptr<float>();
  int64_t* out_len = job.lengths.data_ptr<int64_t>();
  for (int64_t i = 0, k = 0; i < n; ++i) {
    if (done[i]) {
      out_ret[k] = ret[i];
      out_len[k++] = len[i];
    }
  }
  job.valid_steps = valid_steps;
  job.finite = all_finite(job.reward.data_ptr<float>(), job.reward.numel()) &&
               all_finite(job.obs.data_ptr<float>(), job.obs.numel());
}

// jobs: one tuple per member, (done, valid, reward, obs, episode_return, episode_length) of its
// storage; returns one (returns, lengths, valid steps, all finite) per member.
std::vector<pybind11::tuple> epoch_data_many(std::vector<pybind11::tuple> jobs) {
  c10::InferenceMode guard;
  std::vector<EpochDataJob> parsed;
  parsed.reserve(jobs.size());
  for (const auto& t : jobs) {
    TORCH_CHECK(t.size() == 6, "epoch_data_many: each job is 6 tensors, got ", t.size());
    using T = torch::Tensor;
    EpochDataJob job{t[0].cast<T>(), t[1].cast<T>(), t[2].cast<T>(), t[3].cast<T>(), t[4].cast<T>(), t[5].cast<T>()};
    for (const auto& x : {job.done, job.valid, job.reward, job.obs, job.episode_return, job.episode_length})
      TORCH_CHECK(x.is_cpu() && x.is_contiguous(), "epoch_data_many: tensors must be contiguous CPU tensors");
    TORCH_CHECK(job.done.scalar_type() == torch::kBool && job.valid.scalar_type() == torch::kBool &&
                    job.reward.scalar_type() == torch::kFloat32 && job.obs.scalar_type() == torch::kFloat32 &&
                    job.episode_return.scalar_type() == torch::kFloat32 &&
                    job.episode_length.scalar_type() == torch::kInt64,
                "epoch_data_many: bool flags, float32 rewards, observations and returns, int64 lengths");
    TORCH_CHECK(job.valid.numel() == job.done.numel() && job.episode_return.numel() == job.done.numel() &&
                    job.episode_length.numel() == job.done.numel(), "epoch_data_many: [T, N] flags and totals");
    parsed.push_back(std::move(job));
  }
  run_jobs(static_cast<int64_t>(parsed.size()), [&](int64_t j, bool) { run_epoch_data(parsed[j]); });
  std::vector<pybind11::tuple> out;
  out.reserve(parsed.size());
  for (auto& job : parsed) out.push_back(pybind11::make_tuple(job.returns, job.lengths, job.valid_steps, job.finite));
  return out;
}

// ---------------------------------------------------------------------------------------------
// update_grads: the fused update's math (everything but the optimizer step).

enum Stat {
  kLoss = 0, kPolicyLoss, kEntropy, kMaskFrac, kGradNorm, kNonfinite, kWhich, kCount, kValueLoss, kNumStats
};
enum Baseline : int64_t { kNoBaseline = 0, kMeanBaseline = 1, kValueBaseline = 2 };

// ret[t] = reward[t] + gamma * ret[t + 1] * !done[t] into ret, from ret[T] = bootstrap (V of the
// last observation; 0 where null). in_loss[t] = valid[t], and without a bootstrap the episode of
// step t must end inside the epoch (unfinished="mask"). Returns the entries in the loss, t-major
// (the order of boolean indexing).
static std::vector<int64_t> returns_and_entries(const float* reward, const bool* done, const bool* valid, float* ret,
                                                int64_t T_, int64_t N, float gamma, const float* bootstrap) {
  std::vector<float> next(N, 0.0f);
  if (bootstrap != nullptr) std::copy(bootstrap, bootstrap + N, next.begin());
  std::vector<char> ended(N, bootstrap != nullptr), in_loss(T_ * N);
  for (int64_t t = T_ - 1; t >= 0; --t) {
    for (int64_t n = 0; n < N; ++n) {
      const int64_t i = t * N + n;
      const float discount = done[i] ? 0.0f : gamma;
      next[n] = reward[i] + discount * next[n];
      ret[i] = next[n];
      ended[n] = ended[n] || done[i];
      in_loss[i] = valid[i] && ended[n];
    }
  }
  std::vector<int64_t> idx;
  idx.reserve(T_ * N);
  for (int64_t i = 0; i < T_ * N; ++i)
    if (in_loss[i]) idx.push_back(i);
  return idx;
}

// Sums over the processes of a data-parallel run (in place), or nothing in one process.
using SumAcross = std::function<void(std::vector<double>&)>;

// adv = (ret - baseline), standardized over the entries (two passes, double accumulators);
// baseline: the batch mean (mean_baseline), or values[j] per entry (values non-empty), or none;
// count is the entries of every process (at least 1), and so are the sums with sum_across.
static std::vector<float> advantages(const float* ret, const std::vector<int64_t>& idx, bool normalize,
                                     bool mean_baseline, const std::vector<float>& values, double count,
                                     const SumAcross& sum_across) {
  const int64_t K = static_cast<int64_t>(idx.size());
  auto summed = [&](double x) {
    if (!sum_across) return x;
    std::vector<double> v{x};
    sum_across(v);
    return v[0];
  };
  std::vector<float> adv(K);
  float base = 0.0f;
  if (mean_baseline) {
    double sum = 0.0;
    for (int64_t j = 0; j < K; ++j) sum += ret[idx[j]];
    base = static_cast<float>(summed(sum) / count);
  }
  for (int64_t j = 0; j < K; ++j) adv[j] = ret[idx[j]] - (values.empty() ? base : values[j]);
  if (!normalize) return adv;
  double mean = 0.0, var = 0.0;
  for (float a : adv) mean += a;
  mean = summed(mean) / count;
  for (float a : adv) var += (a - mean) * (a - mean);
  var = summed(var);
  const float m = static_cast<float>(mean), scale = static_cast<float>(1.0 / (std::sqrt(var / count) + 1e-8));
  for (float& a : adv) a = (a - m) * scale;
  return adv;
}

// One network's gradient sums, weights [out, in] as nn.Linear's.
struct NetGrads {
  std::vector<std::vector<float>> w, b;
  explicit NetGrads(const Mlp& mlp) {
    for (size_t l = 0; l < mlp.layers(); ++l) {
      w.emplace_back(mlp.in[l] * mlp.out[l], 0.0f);
      b.emplace_back(mlp.out[l], 0.0f);
    }
  }
  void add(const NetGrads& o) {
    for (size_t l = 0; l < w.size(); ++l) {
      for (size_t i = 0; i < w[l].size(); ++i) w[l][i] += o.w[l][i];
      for (size_t i = 0; i < b[l].size(); ++i) b[l][i] += o.b[l][i];
    }
  }
  // Append every entry to flat / read them back from flat at o (data-parallel sums).
  void save(std::vector<double>& flat) const {
    for (size_t l = 0; l < w.size(); ++l) {
      flat.insert(flat.end(), w[l].begin(), w[l].end());
      flat.insert(flat.end(), b[l].begin(), b[l].end());
    }
  }
  void load(const std::vector<double>& flat, size_t& o) {
    for (size_t l = 0; l < w.size(); ++l) {
      for (auto& v : w[l]) v = static_cast<float>(flat[o++]);
      for (auto& v : b[l]) v = static_cast<float>(flat[o++]);
    }
  }
};

// The 16 lanes' sum, by halves (one shuffle and add per halving).
typedef float vec8 __attribute__((vector_size(8 * sizeof(float))));
typedef float vec4 __attribute__((vector_size(4 * sizeof(float))));
static inline float lane_sum(vec16 v) {
  const vec8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const vec4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// lane_sum of 16 vectors at once: lane i of the result is lane_sum(v[i]), by the same additions
// (two vectors' halves side by side per step: two shuffles and one add for every 16 partial sums).
static inline vec16 lane_sums(const vec16 (&v)[kLanes]) {
  vec16 s1[8], s2[4], s3[2];
  for (int m = 0; m < 8; ++m)  // lanes l + 8 onto l
    s1[m] = __builtin_shufflevector(v[2 * m], v[2 * m + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
            __builtin_shufflevector(v[2 * m], v[2 * m + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int m = 0; m < 4; ++m)  // l + 4 onto l
    s2[m] = __builtin_shufflevector(s1[2 * m], s1[2 * m + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
            __builtin_shufflevector(s1[2 * m], s1[2 * m + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int m = 0; m < 2; ++m)  // l + 2 onto l
    s3[m] = __builtin_shufflevector(s2[2 * m], s2[2 * m + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
            __builtin_shufflevector(s2[2 * m], s2[2 * m + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(s3[0], s3[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(s3[0], s3[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// One network's gradient sums of one thread, and the lane vectors of one batch: activations, the
// output's gradient and scratch. Bias gradients are summed per lane (across lanes once per chunk);
// a weight's gradient, the sum over entries of dz[j] input[k], is the product of the group's
// [out, 16 kGroup] and [16 kGroup, in] matrices: the last kGroup blocks' dz and inputs are kept
// and multiplied into scalar sums once per group (outer), so that the sums per weight stay a
// [out, in] array in cache instead of 16 lanes each streamed through memory for every block.
struct NetLanes {
  static constexpr int kGroup = 8;
  std::vector<std::vector<vec16>> b, zs, ins;  // per layer: bias lanes; the group's dz and inputs
  std::vector<std::vector<float>> w;           // per layer: weight gradient sums [out, in]
  std::vector<vec16> h, dz, dh;
  int filled = 0;  // blocks of the group kept so far
  explicit NetLanes(const Mlp& mlp) : h(mlp.scratch()), dz(mlp.widest), dh(mlp.widest) {
    for (size_t l = 0; l < mlp.layers(); ++l) {
      b.emplace_back(mlp.out[l], vec16{});
      zs.emplace_back(kGroup * mlp.out[l], vec16{});
      ins.emplace_back(kGroup * mlp.in[l], vec16{});
      w.emplace_back(mlp.out[l] * mlp.in[l], 0.0f);
    }
  }
  // The kept blocks' products into the weight sums: w[j][k] += lane_sum(sum over g of
  // dz[g][j] in[g][k]), the sum over g in order. With AVX-512, in tiles of 16 weights (4 x 4, or
  // 16 x 1 / 1 x 16 where a side is narrower than 4): their 16 accumulators in registers, each
  // operand loaded once per tile, the 16 lane sums in one tree (the same additions as lane_sum);
  // the weights no tile covers one at a time. Both give the same numbers.
  MLP_MATH void outer() {
    for (size_t l = 0; l < w.size(); ++l) {
      const int64_t n_out = static_cast<int64_t>(b[l].size()), n_in = static_cast<int64_t>(w[l].size()) / n_out;
      int64_t tiled_out = 0, tiled_in = 0;  // weights [0, tiled_out) x [0, tiled_in) go in tiles
#if defined(__AVX512F__)
      if (n_out >= 4 && n_in >= 4)
        tiled_out = n_out / 4 * 4, tiled_in = n_in / 4 * 4, outer_tiles<4, 4>(l, tiled_out, tiled_in);
      else if (n_out >= 16)
        tiled_out = n_out / 16 * 16, tiled_in = n_in, outer_tiles<16, 1>(l, tiled_out, tiled_in);
      else if (n_in >= 16)
        tiled_out = n_out, tiled_in = n_in / 16 * 16, outer_tiles<1, 16>(l, tiled_out, tiled_in);
#endif
      for (int64_t j = 0; j < n_out; ++j)
        for (int64_t k = j < tiled_out ? tiled_in : 0; k < n_in; ++k) outer_one(l, j, k);
    }
    filled = 0;
  }

 private:
  MLP_MATH void outer_one(size_t l, int64_t j, int64_t k) {
    const int64_t n_out = static_cast<int64_t>(b[l].size()), n_in = static_cast<int64_t>(w[l].size()) / n_out;
    vec16 acc = {};
    for (int g = 0; g < filled; ++g) acc += zs[l][g * n_out + j] * ins[l][g * n_in + k];
    w[l][j * n_in + k] += lane_sum(acc);
  }

  // Tiles of J x K weights (J K = 16) over [0, n_j) x [0, n_k) of layer l.
  template <int J, int K>
  MLP_MATH void outer_tiles(size_t l, int64_t n_j, int64_t n_k) {
    static_assert(J * K == kLanes, "a tile is 16 weights");
    const int64_t n_out = static_cast<int64_t>(b[l].size()), n_in = static_cast<int64_t>(w[l].size()) / n_out;
    for (int64_t j0 = 0; j0 < n_j; j0 += J) {
      for (int64_t k0 = 0; k0 < n_k; k0 += K) {
        vec16 acc[kLanes] = {};
        for (int g = 0; g < filled; ++g) {
          const vec16* z = zs[l].data() + g * n_out + j0;
          const vec16* x = ins[l].data() + g * n_in + k0;
          for (int jj = 0; jj < J; ++jj) {
            const vec16 zj = z[jj];
            for (int kk = 0; kk < K; ++kk) acc[jj * K + kk] += zj * x[kk];
          }
        }
        const vec16 sums = lane_sums(acc);
        for (int jj = 0; jj < J; ++jj)
          for (int kk = 0; kk < K; ++kk) w[l][(j0 + jj) * n_in + k0 + kk] += sums[jj * K + kk];
      }
    }
  }

 public:
  void flush(NetGrads& g) {
    if (filled > 0) outer();
    for (size_t l = 0; l < w.size(); ++l) {
      for (size_t i = 0; i < w[l].size(); ++i) g.w[l][i] += w[l][i], w[l][i] = 0.0f;
      for (size_t i = 0; i < b[l].size(); ++i) g.b[l][i] += hsum(b[l][i]), b[l][i] = vec16{};
    }
  }
};

// The backward pass of mlp from the output's gradient in lanes.dz (x: the inputs; lanes.h the
// activations of the forward pass), accumulated into the lane sums.
MLP_MATH static void backward(const Mlp& mlp, const vec16* x, NetLanes& lanes) {
  const int64_t W = mlp.widest;
  vec16* z = lanes.dz.data();
  const int g = lanes.filled;
  for (size_t l = mlp.layers(); l-- > 0;) {
    const int64_t n_in = mlp.in[l], n_out = mlp.out[l];
    const vec16* input = l == 0 ? x : lanes.h.data() + (l - 1) * W;
    std::copy(z, z + n_out, lanes.zs[l].begin() + g * n_out);
    std::copy(input, input + n_in, lanes.ins[l].begin() + g * n_in);
    for (int64_t j = 0; j < n_out; ++j) lanes.b[l][j] += z[j];
    if (l == 0) break;
    vec16* dh = lanes.dh.data();  // dh = W^T dz, then through the activation into dz
    const float* wl = mlp.w[l];
    // Eight inputs at a time in registers, the sum over j in order (as one input at a time).
    int64_t k0 = 0;
    for (; k0 + 8 <= n_in; k0 += 8) {
      vec16 a[8] = {};
      for (int64_t j = 0; j < n_out; ++j) {
        const vec16 zj = z[j];
        const float* wj = wl + j * n_in + k0;
        for (int i = 0; i < 8; ++i) a[i] += wj[i] * zj;
      }
      for (int i = 0; i < 8; ++i) dh[k0 + i] = a[i];
    }
    for (int64_t k = k0; k < n_in; ++k) {
      vec16 a = {};
      for (int64_t j = 0; j < n_out; ++j) a += wl[j * n_in + k] * z[j];
      dh[k] = a;
    }
    for (int64_t k = 0; k < n_in; ++k) {
      const vec16 y = input[k];
      z[k] = mlp.act == kRelu ? (y > 0.0f ? dh[k] : vec16{}) : dh[k] * (1.0f - y * y);
    }
  }
  if (++lanes.filled == NetLanes::kGroup) lanes.outer();
}

// The diagonal Gaussian of Box actions in the update: torch's Normal(mean, std) with std =
// exp(clamp(log_std, -5, 2)); its log-probability -(a - mean)^2 / (2 var) - log(std) - log(sqrt(2 pi)).
struct GaussianUpdate {
  int64_t dim = 0;
  std::vector<float> inv_var, log_scale;
  std::vector<char> inside;  // clamp's gradient: log_std inside [-5, 2]
  float entropy = 0.0f;      // of every entry: sum of 0.5 + 0.5 log(2 pi) + log(std)
  torch::Tensor log_std, grad_out;
};

static constexpr float kLogSqrt2Pi = 0.91893853320467274178f;

// All of an update's gradient sums: the policy's network, its log-std (Box), the value network.
struct Grads {
  NetGrads policy;
  std::optional<NetGrads> value;
  std::vector<float> log_std;
  double policy_sum = 0.0, entropy_sum = 0.0, value_sum = 0.0;
  Grads(const Mlp& mlp, const Mlp* value_mlp, int64_t gauss_dim) : policy(mlp), log_std(gauss_dim, 0.0f) {
    if (value_mlp != nullptr) value.emplace(*value_mlp);
  }
  void add(const Grads& o) {
    policy.add(o.policy);
    if (value) value->add(*o.value);
    for (size_t i = 0; i < log_std.size(); ++i) log_std[i] += o.log_std[i];
    policy_sum += o.policy_sum;
    entropy_sum += o.entropy_sum;
    value_sum += o.value_sum;
  }
};

// Per-thread state of batch_grad.
struct LaneGrads {
  std::vector<vec16> x;
  NetLanes policy;
  std::optional<NetLanes> value;
  std::vector<vec16> log_std;
  vec16 policy_sum = {}, entropy = {}, value_sum = {};
  LaneGrads(const Mlp& mlp, const Mlp* value_mlp, int64_t gauss_dim)
      : x(mlp.obs_dim()), policy(mlp), log_std(gauss_dim) {
    if (value_mlp != nullptr) value.emplace(*value_mlp);
  }
  // Add the lanes' sums into g and start again from zero.
  void flush(Grads& g) {
    policy.flush(g.policy);
    if (value) value->flush(*g.value);
    for (size_t i = 0; i < log_std.size(); ++i) g.log_std[i] += hsum(log_std[i]), log_std[i] = vec16{};
    g.policy_sum += hsum(policy_sum);
    g.entropy_sum += hsum(entropy);
    g.value_sum += hsum(value_sum);
    policy_sum = entropy = value_sum = vec16{};
  }
};

// What batch_grad reads of the epoch and the settings.
struct BatchInputs {
  const float* obs;       // [T * N, D]
  const void* actions;    // int64 [T * N] or float32 [T * N, dim]
  const float* ret;       // [T * N]
  float inv_count, ent_coef, value_coef;
  const GaussianUpdate* gauss;  // null: Discrete
  const Mlp* value;             // null: no value network
};

// The logits' gradient of a Categorical policy for one batch (z: the logits, overwritten):
//   policy term  (adv / K) (p - onehot(a));  entropy term  (c / K) p (log p + H).
MLP_MATH static void categorical_grad(vec16* z, vec16* p, int64_t A, const int32_t* act_i, vec16 live, vec16 a_adv,
                                      const BatchInputs& in, LaneGrads& g) {
  vec16 m = z[0];
  for (int64_t i = 1; i < A; ++i) m = z[i] > m ? z[i] : m;
  vec16 sum = {};
  for (int64_t i = 0; i < A; ++i) sum += (p[i] = vexp(z[i] - m));
  const vec16 log_s = vlog(sum), inv_s = 1.0f / sum;
  ivec16 a_vec;
  std::memcpy(&a_vec, act_i, sizeof(a_vec));
  vec16 H = {}, logp_a = {};
  for (int64_t i = 0; i < A; ++i) {
    z[i] -= m + log_s;  // now log p
    p[i] *= inv_s;      // now p
    H -= p[i] * z[i];
    logp_a += a_vec == static_cast<int32_t>(i) ? z[i] : vec16{};
  }
  g.policy_sum -= a_adv * logp_a;
  g.entropy += live * H;
  const vec16 pg = a_adv * in.inv_count, ec = live * (in.ent_coef * in.inv_count);
  for (int64_t i = 0; i < A; ++i)
    z[i] = pg * (p[i] - (a_vec == static_cast<int32_t>(i) ? splat(1.0f) : vec16{})) + ec * p[i] * (z[i] + H);
}

// The mean's gradient of the Gaussian policy for one batch (z: the means, overwritten), and the
// log-std's:  d/dmean  -(adv / K) (a - mean) / var;  d/dlog_std  -(adv / K) ((a - mean)^2 / var - 1),
// and the entropy bonus's -(c / K) per live entry (both where log_std is inside the clamp).
MLP_MATH static void gaussian_grad(vec16* z, const float* rows_a, vec16 live, vec16 a_adv, const BatchInputs& in,
                                   LaneGrads& g) {
  const GaussianUpdate& gu = *in.gauss;
  vec16 logp = {};
  const vec16 pg = a_adv * in.inv_count;
  for (int64_t j = 0; j < gu.dim; ++j) {
    float av[kLanes];
    for (int64_t l = 0; l < kLanes; ++l) av[l] = rows_a[l * gu.dim + j];
    const vec16 diff = vload(av) - z[j];
    const vec16 sq = diff * diff * gu.inv_var[j];
    logp += -0.5f * sq - (gu.log_scale[j] + kLogSqrt2Pi);
    const float in_clamp = gu.inside[j] ? 1.0f : 0.0f;
    g.log_std[j] += in_clamp * (-(pg * (sq - 1.0f)) - live * (in.ent_coef * in.inv_count));
    z[j] = -(pg * diff * gu.inv_var[j]);
  }
  g.policy_sum -= a_adv * logp;
  g.entropy += live * gu.entropy;
}

// The B <= 16 entries' rows of obs, gathered into lanes (g.x); returns the live lanes.
static vec16 gather_entries(const Mlp& mlp, const BatchInputs& in, const int64_t* entry, int64_t B, LaneGrads& g) {
  const int64_t D = mlp.obs_dim();
  TORCH_CHECK(D <= 64, "update_grads: observations wider than 64");
  float rows[kLanes * 64], live_f[kLanes] = {};
  for (int64_t l = 0; l < B; ++l) {
    std::memcpy(rows + l * D, in.obs + entry[l] * D, sizeof(float) * D);
    live_f[l] = 1.0f;
  }
  gather_lanes(rows, B, D, g.x.data());
  return vload(live_f);
}

// The value network's forward and backward of B <= 16 entries (value loss (value_coef / 2)
// sum (V - ret)^2 / K), accumulating into g; their V into values (the baseline).
MLP_MATH static void value_grad(const Mlp& mlp, const BatchInputs& in, const int64_t* entry, int64_t B,
                                LaneGrads& g, float* values) {
  const vec16 live = gather_entries(mlp, in, entry, B, g);
  float ret_f[kLanes] = {};
  for (int64_t l = 0; l < B; ++l) ret_f[l] = in.ret[entry[l]];
  NetLanes& v = *g.value;
  in.value->forward(g.x.data(), v.h.data(), v.dz.data());
  for (int64_t l = 0; l < B; ++l) values[l] = v.dz[0][l];
  const vec16 err = (v.dz[0] - vload(ret_f)) * live;
  g.value_sum += 0.5f * err * err;
  v.dz[0] = err * (in.value_coef * in.inv_count);
  backward(*in.value, g.x.data(), v);
}

// The policy's forward and backward of B <= 16 entries with their advantages, accumulating into g.
MLP_MATH static void policy_grad(const Mlp& mlp, const BatchInputs& in, const int64_t* entry, const float* adv,
                                 int64_t B, LaneGrads& g) {
  const int64_t A = mlp.num_actions(), adim = in.gauss ? in.gauss->dim : 1;
  TORCH_CHECK(adim <= 64, "update_grads: actions wider than 64");
  const vec16 live = gather_entries(mlp, in, entry, B, g);
  float rows_a[kLanes * 64] = {}, av[kLanes] = {};
  int32_t act_i[kLanes] = {};
  for (int64_t l = 0; l < B; ++l) {
    av[l] = adv[l];
    if (in.gauss)
      std::memcpy(rows_a + l * adim, static_cast<const float*>(in.actions) + entry[l] * adim, sizeof(float) * adim);
    else
      act_i[l] = static_cast<int32_t>(static_cast<const int64_t*>(in.actions)[entry[l]]);
  }
  const vec16 a_adv = vload(av);
  vec16* z = g.policy.dz.data();  // the network's output, then its gradient
  mlp.forward(g.x.data(), g.policy.h.data(), z);
  if (in.gauss)
    gaussian_grad(z, rows_a, live, a_adv, in, g);
  else
    categorical_grad(z, g.policy.dh.data(), A, act_i, live, a_adv, in, g);
  backward(mlp, g.x.data(), g.policy);
}

// V of count <= 16 observations (rows [count, D]) into out.
static void values_block(const Mlp& value, const float* rows, int64_t count, std::vector<vec16>& x,
                         std::vector<vec16>& h, float* out) {
  vec16 v;
  gather_lanes(rows, count, value.obs_dim(), x.data());
  value.forward(x.data(), h.data(), &v);
  for (int64_t l = 0; l < count; ++l) out[l] = v[l];
}

// Chunks of entries, each summed in its own accumulators (then added in chunk order): the result
// depends on the thread count only through kChunk, not on scheduling.
static constexpr int64_t kChunk = 4096;

// The optimizer's step after the update (fastpg.fused.FusedEpoch.adam_job): torch's single-tensor
// Adam (torch/optim/adam.py, _single_tensor_adam, no weight decay, amsgrad or maximize) as the same
// ATen ops in the same order with the same scalars, so it leaves the parameters and the optimizer's
// state bit for bit as optimizer.step() does, without a Python call per tensor.
struct AdamJob {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
  double lr = 0.0, beta1 = 0.0, beta2 = 0.0, eps = 0.0;
};

static std::optional<AdamJob> adam_job(const pybind11::object& adam) {
  if (adam.is_none()) return std::nullopt;
  const auto t = adam.cast<pybind11::tuple>();
  TORCH_CHECK(t.size() == 9, "update_grads: the Adam step is 9 arguments, got ", t.size());
  using V = std::vector<torch::Tensor>;
  AdamJob job{t[0].cast<V>(), t[1].cast<V>(), t[2].cast<V>(), t[3].cast<V>(), t[4].cast<V>(),
              t[5].cast<double>(), t[6].cast<double>(), t[7].cast<double>(), t[8].cast<double>()};
  const size_t n = job.params.size();
  TORCH_CHECK(job.grads.size() == n && job.exp_avgs.size() == n && job.exp_avg_sqs.size() == n &&
                  job.steps.size() == n, "update_grads: the Adam step needs one of each per parameter");
  return job;
}

static void adam_step_one(const AdamJob& a, size_t i) {
  auto param = a.params[i], exp_avg = a.exp_avgs[i], exp_avg_sq = a.exp_avg_sqs[i], step_t = a.steps[i];
  const auto& grad = a.grads[i];
  step_t.add_(1);
  exp_avg.lerp_(grad, 1 - a.beta1);
  exp_avg_sq.mul_(a.beta2).addcmul_(grad, grad, 1 - a.beta2);
  const double step = step_t.item<double>();
  const double bias_correction1 = 1 - std::pow(a.beta1, step);
  const double bias_correction2 = 1 - std::pow(a.beta2, step);
  const double step_size = a.lr / bias_correction1;
  const double bias_correction2_sqrt = std::pow(bias_correction2, 0.5);
  const auto denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(a.eps);
  param.addcdiv_(exp_avg, denom, -step_size);
}

// The parameters in two halves on two threads (each tensor's ops as before, ~1 us of dispatch
// each: half the step's time); every element's arithmetic is unchanged.
static void adam_step(const AdamJob& a) {
  at::parallel_for(0, static_cast<int64_t>(a.params.size()), 1, [&](int64_t i0, int64_t i1) {
    c10::InferenceMode guard;  // thread-local: the caller's does not reach the pool's threads
    for (int64_t i = i0; i < i1; ++i) adam_step_one(a, static_cast<size_t>(i));
  });
}

// One member's update, its arguments checked (update_grads and update_grads_many build them the same way).
// One member's update, its arguments checked (update_grads and update_grads_many build them the same way).
struct UpdateJob {
  Mlp mlp;
  std::optional<Mlp> value;
  std::vector<torch::Tensor> params, grads;  // every parameter and its gradient, in named_parameters order
  torch::Tensor obs, action, reward, done, valid, ret, last_obs;
  double gamma;
  bool normalize;
  int64_t baseline;
  double entropy_coef, max_grad_norm, value_coef = 0.0;
  std::optional<GaussianUpdate> gauss;
  SumAcross sum_across;
  std::optional<AdamJob> adam;  // the optimizer's step, where the kernel takes it
};

static GaussianUpdate gaussian_update(const pybind11::object& spec, int64_t dim) {
  const auto t = spec.cast<pybind11::tuple>();
  TORCH_CHECK(t.size() == 2, "update_grads: the Gaussian is (log_std, its gradient)");
  GaussianUpdate g;
  g.log_std = t[0].cast<torch::Tensor>();
  g.grad_out = t[1].cast<torch::Tensor>();
  TORCH_CHECK(g.log_std.numel() == dim && g.grad_out.numel() == dim, "update_grads: log_std needs ", dim, " entries");
  // std, var and log(std) by torch's ops, as Normal computes them from exp(clamp(log_std)).
  const auto ls = g.log_std.detach().to(torch::kFloat32);
  const auto std_t = ls.clamp(-5.0, 2.0).exp();
  const auto var = std_t.pow(2).contiguous(), log_scale = std_t.log().contiguous();
  const auto inside = ((ls >= -5.0) & (ls <= 2.0)).contiguous();
  g.dim = dim;
  for (int64_t j = 0; j < dim; ++j) {
    g.inv_var.push_back(1.0f / var.data_ptr<float>()[j]);
    g.log_scale.push_back(log_scale.data_ptr<float>()[j]);
    g.inside.push_back(inside.data_ptr<bool>()[j]);
    g.entropy += 0.5f + kLogSqrt2Pi + log_scale.data_ptr<float>()[j];
  }
  return g;
}

// Arguments (Python's order): weights, biases, act, obs, action, reward, done, valid, ret, gamma,
// normalize, baseline (Baseline), entropy_coef, max_grad_norm, grads (of weights and biases),
// sum_across, adam, gaussian (None, or (log_std, its gradient)), value (None, or (weights,
// biases, grads, value_coef, last_obs: the observation after the last step to bootstrap from, or
// None)).
static constexpr size_t kUpdateArgs = 19;

static UpdateJob update_job(const pybind11::tuple& t) {
  TORCH_CHECK(t.size() == kUpdateArgs, "update_grads: ", kUpdateArgs, " arguments, got ", t.size());
  using T = torch::Tensor;
  using V = std::vector<T>;
  const V weights = t[0].cast<V>(), biases = t[1].cast<V>(), grads = t[14].cast<V>();
  const int64_t act = t[2].cast<int64_t>();
  UpdateJob job{Mlp(weights, biases, act), std::nullopt, {}, {}, t[3].cast<T>(), t[4].cast<T>(), t[5].cast<T>(),
                t[6].cast<T>(), t[7].cast<T>(), t[8].cast<T>(), T(), t[9].cast<double>(), t[10].cast<bool>(),
                t[11].cast<int64_t>(), t[12].cast<double>(), t[13].cast<double>()};
  const auto sum_across_py = t[15];
  // Data-parallel runs: sum_across_py(t) sums a float64 tensor over the processes, in place.
  if (!sum_across_py.is_none())
    job.sum_across = [sum_across_py](std::vector<double>& v) {
      auto x = torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kFloat64);
      sum_across_py(x);
    };
  const int64_t D = job.mlp.obs_dim();
  TORCH_CHECK(job.obs.dim() == 3 && job.obs.size(2) == D, "update_grads: obs must be [T, N, ", D, "]");
  for (const auto& x : {job.obs, job.action, job.reward, job.done, job.valid, job.ret})
    TORCH_CHECK(x.is_cpu() && x.is_contiguous(), "update_grads: tensors must be contiguous CPU tensors");
  TORCH_CHECK(grads.size() == 2 * job.mlp.layers(), "update_grads: one gradient per weight and bias");
  for (size_t l = 0; l < weights.size(); ++l) {
    job.params.insert(job.params.end(), {weights[l], biases[l]});
    job.grads.insert(job.grads.end(), {grads[2 * l], grads[2 * l + 1]});
  }
  if (!t[17].is_none()) {
    job.gauss = gaussian_update(t[17], job.mlp.num_actions());
    TORCH_CHECK(job.action.scalar_type() == torch::kFloat32, "update_grads: Box actions are float32");
    // named_parameters order: the policy's own log_std before its networks' parameters.
    job.params.insert(job.params.begin(), job.gauss->log_std);
    job.grads.insert(job.grads.begin(), job.gauss->grad_out);
  } else {
    TORCH_CHECK(job.action.scalar_type() == torch::kInt64, "update_grads: Discrete actions are int64");
  }
  if (!t[18].is_none()) {
    const auto v = t[18].cast<pybind11::tuple>();
    TORCH_CHECK(v.size() == 5, "update_grads: the value network is (weights, biases, grads, value_coef, last_obs)");
    const V vw = v[0].cast<V>(), vb = v[1].cast<V>(), vg = v[2].cast<V>();
    job.value.emplace(vw, vb, act);
    TORCH_CHECK(job.value->obs_dim() == D && job.value->num_actions() == 1, "update_grads: the value network maps ",
                D, " -> 1");
    TORCH_CHECK(vg.size() == 2 * vw.size(), "update_grads: one value gradient per weight and bias");
    for (size_t l = 0; l < vw.size(); ++l) {
      job.params.insert(job.params.end(), {vw[l], vb[l]});
      job.grads.insert(job.grads.end(), {vg[2 * l], vg[2 * l + 1]});
    }
    job.value_coef = v[3].cast<double>();
    if (!v[4].is_none()) {
      job.last_obs = v[4].cast<T>().to(torch::kFloat32).contiguous();
      TORCH_CHECK(job.last_obs.numel() == job.obs.size(1) * D, "update_grads: last_obs must be [N, ", D, "]");
    }
  }
  TORCH_CHECK(job.baseline != kValueBaseline || job.value, "update_grads: the value baseline needs the value network");
  for (const auto& g : job.grads)  // written by memcpy and scaled in place
    TORCH_CHECK(g.is_cpu() && g.is_contiguous() && g.scalar_type() == torch::kFloat32,
                "update_grads: gradients must be contiguous float32 CPU tensors");
  job.adam = adam_job(t[16]);
  return job;
}

// V of every observation of obs [M, D] (rows picked by idx, or all M where idx is null), in parallel.
static std::vector<float> values_of(const Mlp& value, const float* obs, const int64_t* idx, int64_t M) {
  std::vector<float> out(M);
  const int64_t D = value.obs_dim(), blocks = (M + kLanes - 1) / kLanes;
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    std::vector<vec16> x(D), h(value.scratch());
    float rows[kLanes * 64];
    TORCH_CHECK(D <= 64, "update_grads: observations wider than 64");
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t j0 = b * kLanes, count = std::min(kLanes, M - j0);
      for (int64_t l = 0; l < count; ++l)
        std::memcpy(rows + l * D, obs + (idx ? idx[j0 + l] : j0 + l) * D, sizeof(float) * D);
      values_block(value, rows, count, x, h, out.data() + j0);
    }
  });
  return out;
}

// Whether every entry of a float32 tensor is finite (a plain loop where it is contiguous: torch's
// isfinite().all().item() per tensor cost ~4 us, a tenth of Pendulum's statistics and checks).
static bool all_finite(const torch::Tensor& t) {
  if (t.scalar_type() != torch::kFloat32 || !t.is_contiguous()) return t.isfinite().all().item<bool>();
  return all_finite(t.data_ptr<float>(), t.numel());
}

// The update's statistics (Stat order), the gradients written into the job's gradient tensors.
static torch::Tensor run_update(UpdateJob& job) {
  const Mlp& mlp = job.mlp;
  const Mlp* value = job.value ? &*job.value : nullptr;
  const auto& sum_across = job.sum_across;
  const double entropy_coef = job.entropy_coef, max_grad_norm = job.max_grad_norm;
  const int64_t T_ = job.obs.size(0), N = job.obs.size(1);
  const float* x = job.obs.data_ptr<float>();
  float* ret = job.ret.data_ptr<float>();
  std::vector<float> bootstrap;
  if (job.last_obs.defined()) bootstrap = values_of(*value, job.last_obs.data_ptr<float>(), nullptr, N);
  const auto idx = returns_and_entries(job.reward.data_ptr<float>(), job.done.data_ptr<bool>(),
                                       job.valid.data_ptr<bool>(), ret, T_, N, static_cast<float>(job.gamma),
                                       bootstrap.empty() ? nullptr : bootstrap.data());
  const int64_t K = static_cast<int64_t>(idx.size());
  std::vector<double> counts{static_cast<double>(K), static_cast<double>(T_ * N)};  // entries, steps
  if (sum_across) sum_across(counts);
  const double count = std::max(counts[0], 1.0);
  const int64_t gdim = job.gauss ? job.gauss->dim : 0;
  const BatchInputs in{x,
                       job.action.data_ptr(),
                       ret,
                       1.0f / static_cast<float>(count),
                       static_cast<float>(entropy_coef),
                       static_cast<float>(job.value_coef),
                       job.gauss ? &*job.gauss : nullptr,
                       value};
  // At most kChunk entries per chunk, the chunks of equal size (in whole groups of blocks): the
  // threads' shares balance, and the split depends on K alone.
  const int64_t chunks = (K + kChunk - 1) / kChunk, group = kLanes * NetLanes::kGroup;
  const int64_t chunk = chunks > 0 ? ((K + chunks - 1) / chunks + group - 1) / group * group : kChunk;
  std::vector<Grads> partial(std::max<int64_t>(chunks, 1), Grads(mlp, value, gdim));
  // One pass over the entries in chunks, `block(entry offset, count, lanes)` for each block of 16.
  auto pass = [&](const auto& block) {
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      LaneGrads lanes(mlp, value, gdim);
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t stop = std::min(K, (c + 1) * chunk);
        for (int64_t j = c * chunk; j < stop; j += kLanes) block(j, std::min(kLanes, stop - j), lanes);
        lanes.flush(partial[c]);
      }
    });
  };
  // The value network first (its loss does not depend on the advantage), its V the baseline.
  std::vector<float> baseline_values;
  if (value != nullptr) {
    baseline_values.resize(K);
    pass([&](int64_t j, int64_t B, LaneGrads& lanes) {
      value_grad(mlp, in, idx.data() + j, B, lanes, baseline_values.data() + j);
    });
    if (job.baseline != kValueBaseline) baseline_values.clear();
  }
  const auto adv = advantages(ret, idx, job.normalize, job.baseline == kMeanBaseline, baseline_values, count, sum_across);
  pass([&](int64_t j, int64_t B, LaneGrads& lanes) { policy_grad(mlp, in, idx.data() + j, adv.data() + j, B, lanes); });
  Grads& total = partial[0];
  for (size_t c = 1; c < partial.size(); ++c) total.add(partial[c]);
  if (sum_across) {  // every process's gradient sums and loss terms, in one collective
    std::vector<double> flat;
    total.policy.save(flat);
    if (total.value) total.value->save(flat);
    flat.insert(flat.end(), total.log_std.begin(), total.log_std.end());
    flat.insert(flat.end(), {total.policy_sum, total.entropy_sum, total.value_sum});
    sum_across(flat);
    size_t o = 0;
    total.policy.load(flat, o);
    if (total.value) total.value->load(flat, o);
    for (auto& v : total.log_std) v = static_cast<float>(flat[o++]);
    total.policy_sum = flat[o++];
    total.entropy_sum = flat[o++];
    total.value_sum = flat[o++];
  }
  // Gradients out in named_parameters order (log_std, the policy's, the value's; weights [out, in]); global norm; clipping as clip_grad_norm_.
  auto& grads = job.grads;
  auto write = [](const std::vector<float>& src, torch::Tensor& dst) {
    std::memcpy(dst.data_ptr<float>(), src.data(), sizeof(float) * src.size());
  };
  size_t g = 0;
  if (job.gauss) write(total.log_std, grads[g++]);
  for (size_t l = 0; l < mlp.layers(); ++l) write(total.policy.w[l], grads[g++]), write(total.policy.b[l], grads[g++]);
  if (value)
    for (size_t l = 0; l < value->layers(); ++l)
      write(total.value->w[l], grads[g++]), write(total.value->b[l], grads[g++]);
  double sq = 0.0;
  for (const auto& gt : grads) {
    const float* p = gt.data_ptr<float>();
    for (int64_t i = 0; i < gt.numel(); ++i) sq += static_cast<double>(p[i]) * p[i];
  }
  const double norm = std::sqrt(sq);
  if (max_grad_norm > 0.0) {  // as clip_grad_norm_'s mul_ (a float product: one rounding either way)
    const float coef = static_cast<float>(std::min(max_grad_norm / (norm + 1e-6), 1.0));
    for (auto& gt : grads) {
      float* p = gt.data_ptr<float>();
      for (int64_t i = 0, n = gt.numel(); i < n; ++i) p[i] *= coef;
    }
  }
  const double policy_loss = total.policy_sum / count, entropy = total.entropy_sum / count;
  const double value_loss = total.value_sum / count;
  const double loss = policy_loss + job.value_coef * value_loss - entropy_coef * entropy;
  // Non-finite check, in the order of fastpg.update.first_nonfinite: loss, gradients, parameters.
  double nonfinite = 0.0, which = -1.0;
  if (!std::isfinite(loss)) {
    nonfinite = 1.0;
  } else if (!std::isfinite(norm)) {
    nonfinite = 2.0;
    for (size_t i = 0; i < grads.size() && which < 0; ++i)
      if (!all_finite(grads[i])) which = static_cast<double>(i);
  } else {
    for (size_t i = 0; i < job.params.size() && which < 0; ++i)
      if (!all_finite(job.params[i])) which = static_cast<double>(i);
    if (which >= 0) nonfinite = 3.0;
  }
  auto stats = torch::empty({kNumStats}, torch::kFloat64);
  double* s = stats.data_ptr<double>();
  s[kLoss] = loss;
  s[kPolicyLoss] = policy_loss;
  s[kEntropy] = entropy;
  s[kMaskFrac] = counts[0] / counts[1];
  s[kGradNorm] = norm;
  s[kNonfinite] = nonfinite;
  s[kWhich] = which;
  s[kCount] = counts[0];
  s[kValueLoss] = value_loss;
  if (job.adam && nonfinite == 0.0) adam_step(*job.adam);  // a finite update: the optimizer steps
  return stats;
}

torch::Tensor update_grads(pybind11::args args) {
  c10::InferenceMode guard;
  auto job = update_job(pybind11::tuple(args));
  return run_update(job);
}

// jobs: one tuple per member, of update_grads' arguments in its order (sum_across None); one
// statistics tensor per job.
std::vector<torch::Tensor> update_grads_many(std::vector<pybind11::tuple> jobs) {
  c10::InferenceMode guard;
  std::vector<UpdateJob> parsed;
  parsed.reserve(jobs.size());
  for (const auto& t : jobs) {
    TORCH_CHECK(t.size() == kUpdateArgs && t[15].is_none(),
                "update_grads_many: each job is update_grads' arguments, not of a data-parallel shard");
    parsed.push_back(update_job(t));
  }
  std::vector<torch::Tensor> stats(parsed.size());
  run_jobs(static_cast<int64_t>(parsed.size()), [&](int64_t j, bool) { stats[j] = run_update(parsed[j]); });
  return stats;
}

}  // namespace fastpg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cartpole_step", &fastpg::cartpole_step, "one lockstep step of native CartPole");
  m.def("mlp_act", &fastpg::mlp_act, "sample the MLP policy's actions for obs [N, D]");
  m.def("update_grads", &fastpg::update_grads, "the fused update's math: returns, loss, gradients, checks");
  m.def("update_grads_many", &fastpg::update_grads_many, "update_grads for many independent jobs in one call");
  m.def("epoch_data_many", &fastpg::epoch_data_many, "the episodes that ended, valid steps and a finite check, per job");
  // The built-in env kernels (fastpg.fused: BUILTIN_ENV_KERNELS).
  fastpg::bind_env_kernels(m, {fastpg::env_entry<fastpg::CartPole>("cartpole"),
                               fastpg::env_entry<fastpg::Acrobot>("acrobot"),
                               fastpg::env_entry<fastpg::Pendulum>("pendulum"),
                               fastpg::env_entry<fastpg::MountainCar>("mountain_car"),
                               fastpg::env_entry<fastpg::MountainCarContinuous>("mountain_car_continuous")});
}
