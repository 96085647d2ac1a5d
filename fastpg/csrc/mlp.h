// The MLP policy's arithmetic and sampling, shared by the fused collect (collect.h) and the
// update (kernels.cpp): 16-lane float vectors, one input per lane.
#pragma once
#include <torch/extension.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace fastpg {

// ---------------------------------------------------------------------------------------------
// Random draws

// Fill buf with uniforms in [from, to) by torch's own CPU uniform_ kernel: the values the torch-op
// path draws, bit for bit (the kernel fills a contiguous tensor serially, so one [T, n] draw gives
// the values of T draws of [n] in turn).
inline void fill_uniform(torch::Tensor& buf, double from, double to, at::Generator& gen) {
  TORCH_CHECK(buf.is_contiguous(), "uniform buffers must be contiguous");
  buf.uniform_(from, to, gen);
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
// Outputs per pass of the forward's inner loop: 4 x 4 partial sums fill 16 of AVX-512's 32
// registers; with 16 (AVX2: a vec16 is two of them) one output at a time.
#if defined(__AVX512F__)
static constexpr int kOutBlock = 4;
#else
static constexpr int kOutBlock = 1;
#endif
typedef float vec16 __attribute__((vector_size(kLanes * sizeof(float))));

inline vec16 vload(const float* p) {
  vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void vstore(float* p, vec16 v) { std::memcpy(p, &v, sizeof(v)); }

inline vec16 splat(float x) { return vec16{} + x; }

typedef int32_t ivec16 __attribute__((vector_size(kLanes * sizeof(int32_t))));

// exp(x), Cephes' polynomial (relative error ~1e-7), branch-free: the exponent is rounded by adding
// and subtracting 1.5 * 2^23, and 2^k is built from its bits (AVX-512: by scalef, and the clamp by
// min and max: the same numbers, NaN passed through, in 15 instructions instead of 21; the
// activation pass of a 64-wide tanh layer ~10% faster).
MLP_MATH inline vec16 vexp(vec16 x) {
#if defined(__AVX512F__)
  const __m512 clamped =
      _mm512_min_ps(_mm512_set1_ps(88.3f), _mm512_max_ps(_mm512_set1_ps(-87.3f), __builtin_bit_cast(__m512, x)));
  x = __builtin_bit_cast(vec16, clamped);  // max/min return their second operand where it is NaN
#else
  x = x < -87.3f ? splat(-87.3f) : (x > 88.3f ? splat(88.3f) : x);
#endif
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
#if defined(__AVX512F__)
  return __builtin_bit_cast(vec16, _mm512_scalef_ps(__builtin_bit_cast(__m512, p), __builtin_bit_cast(__m512, fx)));
#else
  const ivec16 e = __builtin_convertvector(fx, ivec16) + 127;
  return p * __builtin_bit_cast(vec16, e << 23);
#endif
}

// log(x) for positive normal x, Cephes' polynomial (relative error ~1e-7): x = m 2^e with m in
// [sqrt(1/2), sqrt(2)), log x = log m + e log 2.
MLP_MATH inline vec16 vlog(vec16 x) {
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
MLP_MATH inline vec16 vtanh(vec16 x) { return 1.0f - 2.0f / (vexp(2.0f * x) + 1.0f); }

// The 16 lanes' sum, pairwise.
inline float hsum(vec16 v) {
  float lanes[kLanes];
  vstore(lanes, v);
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
  return lanes[0];
}

MLP_MATH inline vec16 activate(int64_t act, vec16 y) {
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
  // layer's into logits. Four partial sums per output break the chain of dependent FMAs; outputs
  // are computed kOutBlock at a time so that each input vector loaded serves all of them (the
  // sums of each output are the same, in the same order, as one output at a time).
  MLP_MATH void forward(const vec16* x, vec16* h, vec16* logits) const {
    const vec16* cur = x;
    for (size_t l = 0; l < layers(); ++l) {
      const bool last = l + 1 == layers();
      vec16* y = last ? logits : h + l * widest;
      int64_t j = 0;
      for (; j + kOutBlock <= out[l]; j += kOutBlock) outputs<kOutBlock>(l, j, cur, y);
      for (; j < out[l]; ++j) outputs<1>(l, j, cur, y);
      if (!last)
        for (j = 0; j < out[l]; ++j) y[j] = activate(act, y[j]);
      cur = y;
    }
  }

 private:
  // Outputs [j0, j0 + R) of layer l from its input vectors cur into y, before the activation.
  template <int R>
  MLP_MATH __attribute__((always_inline)) inline void outputs(size_t l, int64_t j0, const vec16* cur,
                                                              vec16* y) const {
    const int64_t n_in = in[l];
    const float* wl = w[l] + j0 * n_in;
    vec16 a[R][4];
    for (int r = 0; r < R; ++r) a[r][0] = splat(b[l][j0 + r]), a[r][1] = a[r][2] = a[r][3] = vec16{};
    int64_t k = 0;
    for (; k + 4 <= n_in; k += 4) {
      const vec16 c0 = cur[k], c1 = cur[k + 1], c2 = cur[k + 2], c3 = cur[k + 3];
      for (int r = 0; r < R; ++r) {
        const float* wj = wl + r * n_in + k;
        a[r][0] += wj[0] * c0;
        a[r][1] += wj[1] * c1;
        a[r][2] += wj[2] * c2;
        a[r][3] += wj[3] * c3;
      }
    }
    for (; k < n_in; ++k)
      for (int r = 0; r < R; ++r) a[r][0] += wl[r * n_in + k] * cur[k];
    for (int r = 0; r < R; ++r) y[j0 + r] = (a[r][0] + a[r][1]) + (a[r][2] + a[r][3]);
  }
};

// Gather rows [count, dim] (row-major, count <= 16) into dim lane vectors; missing lanes are 0.
inline void gather_lanes(const float* rows, int64_t count, int64_t dim, vec16* x) {
  for (int64_t k = 0; k < dim; ++k) {
    float v[kLanes] = {};
    for (int64_t l = 0; l < count; ++l) v[l] = rows[l * dim + k];
    x[k] = vload(v);
  }
}

// Uniforms per sampled action: one for two actions (a logistic comparison), else one per action
// (Gumbel-max), as fastpg.policy._gumbel_argmax draws them.
inline int64_t draws_per_action(int64_t A) { return A == 2 ? 1 : A; }

// Sample an action for each of the count lanes from logits [A] (u: the block's uniforms, per per
// lane). Two actions: a = 1 iff z1 - z0 > logit(v), tested as exp(z1 - z0) (1 - v) > v (the same
// comparison without a log; ties within the functions' last bits may differ). More: Gumbel-max.
MLP_MATH inline void sample(const vec16* logits, int64_t A, const float* u, int64_t count, int64_t* actions) {
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
inline void act_block(const Mlp& mlp, const float* obs, int64_t count, const float* u, vec16* scratch,
                      int64_t* actions) {
  vec16* x = scratch;
  vec16* h = x + mlp.obs_dim();
  vec16* logits = h + mlp.scratch();
  gather_lanes(obs, count, mlp.obs_dim(), x);
  mlp.forward(x, h, logits);
  sample(logits, mlp.num_actions(), u, count, actions);
}

inline int64_t act_scratch(const Mlp& mlp) { return mlp.obs_dim() + mlp.scratch() + mlp.num_actions(); }

}  // namespace fastpg
