// The packed skip-gram loss as one MXNet operator, loaded at run time (mx.library.load).
//
//   sgns_packed_loss(v, u, example, label, weight) -> loss (1,)
//     v (B, D) float32   the batch's center rows (Embedding of the centers)
//     u (N, D) float32   each slot's context or noise row (Embedding of the packed ids)
//     example (N) int32  the row of v that slot s dots with
//     label, weight (N) float32
//   loss = sum_s weight[s] * bce_with_logits(v[example[s]] . u[s], label[s])
//
// Why: MXNet 1.9.1 has no fused per-row dot. Built from its operators (take, elemwise_mul, a
// GEMV with a ones vector, the BCE's element-wise ops, and their backwards) the packed loss
// runs eight operators over (N, D) arrays; this makes one pass forward and one backward, and
// leaves the gathers, the scatters into the tables (dense or row_sparse) and Adam to MXNet.
// The gradient of the three data inputs is zero; they are written only where MXNet asks.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include "lib_api.h"

#ifdef _OPENMP
#include <omp.h>
static int max_threads() { return omp_get_max_threads(); }
static int thread_id() { return omp_get_thread_num(); }
#else
static int max_threads() { return 1; }
static int thread_id() { return 0; }
#endif

using namespace mxnet::ext;
using Attrs = std::unordered_map<std::string, std::string>;

namespace {

inline float row_dot(const float* a, const float* b, int64_t d) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int64_t k = 0; k < d; ++k) acc += a[k] * b[k];
  return acc;
}

// log(1 + exp(-|x|)) + max(x, 0) - x * y: BCE with logits, stable for either sign of x.
inline double bce(float x, float y) {
  double xd = x;
  return std::log1p(std::exp(-std::fabs(xd))) + (xd > 0 ? xd : 0.0) - xd * y;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

MXReturnValue parse_attrs(const Attrs&, int* num_in, int* num_out) {
  *num_in = 5;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  const int want[5] = {kFloat32, kFloat32, kInt32, kFloat32, kFloat32};
  for (int i = 0; i < 5; ++i) {
    if ((*in)[i] != want[i]) {
      MX_ERROR_MSG << "sgns_packed_loss: input " << i << " has the wrong dtype";
      return MX_FAIL;
    }
  }
  (*out)[0] = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs&, std::vector<std::vector<unsigned int>>* in,
                          std::vector<std::vector<unsigned int>>* out) {
  const auto& s = *in;
  if (s[0].size() != 2 || s[1].size() != 2 || s[0][1] != s[1][1] || s[2].size() != 1 ||
      s[2][0] != s[1][0] || s[3] != s[2] || s[4] != s[2]) {
    MX_ERROR_MSG << "sgns_packed_loss: expected v (B, D), u (N, D), example, label, weight (N)";
    return MX_FAIL;
  }
  (*out)[0] = {1};
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs&, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                      const OpResource&) {
  auto& in = *inputs;
  const float* v = in[0].data<float>();
  const float* u = in[1].data<float>();
  const int32_t* example = in[2].data<int32_t>();
  const float* label = in[3].data<float>();
  const float* weight = in[4].data<float>();
  const int64_t n = in[1].shape[0], d = in[1].shape[1];
  double loss = 0.0;
#pragma omp parallel for reduction(+ : loss) schedule(static)
  for (int64_t s = 0; s < n; ++s) {
    if (weight[s] == 0.0f) continue;  // padding: no loss, no gradient
    loss += weight[s] * bce(row_dot(v + int64_t(example[s]) * d, u + s * d, d), label[s]);
  }
  (*outputs)[0].data<float>()[0] = static_cast<float>(loss);
  return MX_SUCCESS;
}

// inputs: d(loss), v, u, example, label, weight, loss; outputs: dv, du, d(example, label, weight).
MXReturnValue backward(const Attrs&, std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                       const OpResource& res) {
  auto& in = *inputs;
  auto& out = *outputs;
  const float scale = in[0].data<float>()[0];
  const float* v = in[1].data<float>();
  const float* u = in[2].data<float>();
  const int32_t* example = in[3].data<int32_t>();
  const float* label = in[4].data<float>();
  const float* weight = in[5].data<float>();
  const int64_t b = in[1].shape[0], n = in[2].shape[0], d = in[2].shape[1];
  float* dv = out[0].data<float>();
  float* du = out[1].data<float>();
  std::memset(dv, 0, sizeof(float) * b * d);
  // Slots come grouped by example (common/packing.py), so each thread's contiguous range of
  // slots adds into a few rows of dv; a thread's first and last rows may be shared with its
  // neighbours, so every thread sums into a private dv, and the copies are added in thread
  // order afterwards: deterministic, whatever the ranges.
  const int threads = max_threads();
  float* priv = static_cast<float*>(res.alloc_cpu(static_cast<int>(sizeof(float) * b * d * threads)));
  std::memset(priv, 0, sizeof(float) * b * d * threads);
#pragma omp parallel num_threads(threads)
  {
    const int t = thread_id();
    float* mine = priv + int64_t(t) * b * d;
#pragma omp for schedule(static)
    for (int64_t s = 0; s < n; ++s) {
      float* dus = du + s * d;
      if (weight[s] == 0.0f) {
        std::memset(dus, 0, sizeof(float) * d);
        continue;
      }
      const float* vs = v + int64_t(example[s]) * d;
      const float* us = u + s * d;
      const float g = scale * weight[s] * (sigmoid(row_dot(vs, us, d)) - label[s]);
      float* dvs = mine + int64_t(example[s]) * d;
#pragma omp simd
      for (int64_t k = 0; k < d; ++k) {
        dus[k] = g * vs[k];
        dvs[k] += g * us[k];
      }
    }
  }
  for (int t = 0; t < threads; ++t) {
    const float* part = priv + int64_t(t) * b * d;
    for (int64_t k = 0; k < b * d; ++k) dv[k] += part[k];
  }
  for (int i = 2; i < 5; ++i) {  // the data inputs' gradients, where MXNet allocated them
    if (out[i].data_ptr != nullptr) std::memset(out[i].data_ptr, 0, out[i].size() * 4  /* int32 or float32 */);
  }
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(sgns_packed_loss)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

MXReturnValue initialize(int version) {
  return version >= 10900 ? MX_SUCCESS : MX_FAIL;
}
