// Env kernels: the C++ interface an environment implements to run inside the fused epoch, and
// the fused collect and evaluation compiled against it (docs/env_kernels.md; fastpg/kernel_env.py).
//
// An env kernel is a class template over the state's scalar type T (float or double: the
// Python env's state_dtype), with static members only:
//
//   template <typename T> struct MyEnv {
//     static constexpr int kStateDim;    // D: state variables per copy
//     static constexpr int kObsDim;      // O: float32 observation entries per copy
//     static constexpr int kNumActions;  // Discrete(A): A; Box actions: 0
//     static constexpr int kActionDim;   // Box(shape=(k,)): k; Discrete: 0
//
//     // `draws` successive calls of the Python env's _sample_reset(n), in that order, from the
//     // env's generator: a contiguous [draws, D, n] tensor of `dtype`. Draw with torch's own ops
//     // (uniform_, normal_ on `gen`) exactly as _sample_reset does, so that the fused epoch and
//     // the torch env draw the same reset states.
//     static torch::Tensor reset(at::Generator& gen, int64_t draws, int64_t n, c10::ScalarType dtype);
//
//     // One step of one copy from state s[D] (elapsed: the steps of this episode before this
//     // one): the next state into v[D] and the reward; returns whether the episode terminated
//     // (the time limit, truncation, is the trainer's). Discrete: `a` is int64_t in [0, A);
//     // Box: `a` is const float* to kActionDim entries, already clipped to the action space.
//     static bool step(const T* s, int64_t a, int64_t elapsed, T* v, T& reward);        // Discrete
//     static bool step(const T* s, const float* a, int64_t elapsed, T* v, T& reward);   // Box
//
//     // The float32 observation of state s[D] into o[O].
//     static void observe(const T* s, float* o);
//   };
//
// Semantics: those of fastpg's native envs (fastpg/envs/classic_control/_base.py): a done copy
// (terminated, or elapsed reaching max_episode_steps) is reset in the same step, its final state
// kept; resets draw a state for every copy every step and select the done ones when the env
// "selects resets" (up to 512 copies per member on CPU), else only the done copies draw, [D, k]
// in index order. The kernel is compiled with -ffp-contract=off (no fused multiply-adds), so
// gymnasium's arithmetic, written operation for operation, gives gymnasium's float64 results.
//
// A module of env kernels: bind_env_kernels(m, {env_entry<MyEnv>("my_env"), ...}) defines
// collect, collect_many, env_step and env_reset for them (FASTPG_ENV_MODULE does it for one).
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mlp.h"

namespace fastpg {

// ---------------------------------------------------------------------------------------------
// Batched calls (populations): many independent jobs in one call.
//
// Jobs are spread over torch's intra-op threads, each thread taking the next job not yet taken
// (members' epochs differ in length). Inside a job everything runs serially (a nested parallel_for
// runs inline), and a job touches only its own tensors and generators, so every job computes what
// it computes alone, whatever the thread count and the schedule. The calling thread (which holds
// the GIL) alone runs Python's signal handlers.
template <typename F>
inline void run_jobs(int64_t n, const F& job) {
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

// ---------------------------------------------------------------------------------------------
// The fused collect loop (state [D, N] of the env's dtype, updated in place).

struct Storage {
  float* obs;    // [T, N, obs_dim]
  void* action;  // [T, N] int64 (Discrete) or [T, N, action_dim] float32 (Box)
  float* reward;
  bool *done, *terminated, *valid;
  float* ep_return;
  int64_t* ep_length;
};

// The env copies of this process: columns [lo, lo + N) of total (data-parallel runs; otherwise lo 0
// and total N). counts_before(k), where set, is the collective that returns (done copies on lower
// shards, on all shards) when this one has k (the draw-only-done mode needs them every step).
struct Shard {
  int64_t lo, total;
  std::function<std::pair<int64_t, int64_t>(int64_t)> counts_before;
};

// The diagonal Gaussian policy of Box actions: the network's output is the mean, std the
// state-independent exp(clamp(log_std)) (computed by torch's ops in Python's order), and the env
// steps with the sample clipped to [low, high] (fastpg.envs.base.action_clipper); the sample
// itself is stored.
struct Gaussian {
  torch::Tensor std_keep, low_keep, high_keep;
  const float *std = nullptr, *low = nullptr, *high = nullptr;
  int64_t dim = 0;
};

// Actions of a block of count <= 16 copies: Discrete into actions[count]; Box into
// actions_f[count * dim] (the sample) and clipped[count * dim].
inline void gaussian_block(const Mlp& mlp, const Gaussian& g, const float* obs, int64_t count, const float* eps,
                           vec16* scratch, float* sample, float* clipped) {
  vec16* x = scratch;
  vec16* h = x + mlp.obs_dim();
  vec16* mean = h + mlp.scratch();
  gather_lanes(obs, count, mlp.obs_dim(), x);
  mlp.forward(x, h, mean);
  for (int64_t l = 0; l < count; ++l)
    for (int64_t j = 0; j < g.dim; ++j) {
      const float a = mean[j][l] + g.std[j] * eps[l * g.dim + j];
      sample[l * g.dim + j] = a;
      clipped[l * g.dim + j] = std::min(std::max(a, g.low[j]), g.high[j]);
    }
}

template <template <typename> class Env, typename T>
void collect_impl(const Mlp& mlp, const Gaussian* gauss, at::Generator& policy_gen, T* state, T* final_state,
                  int64_t* elapsed, at::Generator& env_gen, int64_t max_steps, bool select, const Storage& st,
                  int64_t T_, int64_t N, float* carry_obs, float* carry_ret, int64_t* carry_len, const Shard& shard,
                  bool main_thread) {
  using E = Env<T>;
  constexpr int D = E::kStateDim, O = E::kObsDim;
  constexpr bool kBox = E::kNumActions == 0;
  constexpr int AD = kBox ? E::kActionDim : 1;
  const c10::ScalarType dtype = c10::CppTypeToScalarType<T>::value;
  const int64_t A = mlp.num_actions(), per = kBox ? AD : draws_per_action(A);
  // This epoch's draws, as the torch-op path makes them step by step: Discrete, the policy's
  // uniforms [T, N * per] (one serial draw is T draws in turn); Box, standard normals [N, dim]
  // each step; and where every copy draws a reset state every step, the reset states [T, D, N]
  // (env's generator). A shard draws for all the copies (shard.total) and reads its own columns,
  // from shard.lo. torch's normal_ draws a tensor's uniforms in order and turns each 16 of them
  // into normals, redrawing the last 16 where the size is not a multiple of 16: so where N * dim
  // is one, one [T, N * dim] draw is the T draws in turn, and else each step draws its own.
  const int64_t NT = shard.total, lo = shard.lo;
  const bool normals_per_step = kBox && (NT * per) % 16 != 0;
  torch::Tensor u_all = torch::empty({normals_per_step ? 1 : T_, NT * per}, torch::kFloat32);
  if (!kBox) fill_uniform(u_all, 0.0, 1.0, policy_gen);
  if (kBox && !normals_per_step) u_all.normal_(0.0, 1.0, policy_gen);
  torch::Tensor fresh_all = select ? E::reset(env_gen, T_, NT, dtype).contiguous() : torch::Tensor();
  // Env copies in blocks of 16 (one per lane of the policy's forward pass).
  const int64_t blocks = (N + kLanes - 1) / kLanes;
  const int64_t scratch = act_scratch(mlp);
  std::memcpy(st.obs, carry_obs, sizeof(float) * N * O);  // obs[0]: the carried observation

  // Step t of the blocks [b0, b1): the policy's actions, the env steps (with the done copies'
  // reset where they are selected from the drawn states), the storage's entries.
  auto step_blocks = [&](int64_t t, int64_t b0, int64_t b1, vec16* lanes) {
    const float* u = u_all.data_ptr<float>() + ((normals_per_step ? 0 : t * NT) + lo) * per;
    const T* fresh = select ? fresh_all.data_ptr<T>() + t * D * NT + lo : nullptr;
    const int64_t row = t * N;
    int64_t actions[kLanes];
    float clipped[kLanes * AD];
    for (int64_t blk = b0; blk < b1; ++blk) {
      const int64_t n0 = blk * kLanes, count = std::min(kLanes, N - n0);
      const float* obs = st.obs + (row + n0) * O;
      if constexpr (kBox) {
        gaussian_block(mlp, *gauss, obs, count, u + n0 * per, lanes, static_cast<float*>(st.action) + (row + n0) * AD,
                       clipped);
      } else {
        act_block(mlp, obs, count, u + n0 * per, lanes, actions);
      }
      for (int64_t n = n0; n < n0 + count; ++n) {
        const int64_t i = row + n;
        T s[D], v[D], r;
        for (int k = 0; k < D; ++k) s[k] = state[k * N + n];
        bool term;
        if constexpr (kBox) {
          term = E::step(s, static_cast<const float*>(clipped + (n - n0) * AD), elapsed[n], v, r);
        } else {
          const int64_t a = actions[n - n0];
          static_cast<int64_t*>(st.action)[i] = a;
          term = E::step(s, a, elapsed[n], v, r);
        }
        const int64_t el = elapsed[n] + 1;
        const bool d = term || el >= max_steps;
        elapsed[n] = d ? 0 : el;
        for (int k = 0; k < D; ++k) {
          final_state[k * N + n] = v[k];
          state[k * N + n] = (select && d) ? fresh[k * NT + n] : v[k];
        }
        const float rf = static_cast<float>(r);
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
  };
  // The observations of copies [n0, n1) after step t: step t + 1's, or the carry after the last.
  auto observe_copies = [&](int64_t t, int64_t n0, int64_t n1) {
    float* next_obs = t + 1 < T_ ? st.obs + (t * N + N) * O : carry_obs;
    for (int64_t n = n0; n < n1; ++n) {
      T s[D];
      for (int f = 0; f < D; ++f) s[f] = state[f * N + n];
      E::observe(s, next_obs + n * O);
    }
  };

  if (select && !normals_per_step) {
    // Every draw of the epoch is made beforehand (the policy's, the reset states), so the copies
    // are independent for the whole epoch: each thread takes its blocks through all T steps, with
    // no barrier between steps. The same operations on each copy as step by step: the same numbers.
    // Python's signal handlers run in the thread that holds the GIL (a KeyboardInterrupt from a
    // second Ctrl-C, fastpg.interrupts, ends a long epoch at once); the others then stop too.
    std::atomic<bool> interrupted{false};
    const auto caller = std::this_thread::get_id();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      std::vector<vec16> lanes(scratch);  // the chunk's own (thread numbers are all 0 in a batched call)
      const bool checks = main_thread && std::this_thread::get_id() == caller;
      for (int64_t t = 0; t < T_; ++t) {
        if (checks && PyErr_CheckSignals() != 0) interrupted = true;
        if (interrupted.load(std::memory_order_relaxed)) return;
        step_blocks(t, b0, b1, lanes.data());
        observe_copies(t, b0 * kLanes, std::min(b1 * kLanes, N));
      }
    });
    if (interrupted) throw pybind11::error_already_set();
    return;
  }

  // Step by step: the normals drawn each step, or only the done copies drawing their reset states.
  const int64_t grain = std::max<int64_t>(4, 1024 / std::max<int64_t>(mlp.widest, 1));
  std::vector<int64_t> done_idx;
  for (int64_t t = 0; t < T_; ++t) {
    if (main_thread && PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
    if (normals_per_step) u_all.normal_(0.0, 1.0, policy_gen);
    at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
      std::vector<vec16> lanes(scratch);  // the chunk's own (thread numbers are all 0 in a batched call)
      step_blocks(t, begin, end, lanes.data());
    });
    if (!select) {  // only the done copies draw a reset state, [D, k] in index order
      const int64_t row = t * N;
      done_idx.clear();
      for (int64_t n = 0; n < N; ++n)
        if (st.done[row + n]) done_idx.push_back(n);
      const int64_t k = static_cast<int64_t>(done_idx.size());
      // A shard draws the done copies of every shard, [D, total], and reads its columns.
      const std::pair<int64_t, int64_t> counts =
          shard.counts_before ? shard.counts_before(k) : std::make_pair(int64_t{0}, k);
      const int64_t before = counts.first, total = counts.second;
      if (total > 0) {
        const torch::Tensor drawn = E::reset(env_gen, 1, total, dtype).contiguous();
        const T* fd = drawn.template data_ptr<T>();
        for (int64_t j = 0; j < k; ++j)
          for (int f = 0; f < D; ++f) state[f * N + done_idx[j]] = fd[f * total + before + j];
      }
    }
    observe_copies(t, 0, N);
  }
}

// ---------------------------------------------------------------------------------------------
// Jobs and the registry of a module's env kernels.

struct CollectJob;
using CollectFn = void (*)(CollectJob&, bool);

// What fastpg needs to know of one env kernel, and its collect.
struct EnvEntry {
  std::string name;
  int64_t state_dim, obs_dim, num_actions, action_dim;
  CollectFn collect;
  std::function<pybind11::tuple(torch::Tensor, torch::Tensor, torch::Tensor)> step;  // tests: one step
  std::function<torch::Tensor(at::Generator, int64_t, int64_t, c10::ScalarType)> reset;
};

// One member's collect, its arguments checked (collect and collect_many build them the same way).
struct CollectJob {
  Mlp mlp;
  const EnvEntry* env;
  std::optional<Gaussian> gauss;
  at::Generator policy_gen, env_gen;
  torch::Tensor state, final_state, elapsed, obs, action, reward, done, terminated, valid, ep_return, ep_length,
      carry_obs, carry_return, carry_length;
  int64_t max_steps;
  bool select;
  Shard shard;
};

template <template <typename> class Env>
void run_collect(CollectJob& j, bool main_thread) {
  const int64_t T_ = j.obs.size(0), N = j.obs.size(1);
  const Storage st{j.obs.data_ptr<float>(),       j.action.data_ptr(),           j.reward.data_ptr<float>(),
                   j.done.data_ptr<bool>(),       j.terminated.data_ptr<bool>(), j.valid.data_ptr<bool>(),
                   j.ep_return.data_ptr<float>(), j.ep_length.data_ptr<int64_t>()};
  const Gaussian* gauss = j.gauss ? &*j.gauss : nullptr;
  AT_DISPATCH_FLOATING_TYPES(j.state.scalar_type(), "collect", [&] {
    collect_impl<Env, scalar_t>(j.mlp, gauss, j.policy_gen, j.state.data_ptr<scalar_t>(),
                                j.final_state.data_ptr<scalar_t>(), j.elapsed.data_ptr<int64_t>(), j.env_gen,
                                j.max_steps, j.select, st, T_, N, j.carry_obs.data_ptr<float>(),
                                j.carry_return.data_ptr<float>(), j.carry_length.data_ptr<int64_t>(), j.shard,
                                main_thread);
  });
}

// One step of N copies of an env kernel from state [D, N] (its dtype) with actions (int64 [N] or
// float32 [N, k]) and elapsed [N]: (next state [D, N], reward [N] of the state's dtype,
// terminated [N]). For tests: the env kernel against gymnasium and the torch env.
template <template <typename> class Env>
pybind11::tuple step_once(torch::Tensor state, torch::Tensor action, torch::Tensor elapsed) {
  c10::InferenceMode guard;
  TORCH_CHECK(state.dim() == 2 && state.size(0) == Env<float>::kStateDim, "env_step: state must be [D, N]");
  const int64_t N = state.size(1);
  auto s_all = state.contiguous();
  auto el = elapsed.to(torch::kInt64).contiguous();
  auto next = torch::empty_like(s_all);
  auto reward = torch::empty({N}, s_all.options());
  auto term = torch::empty({N}, torch::kBool);
  AT_DISPATCH_FLOATING_TYPES(s_all.scalar_type(), "env_step", [&] {
    using E = Env<scalar_t>;
    constexpr int D = E::kStateDim;
    const scalar_t* sp = s_all.data_ptr<scalar_t>();
    scalar_t* np = next.data_ptr<scalar_t>();
    torch::Tensor a_t = E::kNumActions == 0 ? action.to(torch::kFloat32).contiguous() : action.to(torch::kInt64).contiguous();
    for (int64_t n = 0; n < N; ++n) {
      scalar_t s[D], v[D], r;
      for (int k = 0; k < D; ++k) s[k] = sp[k * N + n];
      bool t;
      if constexpr (E::kNumActions == 0) {
        t = E::step(s, a_t.data_ptr<float>() + n * E::kActionDim, el.data_ptr<int64_t>()[n], v, r);
      } else {
        t = E::step(s, a_t.data_ptr<int64_t>()[n], el.data_ptr<int64_t>()[n], v, r);
      }
      for (int k = 0; k < D; ++k) np[k * N + n] = v[k];
      reward.data_ptr<scalar_t>()[n] = r;
      term.data_ptr<bool>()[n] = t;
    }
  });
  return pybind11::make_tuple(next, reward, term);
}

template <template <typename> class Env>
EnvEntry env_entry(const std::string& name) {
  using E = Env<float>;
  static_assert((E::kNumActions > 0) != (E::kActionDim > 0), "an env kernel has Discrete or Box actions");
  return EnvEntry{name,
                  E::kStateDim,
                  E::kObsDim,
                  E::kNumActions,
                  E::kActionDim,
                  &run_collect<Env>,
                  &step_once<Env>,
                  [](at::Generator gen, int64_t draws, int64_t n, c10::ScalarType dtype) {
                    return AT_DISPATCH_FLOATING_TYPES(dtype, "env_reset", [&] {
                      return Env<scalar_t>::reset(gen, draws, n, dtype);
                    });
                  }};
}

using Registry = std::map<std::string, EnvEntry>;

inline CollectJob collect_job(const Registry& envs, const std::string& env, const std::vector<torch::Tensor>& weights,
                              const std::vector<torch::Tensor>& biases, int64_t act, at::Generator policy_gen,
                              torch::Tensor state, torch::Tensor final_state, torch::Tensor elapsed,
                              at::Generator env_gen, int64_t max_steps, bool select, torch::Tensor obs,
                              torch::Tensor action, torch::Tensor reward, torch::Tensor done, torch::Tensor terminated,
                              torch::Tensor valid, torch::Tensor ep_return, torch::Tensor ep_length,
                              torch::Tensor carry_obs, torch::Tensor carry_return, torch::Tensor carry_length,
                              int64_t shard_lo, int64_t shard_total, const pybind11::object& counts_before,
                              const pybind11::object& gaussian) {
  const auto found = envs.find(env);
  TORCH_CHECK(found != envs.end(), "collect: this module has no env kernel named ", env);
  const EnvEntry* e = &found->second;
  Mlp mlp(weights, biases, act);
  const int64_t N = obs.size(1), D = e->state_dim, O = e->obs_dim;
  const bool box = e->num_actions == 0;
  const int64_t out = box ? e->action_dim : e->num_actions;
  TORCH_CHECK(mlp.obs_dim() == O && mlp.num_actions() == out, "collect: the MLP must map ", O, " -> ", out,
              " for env ", env);
  TORCH_CHECK(state.is_contiguous() && state.size(0) == D && state.size(1) == N, "state must be [", D, ", N]");
  TORCH_CHECK(obs.dim() == 3 && obs.size(2) == O, "obs must be [T, N, ", O, "]");
  TORCH_CHECK(box ? (action.scalar_type() == torch::kFloat32 && action.dim() == 3 && action.size(2) == out)
                  : (action.scalar_type() == torch::kInt64 && action.dim() == 2),
              "collect: actions must be int64 [T, N] (Discrete) or float32 [T, N, k] (Box)");
  TORCH_CHECK(box != gaussian.is_none(), "collect: Box actions need the Gaussian (std, low, high), Discrete none");
  for (const auto& x : {obs, action, reward, done, terminated, valid, ep_return, ep_length, carry_obs, carry_return,
                        carry_length, final_state, elapsed})
    TORCH_CHECK(x.is_cpu() && x.is_contiguous(), "collect: tensors must be contiguous CPU tensors");
  TORCH_CHECK(shard_lo >= 0 && shard_lo + N <= shard_total, "collect: the shard must lie inside the copies");
  std::optional<Gaussian> gauss;
  if (box) {
    const auto t = gaussian.cast<pybind11::tuple>();
    TORCH_CHECK(t.size() == 3, "collect: the Gaussian is (std, low, high)");
    Gaussian g;
    g.std_keep = t[0].cast<torch::Tensor>().detach().to(torch::kFloat32).contiguous();
    g.low_keep = t[1].cast<torch::Tensor>().to(torch::kFloat32).contiguous();
    g.high_keep = t[2].cast<torch::Tensor>().to(torch::kFloat32).contiguous();
    for (const auto& x : {g.std_keep, g.low_keep, g.high_keep})
      TORCH_CHECK(x.numel() == out, "collect: std, low and high need ", out, " entries");
    g.std = g.std_keep.data_ptr<float>();
    g.low = g.low_keep.data_ptr<float>();
    g.high = g.high_keep.data_ptr<float>();
    g.dim = out;
    gauss = std::move(g);
  }
  Shard shard{shard_lo, shard_total, {}};
  if (!counts_before.is_none())
    shard.counts_before = [counts_before](int64_t k) {
      const auto r = counts_before(k).cast<std::pair<int64_t, int64_t>>();
      return r;
    };
  return CollectJob{std::move(mlp), e,         std::move(gauss), policy_gen,  env_gen,     state,
                    final_state,    elapsed,   obs,              action,      reward,      done,
                    terminated,     valid,     ep_return,        ep_length,   carry_obs,   carry_return,
                    carry_length,   max_steps, select,           std::move(shard)};
}

// collect's arguments, in order, as one tuple (collect_many takes one per member).
inline constexpr size_t kCollectArgs = 26;

inline CollectJob collect_job(const Registry& envs, const pybind11::tuple& t) {
  TORCH_CHECK(t.size() == kCollectArgs, "collect: ", kCollectArgs, " arguments, got ", t.size());
  using T = torch::Tensor;
  return collect_job(envs, t[0].cast<std::string>(), t[1].cast<std::vector<T>>(), t[2].cast<std::vector<T>>(),
                     t[3].cast<int64_t>(), t[4].cast<at::Generator>(), t[5].cast<T>(), t[6].cast<T>(), t[7].cast<T>(),
                     t[8].cast<at::Generator>(), t[9].cast<int64_t>(), t[10].cast<bool>(), t[11].cast<T>(),
                     t[12].cast<T>(), t[13].cast<T>(), t[14].cast<T>(), t[15].cast<T>(), t[16].cast<T>(),
                     t[17].cast<T>(), t[18].cast<T>(), t[19].cast<T>(), t[20].cast<T>(), t[21].cast<T>(),
                     t[22].cast<int64_t>(), t[23].cast<int64_t>(), t[24], t[25]);
}

// Defines, for the env kernels in `entries`: collect(*args) (the fused collect; kCollectArgs
// arguments, fastpg.fused.FusedEpoch.collect_call), collect_many(jobs) (many members in one call),
// env_step(name, state, action, elapsed), env_reset(name, generator, draws, n, float64) and
// env_kernels() (each kernel's name and sizes).
inline void bind_env_kernels(pybind11::module_& m, const std::vector<EnvEntry>& entries) {
  auto envs = std::make_shared<Registry>();
  for (const auto& e : entries) envs->emplace(e.name, e);
  m.def(
      "collect",
      [envs](pybind11::args args) {
        c10::InferenceMode guard;
        auto job = collect_job(*envs, pybind11::tuple(args));
        job.env->collect(job, true);
      },
      "the fused collect loop: T steps of an env kernel and the MLP policy");
  m.def(
      "collect_many",
      [envs](std::vector<pybind11::tuple> jobs) {
        c10::InferenceMode guard;
        std::vector<CollectJob> parsed;
        parsed.reserve(jobs.size());
        for (const auto& t : jobs) {
          TORCH_CHECK(t.size() == kCollectArgs && t[24].is_none(),
                      "collect_many: each job is collect's arguments, not of a data-parallel shard");
          parsed.push_back(collect_job(*envs, t));
        }
        run_jobs(static_cast<int64_t>(parsed.size()),
                 [&](int64_t j, bool main_thread) { parsed[j].env->collect(parsed[j], main_thread); });
      },
      "collect for many independent jobs (a population) in one call");
  m.def(
      "env_step",
      [envs](const std::string& name, torch::Tensor state, torch::Tensor action, torch::Tensor elapsed) {
        const auto found = envs->find(name);
        TORCH_CHECK(found != envs->end(), "env_step: no env kernel named ", name);
        return found->second.step(state, action, elapsed);
      },
      "one step of N copies of an env kernel (tests)");
  m.def(
      "env_reset",
      [envs](const std::string& name, at::Generator gen, int64_t draws, int64_t n, bool float64) {
        const auto found = envs->find(name);
        TORCH_CHECK(found != envs->end(), "env_reset: no env kernel named ", name);
        c10::InferenceMode guard;
        return found->second.reset(gen, draws, n, float64 ? torch::kFloat64 : torch::kFloat32);
      },
      "an env kernel's reset draws, [draws, D, n] of float64 or float32 (tests)");
  m.def(
      "env_kernels",
      [envs]() {
        pybind11::dict out;
        for (const auto& [name, e] : *envs)
          out[pybind11::str(name)] = pybind11::make_tuple(e.state_dim, e.obs_dim, e.num_actions, e.action_dim);
        return out;
      },
      "name -> (state_dim, obs_dim, num_actions, action_dim) of this module's env kernels");
}

}  // namespace fastpg

// The module of one user env kernel: FASTPG_ENV_MODULE(MyEnv, "my_env") in a source that includes
// this header and the env's (fastpg.kernel_env builds it).
#define FASTPG_ENV_MODULE(STRUCT, NAME) \
  PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { fastpg::bind_env_kernels(m, {fastpg::env_entry<STRUCT>(NAME)}); }
