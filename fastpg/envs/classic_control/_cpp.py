"""Fused C++ step for native CartPole on CPU (opt-in: ``make_env(..., kernel="cpp")``,
``--env-kernel cpp``).

Why: at small N the torch step is bound by per-op dispatch (about 35 ops of 3-5 us each, so some
150 us per step at N = 256 whatever the arithmetic costs); one fused loop does the whole step,
reset selection included, in one call. The kernel performs gymnasium's operations in gymnasium's
order with the C library's ``cos``/``sin`` (the ones numpy uses), compiled without floating-point
contraction, so in float64 its trajectories are bit-identical to gymnasium's (tests/test_native_envs.py
checks 2,500-step trajectories for equality). The torch implementation agrees with both to 1e-10
but not bit for bit: torch's vectorized cos/sin differ from the C library's in the last bit for
about 0.15% of inputs. Resets draw from the env's generator exactly as the torch path does.

The kernel is compiled on first use with ``torch.utils.cpp_extension.load_inline`` (a C++
compiler and ninja are needed; about a minute on 2 cores) and cached by torch under
``~/.cache/torch_extensions`` (``TORCH_EXTENSIONS_DIR``), so later processes load it in well
under a second. While building, the Python environment's ``bin`` directory is put on ``PATH`` so
that the ``ninja`` installed with the test extra is found; ``PATH`` is restored afterwards.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading

from fastpg.errors import KernelBuildError

__all__ = ["cartpole_kernel", "KernelBuildError"]

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>

// gymnasium CartPoleEnv.step, operation for operation. State is [4, N] row-major (feature-major).
template <typename T>
static void cartpole(const T* s, T* fin, T* nxt, const T* fresh, const int64_t* action,
                     int64_t* elapsed, bool* done, bool* term, int64_t N, int64_t max_steps) {
  const T gravity = 9.8, masspole = 0.1, length = 0.5, force_mag = 10.0, tau = 0.02;
  const T total_mass = T(0.1 + 1.0);
  const T polemass_length = T(0.1 * 0.5);
  const T theta_threshold = T(12 * 2 * M_PI / 360), x_threshold = T(2.4), four_thirds = T(4.0 / 3.0);
  at::parallel_for(0, N, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T x = s[n], x_dot = s[N + n], theta = s[2 * N + n], theta_dot = s[3 * N + n];
      const T force = action[n] == 1 ? force_mag : -force_mag;
      const T costheta = std::cos(theta), sintheta = std::sin(theta);
      const T temp = (force + polemass_length * (theta_dot * theta_dot) * sintheta) / total_mass;
      const T thetaacc = (gravity * sintheta - costheta * temp) /
                         (length * (four_thirds - masspole * (costheta * costheta) / total_mass));
      const T xacc = temp - polemass_length * thetaacc * costheta / total_mass;
      const T v[4] = {x + tau * x_dot, x_dot + tau * xacc, theta + tau * theta_dot, theta_dot + tau * thetaacc};
      const bool t = v[0] < -x_threshold || v[0] > x_threshold || v[2] < -theta_threshold || v[2] > theta_threshold;
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
void cartpole_step(torch::Tensor s, torch::Tensor fin, torch::Tensor nxt, torch::Tensor fresh,
                   torch::Tensor action, torch::Tensor elapsed, torch::Tensor done, torch::Tensor term,
                   int64_t max_steps) {
  TORCH_CHECK(s.is_cpu() && s.is_contiguous() && s.dim() == 2 && s.size(0) == 4,
              "state must be a contiguous CPU [4, N] tensor");
  TORCH_CHECK(action.scalar_type() == torch::kInt64 && action.is_contiguous() && action.numel() == s.size(1),
              "action must be a contiguous int64 [N] tensor");
  const bool select = nxt.defined() && nxt.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES(s.scalar_type(), "cartpole_step", [&] {
    cartpole<scalar_t>(s.data_ptr<scalar_t>(), fin.data_ptr<scalar_t>(),
                       select ? nxt.data_ptr<scalar_t>() : nullptr, select ? fresh.data_ptr<scalar_t>() : nullptr,
                       action.data_ptr<int64_t>(), elapsed.data_ptr<int64_t>(), done.data_ptr<bool>(),
                       term.data_ptr<bool>(), s.size(1), max_steps);
  });
}
"""

_lock = threading.Lock()
_module = None


def cartpole_kernel():
    """The compiled module (``cartpole_step``); built on the first call in a process."""
    global _module
    with _lock:
        if _module is None:
            _module = _build()
    return _module


def _build():
    from torch.utils.cpp_extension import load_inline

    old_path = os.environ.get("PATH", "")
    bin_dir = os.path.dirname(sys.executable)
    try:
        if shutil.which("ninja") is None and os.path.exists(os.path.join(bin_dir, "ninja")):
            os.environ["PATH"] = bin_dir + os.pathsep + old_path
        return load_inline(
            name="fastpg_cartpole_step",
            cpp_sources=_SOURCE,
            functions=["cartpole_step"],
            extra_cflags=["-O2", "-ffp-contract=off", "-fno-fast-math"],
            verbose=False,
        )
    except Exception as e:  # compiler, ninja or headers missing: say what to do
        raise KernelBuildError(
            f"could not build the fused C++ CartPole kernel ({type(e).__name__}: {e}); it needs a C++ "
            "compiler and ninja (pip install ninja). Use the torch kernel instead (--env-kernel torch)."
        ) from e
    finally:
        os.environ["PATH"] = old_path
