// fastpg's compiled CPU kernels (built on first use by fastpg/_kernels.py):
//
//   cartpole_step   one lockstep step of native CartPole (the env's kernel "cpp")
//   mlp_act         sample actions of the MLP policy (what the fused collect does per step)
//   collect         the fused collect: T steps of env + MLP policy + sampling + storage writes
//   update_grads    the fused update's math: returns, entries in the loss, advantage, the MLP's
//                   forward and backward, gradient norm and clipping, the non-finite check
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
#include <cfloat>
#include <cmath>
#include <cstring>
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
// AVX2 ones, ...) with fused multiply-adds. MLP_MATH lets these functions contract a * b + c into
// one instruction while the env dynamics, compiled in the same file, keep -ffp-contract=off.
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

static inline float madd(float a, float b, float c) {
#ifdef __FMA__
  return __builtin_fmaf(a, b, c);
#else
  return a * b + c;
#endif
}

// exp(x) for float, Cephes' polynomial (relative error ~1e-7), branch-free so loops vectorize: the
// exponent is rounded by adding and subtracting 1.5 * 2^23 (floorf would block vectorization
// without -fno-trapping-math), and 2^k is built from its bits.
static inline float exp_approx(float x) {
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  const float fx = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - fx * 0.693359375f;
  r = r - fx * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = madd(p, r, 1.3981999507e-3f);
  p = madd(p, r, 8.3334519073e-3f);
  p = madd(p, r, 4.1665795894e-2f);
  p = madd(p, r, 1.6666665459e-1f);
  p = madd(p, r, 5.0000001201e-1f);
  p = madd(p * r, r, r) + 1.0f;
  const int32_t e = static_cast<int32_t>(fx) + 127;
  return p * __builtin_bit_cast(float, e << 23);
}

// tanh(x) = 1 - 2 / (exp(2x) + 1), absolute error ~1e-7 (torch's CPU path: 2 sigmoid(2x) - 1).
static inline float tanh_approx(float x) {
  return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f);
}

// sum_k a[k] * b[k]; the 16 lanes are summed pairwise at the end. (Folding the halves in vector
// registers measured slower here: benchmarks/NOTES.md.)
MLP_MATH static inline float dot(const float* a, const float* b, int64_t n) {
  vec16 acc = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) acc += vload(a + k) * vload(b + k);
  float lanes[kLanes];
  vstore(lanes, acc);
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  float s = lanes[0];
  for (; k < n; ++k) s += a[k] * b[k];
  return s;
}

// y[0:n_out] = bias + sum_k x[k] * m[k * n_out + 0:n_out] (bias may be null: 0), 16 outputs at a
// time kept in a register across k.
MLP_MATH static inline void affine_rows(const float* x, int64_t n_in, const float* m, const float* bias,
                                        int64_t n_out, float* y) {
  int64_t j0 = 0;
  for (; j0 + kLanes <= n_out; j0 += kLanes) {
    vec16 acc = bias != nullptr ? vload(bias + j0) : vec16{};
    for (int64_t k = 0; k < n_in; ++k) acc += x[k] * vload(m + k * n_out + j0);
    vstore(y + j0, acc);
  }
  for (int64_t j = j0; j < n_out; ++j) {
    float acc = bias != nullptr ? bias[j] : 0.0f;
    for (int64_t k = 0; k < n_in; ++k) acc += x[k] * m[k * n_out + j];
    y[j] = acc;
  }
}

// M[r * cols + c] += sum_b a[b * a_stride + r] * v[b * v_stride + c] for b < B: a rank-B update,
// 16 columns at a time in a register across b.
MLP_MATH static inline void rank_update(float* M, int64_t rows, int64_t cols, const float* a, int64_t a_stride,
                                        const float* v, int64_t v_stride, int64_t B) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = M + r * cols;
    int64_t c0 = 0;
    for (; c0 + kLanes <= cols; c0 += kLanes) {
      vec16 acc = vload(row + c0);
      for (int64_t b = 0; b < B; ++b) acc += a[b * a_stride + r] * vload(v + b * v_stride + c0);
      vstore(row + c0, acc);
    }
    for (int64_t c = c0; c < cols; ++c) {
      float acc = row[c];
      for (int64_t b = 0; b < B; ++b) acc += a[b * a_stride + r] * v[b * v_stride + c];
      row[c] = acc;
    }
  }
}

static inline void activate(int64_t act, float* y, int64_t n) {
  if (act == kRelu) {
    for (int64_t j = 0; j < n; ++j) y[j] = y[j] > 0.0f ? y[j] : 0.0f;
  } else {
    for (int64_t j = 0; j < n; ++j) y[j] = tanh_approx(y[j]);
  }
}

// A layer with fewer outputs than this computes each output as a dot product over its inputs
// (weights [out, in]); a wider one adds each input times a weight row (weights [in, out]). Either
// way the innermost loop runs over the longer, contiguous dimension.
static constexpr int64_t kNarrow = 16;

struct Mlp {
  std::vector<torch::Tensor> wt_keep, w_keep, b_keep;  // keep the float32 contiguous copies alive
  std::vector<const float*> wt, w, b;                 // wt: [in, out] (transposed); w: [out, in]
  std::vector<int64_t> in, out;
  std::vector<char> narrow;  // out < kNarrow: dot-product form
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
      auto WT = W.t().contiguous();
      w_keep.push_back(W);
      wt_keep.push_back(WT);
      b_keep.push_back(B);
      w.push_back(W.data_ptr<float>());
      wt.push_back(WT.data_ptr<float>());
      b.push_back(B.data_ptr<float>());
      in.push_back(W.size(1));
      out.push_back(W.size(0));
      narrow.push_back(W.size(0) < kNarrow);
      widest = std::max(widest, W.size(0));
    }
  }

  size_t layers() const { return w.size(); }
  int64_t obs_dim() const { return in.front(); }
  int64_t num_actions() const { return out.back(); }

  // x [in0] -> logits [A]; hidden activations into h (layers() - 1 buffers of widest floats).
  MLP_MATH void forward(const float* x, float* h, float* logits) const {
    const float* cur = x;
    for (size_t l = 0; l < layers(); ++l) {
      float* y = (l + 1 == layers()) ? logits : h + l * widest;
      const int64_t n_out = out[l], n_in = in[l];
      if (narrow[l]) {
        for (int64_t j = 0; j < n_out; ++j) y[j] = b[l][j] + dot(w[l] + j * n_in, cur, n_in);
      } else {
        affine_rows(cur, n_in, wt[l], b[l], n_out, y);
      }
      if (l + 1 < layers()) activate(act, y, n_out);
      cur = y;
    }
  }
};

// Uniforms per sampled action: one for two actions (a logistic comparison), else one per action
// (Gumbel-max), as fastpg.policy._gumbel_argmax draws them.
static inline int64_t draws_per_action(int64_t A) { return A == 2 ? 1 : A; }

static inline int64_t sample(const float* logits, int64_t A, const float* u) {
  if (A == 2) {
    const float v = std::max(u[0], FLT_MIN);
    return logits[1] - logits[0] > std::log(v / (1.0f - v)) ? 1 : 0;
  }
  int64_t best = 0;
  float best_score = -INFINITY;
  for (int64_t a = 0; a < A; ++a) {
    const float score = logits[a] - std::log(-std::log(std::max(u[a], FLT_MIN)));
    if (score > best_score) best = a, best_score = score;
  }
  return best;
}

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
  std::vector<float> h(mlp.layers() * mlp.widest), logits(A);
  for (int64_t n = 0; n < N; ++n) {
    mlp.forward(x.data_ptr<float>() + n * mlp.obs_dim(), h.data(), logits.data());
    out.data_ptr<int64_t>()[n] = sample(logits.data(), A, u.data_ptr<float>() + n * per);
  }
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

template <template <typename> class E>
struct EnvTag {
  template <typename T>
  using type = E<T>;
};

template <template <typename> class Env, typename T>
static void collect_impl(const Mlp& mlp, at::Generator& policy_gen, T* state, T* final_state, int64_t* elapsed,
                         at::Generator& env_gen, ResetFn resets, int64_t max_steps, bool select, const Storage& st,
                         int64_t T_, int64_t N, float* carry_obs, float* carry_ret, int64_t* carry_len) {
  constexpr int D = Env<T>::kStateDim, O = Env<T>::kObsDim;
  const c10::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  const int64_t A = mlp.num_actions(), per = draws_per_action(A);
  // This epoch's draws, as the torch-op path makes them step by step: the policy's uniforms
  // [T, N * per] (trainer's generator), and where every copy draws a reset state every step, the
  // reset states [T, D, N] (env's generator).
  auto u_all = torch::empty({T_, N * per}, torch::kFloat32);
  fill_uniform(u_all, 0.0, 1.0, policy_gen);
  torch::Tensor fresh_all = select ? resets({T_, D, N}, env_gen, dtype).contiguous() : torch::Tensor();
  std::vector<int64_t> done_idx;
  const int64_t grain = std::max<int64_t>(64, 16384 / std::max<int64_t>(mlp.widest, 1));
  const int64_t scratch = mlp.layers() * mlp.widest + A;  // hidden activations and logits, per thread
  std::vector<float> buffers(scratch * at::get_num_threads());
  std::memcpy(st.obs, carry_obs, sizeof(float) * N * O);  // obs[0]: the carried observation
  for (int64_t t = 0; t < T_; ++t) {
    // Python's signal handlers run here (the GIL is held): a KeyboardInterrupt from a second Ctrl-C
    // (fastpg.interrupts) ends a long epoch at once instead of after it.
    if (PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
    const float* u = u_all.data_ptr<float>() + t * N * per;
    const T* fresh = select ? fresh_all.data_ptr<T>() + t * D * N : nullptr;
    const int64_t row = t * N;
    at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
      float* h = buffers.data() + scratch * at::get_thread_num();
      float* logits = h + mlp.layers() * mlp.widest;
      for (int64_t n = begin; n < end; ++n) {
        const int64_t i = row + n;
        mlp.forward(st.obs + i * O, h, logits);
        const int64_t a = sample(logits, A, u + n * per);
        T s[D], v[D], r;
        for (int k = 0; k < D; ++k) s[k] = state[k * N + n];
        const bool term = Env<T>::step(s, a, v, r);
        const int64_t el = elapsed[n] + 1;
        const bool d = term || el >= max_steps;
        elapsed[n] = d ? 0 : el;
        for (int k = 0; k < D; ++k) {
          final_state[k * N + n] = v[k];
          state[k * N + n] = (select && d) ? fresh[k * N + n] : v[k];
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
    });
    if (!select) {  // only the done copies draw a reset state, [D, k] in index order
      done_idx.clear();
      for (int64_t n = 0; n < N; ++n)
        if (st.done[row + n]) done_idx.push_back(n);
      const int64_t k = static_cast<int64_t>(done_idx.size());
      if (k > 0) {
        const auto drawn = resets({D, k}, env_gen, dtype).contiguous();
        const T* fd = drawn.data_ptr<T>();
        for (int64_t j = 0; j < k; ++j)
          for (int f = 0; f < D; ++f) state[f * N + done_idx[j]] = fd[f * k + j];
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

void collect(const std::string& env, std::vector<torch::Tensor> weights, std::vector<torch::Tensor> biases,
             int64_t act, at::Generator policy_gen, torch::Tensor state, torch::Tensor final_state,
             torch::Tensor elapsed, at::Generator env_gen, int64_t max_steps, bool select, torch::Tensor obs,
             torch::Tensor action, torch::Tensor reward, torch::Tensor done, torch::Tensor terminated,
             torch::Tensor valid, torch::Tensor ep_return, torch::Tensor ep_length, torch::Tensor carry_obs,
             torch::Tensor carry_return, torch::Tensor carry_length) {
  c10::InferenceMode guard;
  const Mlp mlp(weights, biases, act);
  const int64_t T_ = obs.size(0), N = obs.size(1);
  const bool cartpole = env == "cartpole";
  TORCH_CHECK(cartpole || env == "acrobot", "collect: env must be cartpole or acrobot, got ", env);
  const int64_t D = 4, O = cartpole ? 4 : 6, A = cartpole ? 2 : 3;
  TORCH_CHECK(mlp.obs_dim() == O && mlp.num_actions() == A, "collect: the MLP must map ", O, " -> ", A);
  TORCH_CHECK(state.is_contiguous() && state.size(0) == D && state.size(1) == N, "state must be [4, N]");
  TORCH_CHECK(obs.dim() == 3 && obs.size(2) == O, "obs must be [T, N, ", O, "]");
  for (const auto& x : {obs, action, reward, done, terminated, valid, ep_return, ep_length, carry_obs, carry_return,
                        carry_length, final_state, elapsed})
    TORCH_CHECK(x.is_cpu() && x.is_contiguous(), "collect: tensors must be contiguous CPU tensors");
  const Storage st{obs.data_ptr<float>(),       action.data_ptr<int64_t>(),  reward.data_ptr<float>(),
                   done.data_ptr<bool>(),       terminated.data_ptr<bool>(), valid.data_ptr<bool>(),
                   ep_return.data_ptr<float>(), ep_length.data_ptr<int64_t>()};
  AT_DISPATCH_FLOATING_TYPES(state.scalar_type(), "collect", [&] {
    auto run = [&](auto env_tag, ResetFn resets) {
      using Tag = decltype(env_tag);
      collect_impl<Tag::template type, scalar_t>(
          mlp, policy_gen, state.data_ptr<scalar_t>(), final_state.data_ptr<scalar_t>(), elapsed.data_ptr<int64_t>(),
          env_gen, resets, max_steps, select, st, T_, N, carry_obs.data_ptr<float>(), carry_return.data_ptr<float>(),
          carry_length.data_ptr<int64_t>());
    };
    if (cartpole) {
      run(EnvTag<CartPole>{}, cartpole_resets);
    } else {
      run(EnvTag<Acrobot>{}, acrobot_resets);
    }
  });
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

// adv = (ret - baseline), standardized over the entries (two passes, double accumulators).
static std::vector<float> advantages(const float* ret, const std::vector<int64_t>& idx, bool normalize,
                                     bool mean_baseline) {
  const int64_t K = static_cast<int64_t>(idx.size());
  const double count = std::max<int64_t>(K, 1);
  std::vector<float> adv(K);
  double sum = 0.0;
  for (int64_t j = 0; j < K; ++j) sum += ret[idx[j]];
  const float base = mean_baseline ? static_cast<float>(sum / count) : 0.0f;
  for (int64_t j = 0; j < K; ++j) adv[j] = ret[idx[j]] - base;
  if (!normalize) return adv;
  double mean = 0.0, var = 0.0;
  for (float a : adv) mean += a;
  mean /= count;
  for (float a : adv) var += (a - mean) * (a - mean);
  const float m = static_cast<float>(mean), scale = static_cast<float>(1.0 / (std::sqrt(var / count) + 1e-8));
  for (float& a : adv) a = (a - m) * scale;
  return adv;
}

struct Grads {  // one set of gradient accumulators; weights as [out, in] for narrow layers, else [in, out]
  std::vector<std::vector<float>> wt, b;
  double policy_sum = 0.0, entropy_sum = 0.0;
  explicit Grads(const Mlp& mlp) {
    for (size_t l = 0; l < mlp.layers(); ++l) {
      wt.emplace_back(mlp.in[l] * mlp.out[l], 0.0f);
      b.emplace_back(mlp.out[l], 0.0f);
    }
  }
};

// Per-thread scratch of batch_grad: inputs, hidden activations, logits / their gradients.
struct Scratch {
  std::vector<float> x, h, dz, dh;
  Scratch(const Mlp& mlp, int64_t B)
      : x(B * mlp.obs_dim()), h(B * mlp.layers() * mlp.widest), dz(B * mlp.widest), dh(B * mlp.widest) {}
};

static constexpr int64_t kBatch = 16;  // entries per rank-B gradient update

// Forward and backward of B <= kBatch entries, accumulating into g. dz of the logits:
//   policy term  (adv / K) (p - onehot(a));  entropy term  (c / K) p (log p + H).
MLP_MATH static void batch_grad(const Mlp& mlp, const float* obs, const int64_t* entry, const int64_t* acts, const float* adv,
                       int64_t B, float inv_count, float ent_coef, Scratch& s, Grads& g) {
  const size_t L = mlp.layers();
  const int64_t D = mlp.obs_dim(), A = mlp.num_actions(), W = mlp.widest, HS = static_cast<int64_t>(L) * W;
  for (int64_t b = 0; b < B; ++b) {
    float* x = s.x.data() + b * D;
    std::memcpy(x, obs + entry[b] * D, sizeof(float) * D);
    float* logits = s.dz.data() + b * W;  // the logits' buffer becomes their gradient
    mlp.forward(x, s.h.data() + b * HS, logits);
    // log-softmax: e = exp(z - max), p = e / sum(e), log p = z - max - log(sum(e))
    float m = logits[0];
    for (int64_t i = 1; i < A; ++i) m = std::max(m, logits[i]);
    float* e = s.dh.data() + b * W;  // scratch for p
    float sum = 0.0f;
    for (int64_t i = 0; i < A; ++i) sum += (e[i] = std::exp(logits[i] - m));
    const float log_s = std::log(sum), inv_s = 1.0f / sum;
    float H = 0.0f;
    for (int64_t i = 0; i < A; ++i) {
      logits[i] -= m + log_s;  // now log p
      e[i] *= inv_s;           // now p
      H -= e[i] * logits[i];
    }
    const int64_t a = acts[entry[b]];
    g.policy_sum -= static_cast<double>(adv[b]) * logits[a];
    g.entropy_sum += H;
    const float pg = adv[b] * inv_count, ec = ent_coef * inv_count;
    for (int64_t i = 0; i < A; ++i) logits[i] = pg * (e[i] - (i == a ? 1.0f : 0.0f)) + ec * e[i] * (logits[i] + H);
  }
  for (size_t l = L; l-- > 0;) {
    const int64_t n_in = mlp.in[l], n_out = mlp.out[l];
    const float* input = l == 0 ? s.x.data() : s.h.data() + (l - 1) * W;  // entry b at + b * in_stride
    const int64_t in_stride = l == 0 ? D : HS;
    float* gb = g.b[l].data();
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < n_out; ++j) gb[j] += s.dz[b * W + j];
    if (mlp.narrow[l]) {  // g[j, k] += sum_b dz_b[j] input_b[k]
      rank_update(g.wt[l].data(), n_out, n_in, s.dz.data(), W, input, in_stride, B);
    } else {  // g[k, j] += sum_b input_b[k] dz_b[j]
      rank_update(g.wt[l].data(), n_in, n_out, input, in_stride, s.dz.data(), W, B);
    }
    if (l == 0) break;
    for (int64_t b = 0; b < B; ++b) {  // dh_b = W^T dz_b, then through the activation
      float* dh = s.dh.data() + b * W;
      affine_rows(s.dz.data() + b * W, n_out, mlp.w[l], nullptr, n_in, dh);
      const float* in_b = input + b * in_stride;
      float* dz = s.dz.data() + b * W;
      if (mlp.act == kRelu) {
        for (int64_t k = 0; k < n_in; ++k) dz[k] = in_b[k] > 0.0f ? dh[k] : 0.0f;
      } else {
        for (int64_t k = 0; k < n_in; ++k) dz[k] = dh[k] * (1.0f - in_b[k] * in_b[k]);
      }
    }
  }
}

// Chunks of entries, each summed in its own accumulators (then added in chunk order): the result
// depends on the thread count only through kChunk, not on scheduling.
static constexpr int64_t kChunk = 4096;

torch::Tensor update_grads(std::vector<torch::Tensor> weights, std::vector<torch::Tensor> biases, int64_t act,
                           torch::Tensor obs, torch::Tensor action, torch::Tensor reward, torch::Tensor done,
                           torch::Tensor valid, torch::Tensor ret, double gamma, bool normalize, bool mean_baseline,
                           double entropy_coef, double max_grad_norm, std::vector<torch::Tensor> grads_out) {
  c10::InferenceMode guard;
  const Mlp mlp(weights, biases, act);
  const int64_t T_ = obs.size(0), N = obs.size(1), D = mlp.obs_dim();
  TORCH_CHECK(obs.size(2) == D, "update_grads: obs must be [T, N, ", D, "]");
  for (const auto& x : {obs, action, reward, done, valid, ret})
    TORCH_CHECK(x.is_cpu() && x.is_contiguous(), "update_grads: tensors must be contiguous CPU tensors");
  const float* x = obs.data_ptr<float>();
  const int64_t* acts = action.data_ptr<int64_t>();
  const auto idx = returns_and_entries(reward.data_ptr<float>(), done.data_ptr<bool>(), valid.data_ptr<bool>(),
                                       ret.data_ptr<float>(), T_, N, static_cast<float>(gamma));
  const int64_t K = static_cast<int64_t>(idx.size());
  const auto adv = advantages(ret.data_ptr<float>(), idx, normalize, mean_baseline);
  const float inv_count = 1.0f / static_cast<float>(std::max<int64_t>(K, 1));
  const int64_t chunks = (K + kChunk - 1) / kChunk;
  std::vector<Grads> partial(std::max<int64_t>(chunks, 1), Grads(mlp));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    Scratch scratch(mlp, kBatch);
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t j = c * kChunk; j < std::min(K, (c + 1) * kChunk); j += kBatch)
        batch_grad(mlp, x, idx.data() + j, acts, adv.data() + j, std::min(kBatch, std::min(K, (c + 1) * kChunk) - j),
                   inv_count, static_cast<float>(entropy_coef), scratch, partial[c]);
  });
  Grads& total = partial[0];
  for (size_t c = 1; c < partial.size(); ++c) {
    for (size_t l = 0; l < mlp.layers(); ++l) {
      for (size_t i = 0; i < total.wt[l].size(); ++i) total.wt[l][i] += partial[c].wt[l][i];
      for (size_t i = 0; i < total.b[l].size(); ++i) total.b[l][i] += partial[c].b[l][i];
    }
    total.policy_sum += partial[c].policy_sum;
    total.entropy_sum += partial[c].entropy_sum;
  }
  // Gradients out (weights back to [out, in]); global norm; clipping as clip_grad_norm_.
  TORCH_CHECK(grads_out.size() == 2 * mlp.layers(), "update_grads: one gradient per weight and bias");
  double sq = 0.0;
  for (size_t l = 0; l < mlp.layers(); ++l) {
    float* gw = grads_out[2 * l].data_ptr<float>();
    float* gb = grads_out[2 * l + 1].data_ptr<float>();
    const int64_t n_in = mlp.in[l], n_out = mlp.out[l];
    for (int64_t j = 0; j < n_out; ++j) {
      for (int64_t k = 0; k < n_in; ++k)
        gw[j * n_in + k] = mlp.narrow[l] ? total.wt[l][j * n_in + k] : total.wt[l][k * n_out + j];
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
  const double count = std::max<int64_t>(K, 1);
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
  s[kMaskFrac] = static_cast<double>(K) / static_cast<double>(T_ * N);
  s[kGradNorm] = norm;
  s[kNonfinite] = nonfinite;
  s[kWhich] = which;
  s[kCount] = static_cast<double>(K);
  return stats;
}

}  // namespace fastpg

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cartpole_step", &fastpg::cartpole_step, "one lockstep step of native CartPole");
  m.def("mlp_act", &fastpg::mlp_act, "sample the MLP policy's actions for obs [N, D]");
  m.def("collect", &fastpg::collect, "the fused collect loop (CartPole or Acrobot, MLP policy)");
  m.def("update_grads", &fastpg::update_grads, "the fused update's math: returns, loss, gradients, checks");
}
