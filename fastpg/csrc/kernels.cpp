// fastpg's compiled CPU kernels (built on first use by fastpg/_kernels.py):
//
//   cartpole_step   one lockstep step of native CartPole (the env's kernel "cpp")
//   mlp_act         sample actions of the MLP policy (what the fused collect does per step)
//   collect         the fused collect: T steps of env + MLP policy + sampling + storage writes
//   update_grads    the fused update's math: returns, entries in the loss, advantage, the MLP's
//                   forward and backward, gradient norm and clipping, the non-finite check, and
//                   (where Python hands it over) the Adam step, as torch's own ops
//   collect_many, update_grads_many
//                   the same for many independent jobs (population members), spread over threads
//   epoch_data_many the episodes that ended in each member's epoch, its valid steps, a finite check
//
// Random numbers are drawn by torch's own uniform_ from the env's and the trainer's generators, as
// many and in the same order as the torch-op path draws them: the same reset states, the same
// uniforms behind each sampled action.
//
// Floating point: the env dynamics are compiled without contraction (-ffp-contract=off) so they
// stay bit-identical to gymnasium in float64; the MLP's arithmetic uses explicit fused
// multiply-adds where the CPU has them.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <functional>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "acrobot.h"
#include "cartpole.h"

namespace fastpg {

// ---------------------------------------------------------------------------------------------
// Random draws

// Fill buf with uniforms in [from, to) by torch's own CPU uniform_ kernel: the values the torch-op
// path draws, bit for bit (the kernel fills a contiguous tensor serially, so one [T, n] draw gives
// the values of T draws of [n] in turn).
static void fill_uniform(torch::Tensor& buf, double from, double to, at::Generator& gen) {
  TORCH_CHECK(buf.is_contiguous(), "uniform buffers must be contiguous");
  buf.uniform_(from, to, gen);
}

// Reset states [..., D, n] by the torch ops the native envs' _sample_reset runs (so the same values).
// CartPole: uniform in [-0.05, 0.05]^4 in the env's dtype.
static torch::Tensor cartpole_resets(at::IntArrayRef shape, at::Generator& gen, c10::ScalarType dtype) {
  return torch::empty(shape, torch::TensorOptions().dtype(dtype)).uniform_(-0.05, 0.05, gen);
}

// Acrobot: gymnasium's uniform(-0.1, 0.1, size=4).astype(float32), drawn in float64.
static torch::Tensor acrobot_resets(at::IntArrayRef shape, at::Generator& gen, c10::ScalarType dtype) {
  auto u = torch::empty(shape, torch::TensorOptions().dtype(torch::kFloat64)).uniform_(0.0, 1.0, gen);
  return u.mul_(0.2).add_(-0.1).to(torch::kFloat32).to(dtype);
}

// ---------------------------------------------------------------------------------------------
// The MLP policy: layers of nn.Linear (W [out, in], b [out]) with an activation between them.

enum Activation : int64_t { kRelu = 0, kTanh = 1 };

// The MLP's arithmetic: 16-float vectors (GCC/Clang vector extensions: one AVX-512 register, two
// AVX2 ones, ...), one input of a block of 16 (env copies when collecting, entries in the loss when
// updating) per lane, with fused multiply-adds. MLP_MATH lets these functions contract a * b + c
// into one instruction while the env dynamics, compiled in the same file, keep -ffp-contract=off.
#if defined(__GNUC__) && !defined(__clang__)
#define MLP_MATH __attribute__((optimize("fp-contract=fast")))
#else
#define MLP_MATH
#endif

static constexpr int64_t kLanes = 16;
typedef float vec16 __attribute__((vector_size(kLanes * sizeof(float))));

static inline vec16 vload(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

static inline void vstore(float* p, vec16 v) { std::memcpy(p, &v, sizeof(v)); }

static inline vec16 splat(float x) { return vec16{} + x; }

typedef int32_t ivec16 __attribute__((vector_size(kLanes * sizeof(int32_t))));

// exp(x), Cephes' polynomial (relative error ~1e-7), branch-free: the exponent is rounded by adding
// and subtracting 1.5 * 2^23, and 2^k is built from its bits.
MLP_MATH static inline vec16 vexp(vec16 x) {
  x = x < -87.3f ? splat(-87.3f) : (x > 88.3f ? splat(88.3f) : x);
  const vec16 fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  vec16 r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  vec16 p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * r) * r + r + 1.0f;
  const ivec16 e = __builtin_convertvector(fx, ivec16) + 127;
  return p * __builtin_bit_cast(vec16, e << 23);
}

// log(x) for positive normal x, Cephes' polynomial (relative error ~1e-7): x = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log x = log m + e log 2.
MLP_MATH static inline vec16 vlog(vec16 x) {
  const ivec16 bits = __builtin_bit_cast(ivec16, x);
  ivec16 e = ((bits >> 23) & 0xff) - 126;
  vec16 m = __builtin_bit_cast(vec16, (bits & 0x007fffff) | 0x3f000000);  // in [1/2, 1)
  const ivec16 small = m < 0.707106781186547524f;                         // -1 where true
  e += small;
  m = (small ? m + m : m) - 1.0f;
  const vec16 z = m * m;
  vec16 y = splat(7.0376836292e-2f);
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  const vec16 fe = __builtin_convertvector(e, vec16);
  y = y + fe * -2.12194440e-4f - 0.5f * z;
  return (m + y) + fe * 0.693359375f;
}

// tanh(x) = 1 - 2 / (exp(2x) + 1), absolute error ~1e-7 (torch's CPU path: 2 sigmoid(2x) - 1).
MLP_MATH static inline vec16 vtanh(vec16 x) { return 1.0f - 2.0f / (vexp(2.0f * x) + 1.0f); }

// The 16 lanes' sum, pairwise.
static inline float hsum(vec16 v) {
  float lanes[kLanes];
  vstore(lanes, v);
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  return lanes[0];
}

MLP_MATH static inline vec16 activate(int64_t act, vec16 y) {
  return act == kRelu ? (y > 0.0f ? y : vec16{}) : vtanh(y);
}

// The MLP over a block of up to 16 inputs, one per lane: activations are [width] vectors of 16
// lanes, so every layer is broadcast weight times lane vector, with no sums across lanes.
struct Mlp {
  std::vector<torch::Tensor> w_keep, b_keep;  // keep the float32 contiguous copies alive
  std::vector<const float*> w, b;             // w: [out, in] (nn.Linear's layout)
  std::vector<int64_t> in, out;
  int64_t act = kRelu, widest = 0;

  Mlp(const std::vector<torch::Tensor>& weights, const std::vector<torch::Tensor>& biases, int64_t act_)
      : act(act_) {
    TORCH_CHECK(!weights.empty() && weights.size() == biases.size(), "mlp: one bias per weight");
    for (size_t l = 0; l < weights.size(); ++l) {
      auto W = weights[l].detach().to(torch::kFloat32).contiguous();
      TORCH_CHECK(W.dim() == 2 && W.is_cpu(), "mlp: weights must be 2-d CPU tensors");
      auto B = biases[l].detach().to(torch::kFloat32).contiguous();
      TORCH_CHECK(B.numel() == W.size(0), "mlp: bias size must match the weight's rows");
      if (l > 0) TORCH_CHECK(W.size(1) == out.back(), "mlp: layer widths do not chain");
      w_keep.push_back(W);
      b_keep.push_back(B);
      w.push_back(W.data_ptr<float>());
      b.push_back(B.data_ptr<float>());
      in.push_back(W.size(1));
      out.push_back(W.size(0));
      widest = std::max(widest, W.size(0));
    }
  }

  size_t layers() const { return w.size(); }
  int64_t obs_dim() const { return in.front(); }
  int64_t num_actions() const { return out.back(); }
  // Lane vectors of scratch a forward pass needs: the activations of every layer.
  int64_t scratch() const { return static_cast<int64_t>(layers()) * widest; }

  // x [in0] -> logits [A]; layer l's output (after the activation) into h + l * widest, the last
  // layer's into logits. Four partial sums per output break the chain of dependent FMAs.
  MLP_MATH void forward(const vec16* x, vec16* h, vec16* logits) const {
    const vec16* cur = x;
    for (size_t l = 0; l < layers(); ++l) {
      const bool last = l + 1 == layers();
      vec16* y = last ? logits : h + l * widest;
      const int64_t n_in = in[l];
      for (int64_t j = 0; j < out[l]; ++j) {
        const float* wj = w[l] + j * n_in;
        vec16 a0 = splat(b[l][j]), a1 = {}, a2 = {}, a3 = {};
        int64_t k = 0;
        for (; k + 4 <= n_in; k += 4) {
          a0 += wj[k] * cur[k];
          a1 += wj[k + 1] * cur[k + 1];
          a2 += wj[k + 2] * cur[k + 2];
          a3 += wj[k + 3] * cur[k + 3];
        }
        for (; k < n_in; ++k) a0 += wj[k] * cur[k];
        const vec16 z = (a0 + a1) + (a2 + a3);
        y[j] = last ? z : activate(act, z);
      }
      cur = y;
    }
  }
};

// Gather rows [count, dim] (row-major, count <= 16) into dim lane vectors; missing lanes are 0.
static inline void gather_lanes(const float* rows, int64_t count, int64_t dim, vec16* x) {
  for (int64_t k = 0; k < dim; ++k) {
    float v[kLanes] = {};
    for (int64_t l = 0; l < count; ++l) v[l] = rows[l * dim + k];
    x[k] = vload(v);
  }
}

// Uniforms per sampled action: one for two actions (a logistic comparison), else one per action
// (Gumbel-max), as fastpg.policy._gumbel_argmax draws them.
static inline int64_t draws_per_action(int64_t A) { return A == 2 ? 1 : A; }

// Sample an action for each of the count lanes from logits [A] (u: the block's uniforms, per per
// lane). Two actions: a = 1 iff z1 - z0 > logit(v), tested as exp(z1 - z0) (1 - v) > v (the same
// comparison without a log; ties within the functions' last bits may differ). More: Gumbel-max.
MLP_MATH static void sample(const vec16* logits, int64_t A, const float* u, int64_t count, int64_t* actions) {
  if (A == 2) {
    float uv[kLanes] = {};
    for (int64_t l = 0; l < count; ++l) uv[l] = std::max(u[l], FLT_MIN);
    const vec16 v = vload(uv);
    const ivec16 take = vexp(logits[1] - logits[0]) * (1.0f - v) > v;
    for (int64_t l = 0; l < count; ++l) actions[l] = take[l] != 0 ? 1 : 0;
    return;
  }
  for (int64_t l = 0; l < count; ++l) {
    int64_t best = 0;
    float best_score = -INFINITY;
    for (int64_t a = 0; a < A; ++a) {
      const float score = logits[a][l] - std::log(-std::log(std::max(u[l * A + a], FLT_MIN)));
      if (score > best_score) best = a, best_score = score;
    }
    actions[l] = best;
  }
}

// Actions for count <= 16 observations (rows [count, obs_dim]); scratch: mlp.scratch() + obs_dim + A
// lane vectors.
static void act_block(const Mlp& mlp, const float* obs, int64_t count, const float* u, vec16* scratch,
                      int64_t* actions) {
  vec16* x = scratch;
  vec16* h = x + mlp.obs_dim();
  vec16* logits = h + mlp.scratch();
  gather_lanes(obs, count, mlp.obs_dim(), x);
  mlp.forward(x, h, logits);
  sample(logits, mlp.num_actions(), u, count, actions);
}

static int64_t act_scratch(const Mlp& mlp) { return mlp.obs_dim() + mlp.scratch() + mlp.num_actions(); }

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

// ---------------------------------------------------------------------------------------------
// collect: the fused collect loop (state [D, N] of the env's dtype, updated in place).

struct Storage {
  float* obs;  // [T, N, obs_dim]
  int64_t* action;
  float* reward;
  bool *done, *terminated, *valid;
  float* ep_return;
  int64_t* ep_length;
};

using ResetFn = torch::Tensor (*)(at::IntArrayRef, at::Generator&, c10::ScalarType);

// The env copies of this process: columns [lo, lo + N) of total (data-parallel runs; otherwise lo 0
// and total N). counts_before(k), where set, is the collective that returns (done copies on lower
// shards, on all shards) when this one has k (the draw-only-done mode needs them every step).
struct Shard {
  int64_t lo, total;
  std::function<std::pair<int64_t, int64_t>(int64_t)> counts_before;
};

template <template <typename> class E>
struct EnvTag {
  template <typename T>
  using type = E<T>;
};

template <template <typename> class Env, typename T>
static void collect_impl(const Mlp& mlp, at::Generator& policy_gen, T* state, T* final_state, int64_t* elapsed,
                         at::Generator& env_gen, ResetFn resets, int64_t max_steps, bool select, const Storage& st,
                         int64_t T_, int64_t N, float* carry_obs, float* carry_ret, int64_t* carry_len,
                         const Shard& shard, bool main_thread) {
  constexpr int D = Env<T>::kStateDim, O = Env<T>::kObsDim;
  const c10::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  const int64_t A = mlp.num_actions(), per = draws_per_action(A);
  // This epoch's draws, as the torch-op path makes them step by step: the policy's uniforms
  // [T, N * per] (trainer's generator), and where every copy draws a reset state every step, the
  // reset states [T, D, N] (env's generator). A shard draws for all the copies (shard.total) and
  // reads its own columns, from shard.lo.
  const int64_t NT = shard.total, lo = shard.lo;
  auto u_all = torch::empty({T_, NT * per}, torch::kFloat32);
  fill_uniform(u_all, 0.0, 1.0, policy_gen);
  torch::Tensor fresh_all = select ? resets({T_, D, NT}, env_gen, dtype).contiguous() : torch::Tensor();
  std::vector<int64_t> done_idx;
  // Env copies in blocks of 16 (one per lane of the policy's forward pass), blocks in parallel.
  const int64_t blocks = (N + kLanes - 1) / kLanes;
  const int64_t grain = std::max<int64_t>(4, 1024 / std::max<int64_t>(mlp.widest, 1));
  const int64_t scratch = act_scratch(mlp);
  std::memcpy(st.obs, carry_obs, sizeof(float) * N * O);  // obs[0]: the carried observation
  for (int64_t t = 0; t < T_; ++t) {
    // Python's signal handlers run here, in the thread that holds the GIL: a KeyboardInterrupt from
    // a second Ctrl-C (fastpg.interrupts) ends a long epoch at once instead of after it.
    if (main_thread && PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
    const float* u = u_all.data_ptr<float>() + (t * NT + lo) * per;
    const T* fresh = select ? fresh_all.data_ptr<T>() + t * D * NT + lo : nullptr;
    const int64_t row = t * N;
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      // The chunk's own scratch (thread numbers are all 0 when this runs inside a batched call).
      std::vector<vec16> scratch_lanes(scratch);
      vec16* lanes = scratch_lanes.data();
      int64_t actions[kLanes];
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t n0 = blk * kLanes, count = std::min(kLanes, N - n0);
        act_block(mlp, st.obs + (row + n0) * O, count, u + n0 * per, lanes, actions);
        for (int64_t n = n0; n < n0 + count; ++n) {
          const int64_t i = row + n, a = actions[n - n0];
          T s[D], v[D], r;
          for (int k = 0; k < D; ++k) s[k] = state[k * N + n];
          const bool term = Env<T>::step(s, a, v, r);
          const int64_t el = elapsed[n] + 1;
          const bool d = term || el >= max_steps;
          elapsed[n] = d ? 0 : el;
          for (int k = 0; k < D; ++k) {
            final_state[k * N + n] = v[k];
            state[k * N + n] = (select && d) ? fresh[k * NT + n] : v[k];
          }
          const float rf = static_cast<float>(r);
          st.action[i] = a;
          st.reward[i] = rf;
          st.done[i] = d;
          st.terminated[i] = term;
          st.valid[i] = true;
          const float ret = carry_ret[n] + rf;  // episode totals, as episode_totals_reference
          const int64_t len = carry_len[n] + 1;
          st.ep_return[i] = ret;
          st.ep_length[i] = len;
          carry_ret[n] = d ? 0.0f : ret;
          carry_len[n] = d ? 0 : len;
        }
      }
    });
    if (!select) {  // only the done copies draw a reset state, [D, k] in index order
      done_idx.clear();
      for (int64_t n = 0; n < N; ++n)
        if (st.done[row + n]) done_idx.push_back(n);
      const int64_t k = static_cast<int64_t>(done_idx.size());
      // A shard draws the done copies of every shard, [D, total], and reads its columns.
      const std::pair<int64_t, int64_t> counts = shard.counts_before ? shard.counts_before(k) : std::make_pair(int64_t{0}, k);
      const int64_t before = counts.first, total = counts.second;
      if (total > 0) {
        const torch::Tensor drawn = resets({D, total}, env_gen, dtype).contiguous();
        const T* fd = drawn.template data_ptr<T>();
        for (int64_t j = 0; j < k; ++j)
          for (int f = 0; f < D; ++f) state[f * N + done_idx[j]] = fd[f * total + before + j];
      }
    }
    float* next_obs = t + 1 < T_ ? st.obs + (row + N) * O : carry_obs;
    for (int64_t n = 0; n < N; ++n) {
      T s[D];
      for (int f = 0; f < D; ++f) s[f] = state[f * N + n];
      Env<T>::observe(s, next_obs + n * O);
    }
  }
}

// One member's collect, its arguments checked (collect and collect_many build them the same way).
struct CollectJob {
  Mlp mlp;
  bool cartpole;
  at::Generator policy_gen, env_gen;
  torch::Tensor state, final_state, elapsed, obs, action, reward, done, terminated, valid, ep_return, ep_length,
      carry_obs, carry_return, carry_length;
  int64_t max_steps;
  bool select;
  Shard shard;
};

static CollectJob collect_job(const std::string& env, const std::vector<torch::Tensor>& weights,
                              const std::vector<torch::Tensor>& biases, int64_t act, at::Generator policy_gen,
                              torch::Tensor state, torch::Tensor final_state, torch::Tensor elapsed,
                              at::Generator env_gen, int64_t max_steps, bool select, torch::Tensor obs,
                              torch::Tensor action, torch::Tensor reward, torch::Tensor done, torch::Tensor terminated,
                              torch::Tensor valid, torch::Tensor ep_return, torch::Tensor ep_length,
                              torch::Tensor carry_obs, torch::Tensor carry_return, torch::Tensor carry_length,
                              int64_t shard_lo, int64_t shard_total, const pybind11::object& counts_before) {
  Mlp mlp(weights, biases, act);
  const int64_t N = obs.size(1);
  const bool cartpole = env == "cartpole";
  TORCH_CHECK(cartpole || env == "acrobot", "collect: env must be cartpole or acrobot, got ", env);
  const int64_t D = 4, O = cartpole ? 4 : 6, A = cartpole ? 2 : 3;
  TORCH_CHECK(mlp.obs_dim() == O && mlp.num_actions() == A, "collect: the MLP must map ", O, " -> ", A);
  TORCH_CHECK(state.is_contiguous() && state.size(0) == D && state.size(1) == N, "state must be [4, N]");
  TORCH_CHECK(obs.dim() == 3 && obs.size(2) == O, "obs must be [T, N, ", O, "]");
  for (const auto& x : {obs, action, reward, done, terminated, valid, ep_return, ep_length, carry_obs, carry_return,
                        carry_length, final_state, elapsed})
    TORCH_CHECK(x.is_cpu() && x.is_contiguous(), "collect: tensors must be contiguous CPU tensors");
  TORCH_CHECK(shard_lo >= 0 && shard_lo + N <= shard_total, "collect: the shard must lie inside the copies");
  Shard shard{shard_lo, shard_total, {}};
  if (!counts_before.is_none())
    shard.counts_before = [counts_before](int64_t k) {
      const auto r = counts_before(k).cast<std::pair<int64_t, int64_t>>();
      return r;
    };
  return CollectJob{std::move(mlp), cartpole,   policy_gen, env_gen,   state,       final_state,
                    elapsed,        obs,        action,     reward,    done,        terminated,
                    valid,          ep_return,  ep_length,  carry_obs, carry_return, carry_length,
                    max_steps,      select,     std::move(shard)};
}

static void run_collect(CollectJob& j, bool main_thread) {
  const int64_t T_ = j.obs.size(0), N = j.obs.size(1);
  const Storage st{j.obs.data_ptr<float>(),       j.action.data_ptr<int64_t>(),  j.reward.data_ptr<float>(),
                   j.done.data_ptr<bool>(),       j.terminated.data_ptr<bool>(), j.valid.data_ptr<bool>(),
                   j.ep_return.data_ptr<float>(), j.ep_length.data_ptr<int64_t>()};
  AT_DISPATCH_FLOATING_TYPES(j.state.scalar_type(), "collect", [&] {
    auto run = [&](auto env_tag, ResetFn resets) {
      using Tag = decltype(env_tag);
      collect_impl<Tag::template type, scalar_t>(
          j.mlp, j.policy_gen, j.state.data_ptr<scalar_t>(), j.final_state.data_ptr<scalar_t>(),
          j.elapsed.data_ptr<int64_t>(), j.env_gen, resets, j.max_steps, j.select, st, T_, N,
          j.carry_obs.data_ptr<float>(), j.carry_return.data_ptr<float>(), j.carry_length.data_ptr<int64_t>(), j.shard,
          main_thread);
    };
    if (j.cartpole) {
      run(EnvTag<CartPole>{}, cartpole_resets);
    } else {
      run(EnvTag<Acrobot>{}, acrobot_resets);
    }
  });
}

void collect(const std::string& env, std::vector<torch::Tensor> weights, std::vector<torch::Tensor> biases,
             int64_t act, at::Generator policy_gen, torch::Tensor state, torch::Tensor final_state,
             torch::Tensor elapsed, at::Generator env_gen, int64_t max_steps, bool select, torch::Tensor obs,
             torch::Tensor action, torch::Tensor reward, torch::Tensor done, torch::Tensor terminated,
             torch::Tensor valid, torch::Tensor ep_return, torch::Tensor ep_length, torch::Tensor carry_obs,
             torch::Tensor carry_return, torch::Tensor carry_length, int64_t shard_lo, int64_t shard_total,
             pybind11::object counts_before) {
  c10::InferenceMode guard;
  auto job = collect_job(env, weights, biases, act, policy_gen, state, final_state, elapsed, env_gen, max_steps, select,
                         obs, action, reward, done, terminated, valid, ep_return, ep_length, carry_obs, carry_return,
                         carry_length, shard_lo, shard_total, counts_before);
  run_collect(job, true);
}

// ---------------------------------------------------------------------------------------------
// Batched calls (populations): many independent jobs in one call.
//
// Jobs are spread over torch's intra-op threads, each thread taking the next job not yet taken
// (members' epochs differ in length). Inside a job everything runs serially (a nested parallel_for
// runs inline), and a job touches only its own tensors and generators, so every job computes what
// it computes alone, whatever the thread count and the schedule. The calling thread (which holds
// the GIL) alone runs Python's signal handlers.
template <typename F>
static void run_jobs(int64_t n, const F& job) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1) {
    for (int64_t j = 0; j < n; ++j) job(j, true);
    return;
  }
  const auto caller = std::this_thread::get_id();
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    c10::InferenceMode guard;
    const bool main_thread = std::this_thread::get_id() == caller;
    try {
      for (int64_t j = next.fetch_add(1); j < n && !failed.load(); j = next.fetch_add(1)) job(j, main_thread);
    } catch (...) {
      failed = true;
      throw;
    }
  });
}

// jobs: one tuple per member, of collect's arguments in collect's order (counts_before None).
void collect_many(std::vector<pybind11::tuple> jobs) {
  c10::InferenceMode guard;
  std::vector<CollectJob> parsed;
  parsed.reserve(jobs.size());
  for (const auto& t : jobs) {
    TORCH_CHECK(t.size() == 25, "collect_many: each job is collect's 25 arguments, got ", t.size());
    TORCH_CHECK(t[24].is_none(), "collect_many: jobs of a data-parallel shard are not batched");
    using T = torch::Tensor;
    parsed.push_back(collect_job(
        t[0].cast<std::string>(), t[1].cast<std::vector<T>>(), t[2].cast<std::vector<T>>(), t[3].cast<int64_t>(),
        t[4].cast<at::Generator>(), t[5].cast<T>(), t[6].cast<T>(), t[7].cast<T>(), t[8].cast<at::Generator>(),
        t[9].cast<int64_t>(), t[10].cast<bool>(), t[11].cast<T>(), t[12].cast<T>(), t[13].cast<T>(), t[14].cast<T>(),
        t[15].cast<T>(), t[16].cast<T>(), t[17].cast<T>(), t[18].cast<T>(), t[19].cast<T>(), t[20].cast<T>(),
        t[21].cast<T>(), t[22].cast<int64_t>(), t[23].cast<int64_t>(), pybind11::none()));
  }
  run_jobs(static_cast<int64_t>(parsed.size()), [&](int64_t j, bool main_thread) { run_collect(parsed[j], main_thread); });
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
  bool finite = true;
  for (const auto& t : {job.reward, job.obs}) {
    const float* x = t.data_ptr<float>();
    for (int64_t i = 0, m = t.numel(); i < m && finite; ++i) finite = std::isfinite(x[i]);
  }
  job.finite = finite;
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

enum Stat { kLoss = 0, kPolicyLoss, kEntropy, kMaskFrac, kGradNorm, kNonfinite, kWhich, kCount, kNumStats };

// ret[t] = reward[t] + gamma * ret[t + 1] * !done[t] into ret; in_loss[t] = valid[t] and the
// episode of step t ends inside the epoch (unfinished="mask"). Returns the entries in the loss,
// t-major (the order of boolean indexing).
static std::vector<int64_t> returns_and_entries(const float* reward, const bool* done, const bool* valid, float* ret,
                                                int64_t T_, int64_t N, float gamma) {
  std::vector<float> next(N, 0.0f);
  std::vector<char> ended(N, 0), in_loss(T_ * N);
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
// count is the entries of every process (at least 1), and so are the sums with sum_across.
static std::vector<float> advantages(const float* ret, const std::vector<int64_t>& idx, bool normalize,
                                     bool mean_baseline, double count, const SumAcross& sum_across) {
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
  for (int64_t j = 0; j < K; ++j) adv[j] = ret[idx[j]] - base;
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

struct Grads {  // one set of gradient sums, weights [out, in] as nn.Linear's
  std::vector<std::vector<float>> w, b;
  double policy_sum = 0.0, entropy_sum = 0.0;
  explicit Grads(const Mlp& mlp) {
    for (size_t l = 0; l < mlp.layers(); ++l) {
      w.emplace_back(mlp.in[l] * mlp.out[l], 0.0f);
      b.emplace_back(mlp.out[l], 0.0f);
    }
  }
};

// Per-thread state of batch_grad: per-lane gradient sums (summed across lanes once per chunk) and
// the lane vectors of one batch (inputs, activations, logits and their gradients).
struct LaneGrads {
  std::vector<std::vector<vec16>> w, b;
  std::vector<vec16> x, h, dz, dh;
  vec16 policy = {}, entropy = {};
  explicit LaneGrads(const Mlp& mlp)
      : x(mlp.obs_dim()), h(mlp.scratch()), dz(mlp.widest), dh(mlp.widest) {
    for (size_t l = 0; l < mlp.layers(); ++l) {
      w.emplace_back(mlp.in[l] * mlp.out[l], vec16{});
      b.emplace_back(mlp.out[l], vec16{});
    }
  }
  // Add the lanes' sums into g and start again from zero.
  void flush(Grads& g) {
    for (size_t l = 0; l < w.size(); ++l) {
      for (size_t i = 0; i < w[l].size(); ++i) g.w[l][i] += hsum(w[l][i]), w[l][i] = vec16{};
      for (size_t i = 0; i < b[l].size(); ++i) g.b[l][i] += hsum(b[l][i]), b[l][i] = vec16{};
    }
    g.policy_sum += hsum(policy);
    g.entropy_sum += hsum(entropy);
    policy = entropy = vec16{};
  }
};

// Forward and backward of B <= 16 entries, one per lane, accumulating into g. The logits' gradient:
//   policy term  (adv / K) (p - onehot(a));  entropy term  (c / K) p (log p + H).
MLP_MATH static void batch_grad(const Mlp& mlp, const float* obs, const int64_t* entry, const int64_t* acts,
                                const float* adv, int64_t B, float inv_count, float ent_coef, LaneGrads& g) {
  const size_t L = mlp.layers();
  const int64_t D = mlp.obs_dim(), A = mlp.num_actions(), W = mlp.widest;
  float rows[kLanes * 64], av[kLanes] = {}, live_f[kLanes] = {};
  int32_t act_i[kLanes] = {};
  TORCH_CHECK(D <= 64, "update_grads: observations wider than 64");
  for (int64_t l = 0; l < B; ++l) {
    std::memcpy(rows + l * D, obs + entry[l] * D, sizeof(float) * D);
    av[l] = adv[l];
    live_f[l] = 1.0f;
    act_i[l] = static_cast<int32_t>(acts[entry[l]]);
  }
  gather_lanes(rows, B, D, g.x.data());
  vec16* z = g.dz.data();  // the logits, then their gradient
  mlp.forward(g.x.data(), g.h.data(), z);
  // log-softmax: e = exp(z - max), p = e / sum(e), log p = z - max - log(sum(e))
  vec16 m = z[0];
  for (int64_t i = 1; i < A; ++i) m = z[i] > m ? z[i] : m;
  vec16* p = g.dh.data();
  vec16 sum = {};
  for (int64_t i = 0; i < A; ++i) sum += (p[i] = vexp(z[i] - m));
  const vec16 log_s = vlog(sum), inv_s = 1.0f / sum, live = vload(live_f), a_adv = vload(av);
  ivec16 a_vec;
  std::memcpy(&a_vec, act_i, sizeof(a_vec));
  vec16 H = {}, logp_a = {};
  for (int64_t i = 0; i < A; ++i) {
    z[i] -= m + log_s;  // now log p
    p[i] *= inv_s;      // now p
    H -= p[i] * z[i];
    logp_a += a_vec == static_cast<int32_t>(i) ? z[i] : vec16{};
  }
  g.policy -= a_adv * logp_a;
  g.entropy += live * H;
  const vec16 pg = a_adv * inv_count, ec = live * (ent_coef * inv_count);
  for (int64_t i = 0; i < A; ++i)
    z[i] = pg * (p[i] - (a_vec == static_cast<int32_t>(i) ? splat(1.0f) : vec16{})) + ec * p[i] * (z[i] + H);
  for (size_t l = L; l-- > 0;) {
    const int64_t n_in = mlp.in[l], n_out = mlp.out[l];
    const vec16* input = l == 0 ? g.x.data() : g.h.data() + (l - 1) * W;
    vec16* gw = g.w[l].data();
    for (int64_t j = 0; j < n_out; ++j) {
      g.b[l][j] += z[j];
      for (int64_t k = 0; k < n_in; ++k) gw[j * n_in + k] += z[j] * input[k];
    }
    if (l == 0) break;
    vec16* dh = g.dh.data();  // dh = W^T dz, then through the activation into dz
    const float* wl = mlp.w[l];
    for (int64_t k = 0; k < n_in; ++k) dh[k] = vec16{};
    for (int64_t j = 0; j < n_out; ++j)
      for (int64_t k = 0; k < n_in; ++k) dh[k] += wl[j * n_in + k] * z[j];
    for (int64_t k = 0; k < n_in; ++k) {
      const vec16 y = input[k];
      z[k] = mlp.act == kRelu ? (y > 0.0f ? dh[k] : vec16{}) : dh[k] * (1.0f - y * y);
    }
  }
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

static void adam_step(const AdamJob& a) {
  for (size_t i = 0; i < a.params.size(); ++i) {
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
}

// One member's update, its arguments checked (update_grads and update_grads_many build them the same way).
struct UpdateJob {
  Mlp mlp;
  std::vector<torch::Tensor> weights, biases;
  torch::Tensor obs, action, reward, done, valid, ret;
  double gamma;
  bool normalize, mean_baseline;
  double entropy_coef, max_grad_norm;
  std::vector<torch::Tensor> grads_out;
  SumAcross sum_across;
  std::optional<AdamJob> adam;  // the optimizer's step, where the kernel takes it
};

static UpdateJob update_job(const std::vector<torch::Tensor>& weights, const std::vector<torch::Tensor>& biases,
                            int64_t act, torch::Tensor obs, torch::Tensor action, torch::Tensor reward,
                            torch::Tensor done, torch::Tensor valid, torch::Tensor ret, double gamma, bool normalize,
                            bool mean_baseline, double entropy_coef, double max_grad_norm,
                            const std::vector<torch::Tensor>& grads_out, const pybind11::object& sum_across_py,
                            const pybind11::object& adam) {
  // Data-parallel runs: sum_across_py(t) sums a float64 tensor over the processes, in place.
  SumAcross sum_across;
  if (!sum_across_py.is_none())
    sum_across = [sum_across_py](std::vector<double>& v) {
      auto t = torch::from_blob(v.data(), {static_cast<int64_t>(v.size())}, torch::kFloat64);
      sum_across_py(t);
    };
  Mlp mlp(weights, biases, act);
  const int64_t D = mlp.obs_dim();
  TORCH_CHECK(obs.dim() == 3 && obs.size(2) == D, "update_grads: obs must be [T, N, ", D, "]");
  for (const auto& x : {obs, action, reward, done, valid, ret})
    TORCH_CHECK(x.is_cpu() && x.is_contiguous(), "update_grads: tensors must be contiguous CPU tensors");
  TORCH_CHECK(grads_out.size() == 2 * mlp.layers(), "update_grads: one gradient per weight and bias");
  return UpdateJob{std::move(mlp), weights,       biases, obs,          action,         reward,
                   done,           valid,         ret,    gamma,        normalize,      mean_baseline,
                   entropy_coef,   max_grad_norm, grads_out, std::move(sum_across), adam_job(adam)};
}

// The update's statistics (Stat order), the gradients written into grads_out.
static torch::Tensor run_update(UpdateJob& job) {
  const Mlp& mlp = job.mlp;
  const auto& sum_across = job.sum_across;
  const auto &obs = job.obs, &action = job.action, &reward = job.reward, &done = job.done, &valid = job.valid,
             &ret = job.ret;
  const auto &weights = job.weights, &biases = job.biases;
  auto& grads_out = job.grads_out;
  const double gamma = job.gamma, entropy_coef = job.entropy_coef, max_grad_norm = job.max_grad_norm;
  const bool normalize = job.normalize, mean_baseline = job.mean_baseline;
  const int64_t T_ = obs.size(0), N = obs.size(1);
  const float* x = obs.data_ptr<float>();
  const int64_t* acts = action.data_ptr<int64_t>();
  const auto idx = returns_and_entries(reward.data_ptr<float>(), done.data_ptr<bool>(), valid.data_ptr<bool>(),
                                       ret.data_ptr<float>(), T_, N, static_cast<float>(gamma));
  const int64_t K = static_cast<int64_t>(idx.size());
  std::vector<double> counts{static_cast<double>(K), static_cast<double>(T_ * N)};  // entries, steps
  if (sum_across) sum_across(counts);
  const double count = std::max(counts[0], 1.0);
  const auto adv = advantages(ret.data_ptr<float>(), idx, normalize, mean_baseline, count, sum_across);
  const float inv_count = 1.0f / static_cast<float>(count);
  const int64_t chunks = (K + kChunk - 1) / kChunk;
  std::vector<Grads> partial(std::max<int64_t>(chunks, 1), Grads(mlp));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    LaneGrads lanes(mlp);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t stop = std::min(K, (c + 1) * kChunk);
      for (int64_t j = c * kChunk; j < stop; j += kLanes)
        batch_grad(mlp, x, idx.data() + j, acts, adv.data() + j, std::min(kLanes, stop - j), inv_count,
                   static_cast<float>(entropy_coef), lanes);
      lanes.flush(partial[c]);
    }
  });
  Grads& total = partial[0];
  for (size_t c = 1; c < partial.size(); ++c) {
    for (size_t l = 0; l < mlp.layers(); ++l) {
      for (size_t i = 0; i < total.w[l].size(); ++i) total.w[l][i] += partial[c].w[l][i];
      for (size_t i = 0; i < total.b[l].size(); ++i) total.b[l][i] += partial[c].b[l][i];
    }
    total.policy_sum += partial[c].policy_sum;
    total.entropy_sum += partial[c].entropy_sum;
  }
  if (sum_across) {  // every process's gradient sums and loss terms, in one collective
    std::vector<double> flat;
    for (size_t l = 0; l < mlp.layers(); ++l) {
      flat.insert(flat.end(), total.w[l].begin(), total.w[l].end());
      flat.insert(flat.end(), total.b[l].begin(), total.b[l].end());
    }
    flat.push_back(total.policy_sum);
    flat.push_back(total.entropy_sum);
    sum_across(flat);
    size_t o = 0;
    for (size_t l = 0; l < mlp.layers(); ++l) {
      for (auto& v : total.w[l]) v = static_cast<float>(flat[o++]);
      for (auto& v : total.b[l]) v = static_cast<float>(flat[o++]);
    }
    total.policy_sum = flat[o++];
    total.entropy_sum = flat[o++];
  }
  // Gradients out (weights back to [out, in]); global norm; clipping as clip_grad_norm_.
  double sq = 0.0;
  for (size_t l = 0; l < mlp.layers(); ++l) {
    float* gw = grads_out[2 * l].data_ptr<float>();
    float* gb = grads_out[2 * l + 1].data_ptr<float>();
    const int64_t n_in = mlp.in[l], n_out = mlp.out[l];
    for (int64_t j = 0; j < n_out; ++j) {
      for (int64_t k = 0; k < n_in; ++k)
        gw[j * n_in + k] = total.w[l][j * n_in + k];
      gb[j] = total.b[l][j];
    }
    for (const auto& g : {grads_out[2 * l], grads_out[2 * l + 1]}) {
      const float* p = g.data_ptr<float>();
      for (int64_t i = 0; i < g.numel(); ++i) sq += static_cast<double>(p[i]) * p[i];
    }
  }
  const double norm = std::sqrt(sq);
  if (max_grad_norm > 0.0) {
    const float coef = static_cast<float>(std::min(max_grad_norm / (norm + 1e-6), 1.0));
    for (auto& g : grads_out) g.mul_(coef);
  }
  const double policy_loss = total.policy_sum / count, entropy = total.entropy_sum / count;
  const double loss = policy_loss - entropy_coef * entropy;
  // Non-finite check, in the order of fastpg.update.first_nonfinite: loss, gradients, parameters.
  double nonfinite = 0.0, which = -1.0;
  if (!std::isfinite(loss)) {
    nonfinite = 1.0;
  } else if (!std::isfinite(norm)) {
    nonfinite = 2.0;
    for (size_t i = 0; i < grads_out.size() && which < 0; ++i)
      if (!grads_out[i].isfinite().all().item<bool>()) which = static_cast<double>(i);
  } else {
    for (size_t l = 0; l < mlp.layers() && which < 0; ++l) {
      if (!weights[l].isfinite().all().item<bool>()) which = 2.0 * l;
      else if (!biases[l].isfinite().all().item<bool>()) which = 2.0 * l + 1;
    }
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
  if (job.adam && nonfinite == 0.0) adam_step(*job.adam);  // a finite update: the optimizer steps
  return stats;
}

torch::Tensor update_grads(std::vector<torch::Tensor> weights, std::vector<torch::Tensor> biases, int64_t act,
                           torch::Tensor obs, torch::Tensor action, torch::Tensor reward, torch::Tensor done,
                           torch::Tensor valid, torch::Tensor ret, double gamma, bool normalize, bool mean_baseline,
                           double entropy_coef, double max_grad_norm, std::vector<torch::Tensor> grads_out,
                           pybind11::object sum_across_py, pybind11::object adam) {
  c10::InferenceMode guard;
  auto job = update_job(weights, biases, act, obs, action, reward, done, valid, ret, gamma, normalize, mean_baseline,
                        entropy_coef, max_grad_norm, grads_out, sum_across_py, adam);
  return run_update(job);
}

// jobs: one tuple per member, of update_grads' arguments in its order (sum_across None); one
// statistics tensor per job.
std::vector<torch::Tensor> update_grads_many(std::vector<pybind11::tuple> jobs) {
  c10::InferenceMode guard;
  std::vector<UpdateJob> parsed;
  parsed.reserve(jobs.size());
  for (const auto& t : jobs) {
    TORCH_CHECK(t.size() == 17, "update_grads_many: each job is update_grads' 17 arguments, got ", t.size());
    TORCH_CHECK(t[15].is_none(), "update_grads_many: jobs of a data-parallel shard are not batched");
    using T = torch::Tensor;
    parsed.push_back(update_job(t[0].cast<std::vector<T>>(), t[1].cast<std::vector<T>>(), t[2].cast<int64_t>(),
                                t[3].cast<T>(), t[4].cast<T>(), t[5].cast<T>(), t[6].cast<T>(), t[7].cast<T>(),
                                t[8].cast<T>(), t[9].cast<double>(), t[10].cast<bool>(), t[11].cast<bool>(),
                                t[12].cast<double>(), t[13].cast<double>(), t[14].cast<std::vector<T>>(),
                                pybind11::none(), t[16]));
  }
  std::vector<torch::Tensor> stats(parsed.size());
  run_jobs(static_cast<int64_t>(parsed.size()), [&](int64_t j, bool) { stats[j] = run_update(parsed[j]); });
  return stats;
}

}  // namespace fastpg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cartpole_step", &fastpg::cartpole_step, "one lockstep step of native CartPole");
  m.def("mlp_act", &fastpg::mlp_act, "sample the MLP policy's actions for obs [N, D]");
  m.def("collect", &fastpg::collect, "the fused collect loop (CartPole or Acrobot, MLP policy)");
  m.def("update_grads", &fastpg::update_grads, "the fused update's math: returns, loss, gradients, checks");
  m.def("collect_many", &fastpg::collect_many, "collect for many independent jobs (a population) in one call");
  m.def("update_grads_many", &fastpg::update_grads_many, "update_grads for many independent jobs in one call");
  m.def("epoch_data_many", &fastpg::epoch_data_many, "the episodes that ended, valid steps and a finite check, per job");
}
