// natten_mlx._core._natten_ext: MLX primitives over the natten C API.
//
// Each C operation (include/natten.h) becomes one mlx::core::Primitive whose
// eval_cpu allocates the outputs and hands a task to MLX's CPU stream.  The
// task builds natten_tensor views straight from the MLX buffers (data pointer
// with the array's byte offset, element strides from array.strides()), so
// transposed or sliced inputs are read in place, and calls the C library.
//
// Everything that does not depend on array *contents* (ranks, shapes, dtypes,
// the descriptor rules) is checked when the graph is built, so those errors
// are raised at call time.  Data-dependent failures (varlen extents, a kernel
// that reports UNSUPPORTED) are thrown inside the task; MLX stores the
// exception and rethrows it from mx.eval.
//
// The forward primitives are differentiable: their vjp builds the matching
// backward primitive (the backward ones are not differentiable again).
#include <array>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

#include "natten.h"
#include "output_pool.h"
extern "C" {
#include "core/problem.h"  // natten_shape_of (internal: no re-validation)
}

namespace nb = nanobind;
namespace mx = mlx::core;

namespace {

enum class Op { NaForward, NaBackward, QkForward, QkBackward, AvForward, AvBackward };

const char* op_name(Op op) {
  switch (op) {
    case Op::NaForward: return "NattenNaForward";
    case Op::NaBackward: return "NattenNaBackward";
    case Op::QkForward: return "NattenQkForward";
    case Op::QkBackward: return "NattenQkBackward";
    case Op::AvForward: return "NattenAvForward";
    case Op::AvBackward: return "NattenAvBackward";
  }
  return "Natten?";
}

const char* c_name(Op op) {
  switch (op) {
    case Op::NaForward: return "natten_na_forward";
    case Op::NaBackward: return "natten_na_backward";
    case Op::QkForward: return "natten_qk_forward";
    case Op::QkBackward: return "natten_qk_backward";
    case Op::AvForward: return "natten_av_forward";
    case Op::AvBackward: return "natten_av_backward";
  }
  return "natten_?";
}

// Everything a primitive needs besides its inputs.
struct Config {
  int rank = 1;
  std::array<int64_t, 3> kernel{1, 1, 1};
  std::array<int64_t, 3> dilation{1, 1, 1};
  std::array<int64_t, 3> out_stride{1, 1, 1};
  std::array<int64_t, 3> gna_stride{1, 1, 1};
  std::array<int, 3> causal{0, 0, 0};
  double scale = NAN;
  int impl = NATTEN_IMPL_AUTO;
  bool has_rpb = false;    // rpb input (forward) / drpb output (backward)
  bool has_extra = false;  // extra_k, extra_v inputs (and their grads)
  bool has_varlen = false; // int32 [B, rank] input

  bool operator==(const Config& o) const {
    // scale compared bitwise so that NaN == NaN
    return rank == o.rank && kernel == o.kernel && dilation == o.dilation &&
           out_stride == o.out_stride && gna_stride == o.gna_stride && causal == o.causal &&
           std::memcmp(&scale, &o.scale, sizeof(double)) == 0 && impl == o.impl &&
           has_rpb == o.has_rpb && has_extra == o.has_extra && has_varlen == o.has_varlen;
  }
};

// Positions of the inputs of each op.  Required inputs come first, then the
// optional ones in the fixed order rpb, extra_k, extra_v, varlen.
struct Slots {
  int q = -1, k = -1, v = -1, attn = -1, out = -1, lse = -1, dout = -1, dlogits = -1;
  int rpb = -1, extra_k = -1, extra_v = -1, varlen = -1;
  int n = 0;
};

Slots slots_of(Op op, const Config& c) {
  Slots s;
  int i = 0;
  switch (op) {
    case Op::NaForward: s.q = i++; s.k = i++; s.v = i++; break;
    case Op::NaBackward:
      s.q = i++; s.k = i++; s.v = i++; s.out = i++; s.lse = i++; s.dout = i++;
      break;
    case Op::QkForward: s.q = i++; s.k = i++; break;
    case Op::QkBackward: s.q = i++; s.k = i++; s.dlogits = i++; break;
    case Op::AvForward: s.attn = i++; s.v = i++; break;
    case Op::AvBackward: s.attn = i++; s.v = i++; s.dout = i++; break;
  }
  bool fused = op == Op::NaForward || op == Op::NaBackward;
  if (c.has_rpb && op != Op::QkBackward && op != Op::AvForward && op != Op::AvBackward)
    s.rpb = i++;
  if (c.has_extra && fused) {
    s.extra_k = i++;
    s.extra_v = i++;
  }
  if (c.has_varlen) s.varlen = i++;
  s.n = i;
  return s;
}

std::string shape_str(const int64_t* s, int n) {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < n; ++i) os << (i ? ", " : "") << s[i];
  if (n == 1) os << ",";
  os << ")";
  return os.str();
}

std::string shape_str(const mx::Shape& s) {
  std::vector<int64_t> v(s.begin(), s.end());
  return shape_str(v.data(), (int)v.size());
}

[[noreturn]] void fail_status(Op op, natten_status st) {
  std::string msg = std::string(c_name(op)) + " failed (" + natten_status_string(st) + "): " +
                    natten_last_error_message();
  if (st == NATTEN_STATUS_UNSUPPORTED || st == NATTEN_STATUS_INTERNAL ||
      st == NATTEN_STATUS_OUT_OF_MEMORY)
    throw std::runtime_error(msg);
  throw std::invalid_argument(msg);
}

natten_dtype to_natten(mx::Dtype t, const char* what) {
  if (t == mx::float32) return NATTEN_DTYPE_F32;
  if (t == mx::float16) return NATTEN_DTYPE_F16;
  if (t == mx::bfloat16) return NATTEN_DTYPE_BF16;
  if (t == mx::float64) return NATTEN_DTYPE_F64;
  std::ostringstream os;
  os << "natten: " << what << " has dtype " << t
     << "; expected float32, float16, bfloat16 or float64";
  throw std::invalid_argument(os.str());
}

// The descriptor of a problem, derived from the input shapes only.
natten_problem make_problem(Op op, const Config& c, const std::vector<mx::array>& in) {
  Slots s = slots_of(op, c);
  if ((int)in.size() != s.n) {
    throw std::invalid_argument(std::string(op_name(op)) + ": expected " + std::to_string(s.n) +
                                " inputs, got " + std::to_string(in.size()));
  }
  natten_problem p;
  natten_status st = natten_problem_init(&p, c.rank);
  if (st != NATTEN_STATUS_SUCCESS) fail_status(op, st);
  const int nd = c.rank + 3;
  // Arrays that fix the sizes: the "primary" (q or attn) and the value/key.
  const mx::array& prim = in[s.q >= 0 ? s.q : s.attn];
  const mx::array& kv = in[s.k >= 0 ? s.k : s.v];
  auto need_ndim = [&](const mx::array& a, const char* what) {
    if ((int)a.ndim() != nd) {
      std::ostringstream os;
      os << "natten: " << what << " must have " << nd << " dimensions for a rank-" << c.rank
         << " problem ([B, spatial..., heads, channels]), got shape " << shape_str(a.shape());
      throw std::invalid_argument(os.str());
    }
  };
  need_ndim(prim, s.q >= 0 ? "q" : "attn");
  need_ndim(kv, s.k >= 0 ? "k" : "v");
  p.batch = prim.shape(0);
  p.heads = prim.shape(nd - 2);
  p.kv_heads = kv.shape(nd - 2);
  for (int a = 0; a < c.rank; ++a) {
    p.extent[a] = kv.shape(1 + a);
    p.kernel[a] = c.kernel[a];
    p.dilation[a] = c.dilation[a];
    p.out_stride[a] = c.out_stride[a];
    p.gna_stride[a] = c.gna_stride[a];
    p.causal[a] = c.causal[a];
  }
  if (s.q >= 0) {
    p.head_dim = prim.shape(nd - 1);
    if (s.v >= 0) {
      need_ndim(in[s.v], "v");
      p.head_dim_v = in[s.v].shape(nd - 1);
    } else {
      p.head_dim_v = p.head_dim;
    }
  } else {  // AV: there is no q/k; D is irrelevant, use Dv
    p.head_dim_v = kv.shape(nd - 1);
    p.head_dim = p.head_dim_v;
  }
  p.scale = c.scale;
  p.dtype = to_natten(prim.dtype(), s.q >= 0 ? "q" : "attn");
  p.impl = (natten_impl)c.impl;
  if (s.extra_k >= 0) {
    const mx::array& ek = in[s.extra_k];
    if (ek.ndim() != 4) {
      throw std::invalid_argument("natten: extra_k must have 4 dimensions [B, N, H_kv, D], got shape " +
                                  shape_str(ek.shape()));
    }
    p.num_extra_kv = ek.shape(1);
  }
  // varlen_extent stays NULL here; the task points it at the data.
  return p;
}

mx::Dtype lse_dtype(const natten_problem& p) {
  return p.dtype == NATTEN_DTYPE_F64 ? mx::float64 : mx::float32;
}

// Shape of a kind of a problem that natten_problem_validate accepted.  The
// internal natten_shape_of, not natten_tensor_shape: that one re-validates the
// whole problem on each call (~150 ns), and a backward asks for nine shapes.
mx::Shape shape_of_kind(const natten_problem& p, natten_tensor_kind kind) {
  int64_t shape[NATTEN_MAX_DIMS];
  const int ndim = natten_shape_of(&p, kind, shape);
  mx::Shape out;
  for (int i = 0; i < ndim; ++i) {
    if (shape[i] > INT32_MAX) {
      throw std::invalid_argument("natten: an output dimension exceeds MLX's int32 shape limit");
    }
    out.push_back((int32_t)shape[i]);
  }
  return out;
}

void check_input(const natten_problem& p, const mx::array& a, natten_tensor_kind kind,
                 const char* what, mx::Dtype want) {
  mx::Shape expect = shape_of_kind(p, kind);
  if (a.shape() != expect) {
    throw std::invalid_argument(std::string("natten: ") + what + " has shape " +
                                shape_str(a.shape()) + ", expected " + shape_str(expect));
  }
  if (a.dtype() != want) {
    std::ostringstream os;
    os << "natten: " << what << " has dtype " << a.dtype() << ", expected " << want
       << " (all tensors of a problem share one dtype)";
    throw std::invalid_argument(os.str());
  }
}

struct OutSpec {
  std::vector<mx::Shape> shapes;
  std::vector<mx::Dtype> dtypes;
};

// Full build-time check of a problem and its inputs; returns the outputs.
OutSpec check_and_outputs(Op op, const Config& c, const std::vector<mx::array>& in,
                          natten_problem* p_out = nullptr) {
  Slots s = slots_of(op, c);
  natten_problem p = make_problem(op, c, in);
  natten_status st = natten_problem_validate(&p);
  if (st != NATTEN_STATUS_SUCCESS) fail_status(op, st);
  mx::Dtype dt = in[s.q >= 0 ? s.q : s.attn].dtype();
  if (s.q >= 0) check_input(p, in[s.q], NATTEN_TENSOR_Q, "q", dt);
  if (s.k >= 0) check_input(p, in[s.k], NATTEN_TENSOR_K, "k", dt);
  if (s.v >= 0) check_input(p, in[s.v], NATTEN_TENSOR_V, "v", dt);
  if (s.attn >= 0) check_input(p, in[s.attn], NATTEN_TENSOR_LOGITS, "attn", dt);
  if (s.out >= 0) check_input(p, in[s.out], NATTEN_TENSOR_OUT, "out", dt);
  if (s.lse >= 0) check_input(p, in[s.lse], NATTEN_TENSOR_LSE, "lse", lse_dtype(p));
  if (s.dout >= 0) check_input(p, in[s.dout], NATTEN_TENSOR_OUT, "dout", dt);
  if (s.dlogits >= 0) check_input(p, in[s.dlogits], NATTEN_TENSOR_LOGITS, "dlogits", dt);
  if (s.rpb >= 0) check_input(p, in[s.rpb], NATTEN_TENSOR_RPB, "rpb", dt);
  if (s.extra_k >= 0) check_input(p, in[s.extra_k], NATTEN_TENSOR_EXTRA_K, "extra_k", dt);
  if (s.extra_v >= 0) check_input(p, in[s.extra_v], NATTEN_TENSOR_EXTRA_V, "extra_v", dt);
  if (s.varlen >= 0) {
    const mx::array& vl = in[s.varlen];
    mx::Shape expect{(int32_t)p.batch, (int32_t)c.rank};
    if (vl.shape() != expect || vl.dtype() != mx::int32) {
      std::ostringstream os;
      os << "natten: varlen must be int32 of shape " << shape_str(expect) << ", got "
         << vl.dtype() << " of shape " << shape_str(vl.shape());
      throw std::invalid_argument(os.str());
    }
  }
  OutSpec o;
  auto add = [&](natten_tensor_kind kind, mx::Dtype t) {
    o.shapes.push_back(shape_of_kind(p, kind));
    o.dtypes.push_back(t);
  };
  switch (op) {
    case Op::NaForward:
      add(NATTEN_TENSOR_OUT, dt);
      add(NATTEN_TENSOR_LSE, lse_dtype(p));
      break;
    case Op::NaBackward:
      add(NATTEN_TENSOR_Q, dt);
      add(NATTEN_TENSOR_K, dt);
      add(NATTEN_TENSOR_V, dt);
      if (c.has_rpb) add(NATTEN_TENSOR_RPB, dt);
      if (c.has_extra) {
        add(NATTEN_TENSOR_EXTRA_K, dt);
        add(NATTEN_TENSOR_EXTRA_V, dt);
      }
      break;
    case Op::QkForward: add(NATTEN_TENSOR_LOGITS, dt); break;
    case Op::QkBackward:
      add(NATTEN_TENSOR_Q, dt);
      add(NATTEN_TENSOR_K, dt);
      if (c.has_rpb) add(NATTEN_TENSOR_RPB, dt);
      break;
    case Op::AvForward: add(NATTEN_TENSOR_OUT, dt); break;
    case Op::AvBackward:
      add(NATTEN_TENSOR_LOGITS, dt);
      add(NATTEN_TENSOR_V, dt);
      break;
  }
  if (p_out) *p_out = p;
  return o;
}

// A strided view of an MLX array: its data pointer (byte offset included)
// and its element strides.  No copy.
natten_tensor view_of(const mx::array& a) {
  natten_tensor t;
  std::memset(&t, 0, sizeof(t));
  t.data = const_cast<char*>(a.data<char>());
  const auto& st = a.strides();
  for (size_t i = 0; i < st.size() && i < (size_t)NATTEN_MAX_DIMS; ++i) t.stride[i] = st[i];
  return t;
}

std::vector<mx::array> build(Op op, Config c, std::vector<mx::array> inputs,
                             const mx::StreamOrDevice& s);

class NattenPrimitive : public mx::Primitive {
 public:
  NattenPrimitive(mx::Stream stream, Op op, Config cfg)
      : mx::Primitive(stream), op_(op), cfg_(cfg) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    natten_problem p = make_problem(op_, cfg_, inputs);
    for (auto& o : outputs) natten_ext::OutputPool::get().place(o);

    auto& enc = mx::cpu::get_command_encoder(stream());
    for (const auto& a : inputs) enc.set_input_array(a);
    for (auto& o : outputs) enc.set_output_array(o);

    Slots s = slots_of(op_, cfg_);
    // Views are built here (pointers only); the data is read in the task,
    // after the producers of the inputs have run on this stream.
    auto opt = [&](int slot) {
      Maybe m;
      if (slot >= 0) {
        m.present = true;
        m.t = view_of(inputs[slot]);
      }
      return m;
    };
    Views v;
    v.q = opt(s.q); v.k = opt(s.k); v.v = opt(s.v); v.attn = opt(s.attn);
    v.out = opt(s.out); v.lse = opt(s.lse); v.dout = opt(s.dout); v.dlogits = opt(s.dlogits);
    v.rpb = opt(s.rpb); v.extra_k = opt(s.extra_k); v.extra_v = opt(s.extra_v);
    Maybe varlen = opt(s.varlen);
    std::vector<natten_tensor> outs;
    for (auto& o : outputs) outs.push_back(view_of(o));
    bool zero_size = false;
    for (auto& o : outputs) zero_size = zero_size || o.size() == 0;

    enc.dispatch([op = op_, cfg = cfg_, p, v, varlen, outs, zero_size]() mutable {
      if (zero_size) return;  // rejected at build time; never reached
      // varlen: a small int32 [B, rank] array, gathered through its strides
      // into the dense host array the C descriptor expects.
      std::vector<int32_t> extents;
      if (varlen.present) {
        const int32_t* base = static_cast<const int32_t*>(varlen.t.data);
        extents.resize((size_t)(p.batch * p.rank));
        for (int64_t b = 0; b < p.batch; ++b)
          for (int a = 0; a < p.rank; ++a)
            extents[(size_t)(b * p.rank + a)] =
                base[b * varlen.t.stride[0] + a * varlen.t.stride[1]];
        p.varlen_extent = extents.data();
      }
      run(op, cfg, p, v, outs);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error(std::string(op_name(op_)) +
                             ": the compiled natten tier runs on MLX's CPU device only");
  }

  const char* name() const override { return op_name(op_); }

  // mx.vmap: one primitive per mapped instance (slices of the mapped inputs,
  // unmapped inputs shared), outputs stacked on axis 0.  Folding the mapped
  // axis into the batch would avoid the loop but not a reshape copy of views,
  // and cannot keep per-instance RPB gradients apart.
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>& inputs, const std::vector<int>& axes) override {
    int n = -1;
    for (size_t i = 0; i < inputs.size(); ++i)
      if (axes[i] >= 0) {
        n = inputs[i].shape(axes[i]);
        break;
      }
    if (n < 0) {
      auto outs = build(op_, cfg_, inputs, stream());
      return {outs, std::vector<int>(outs.size(), -1)};
    }
    std::vector<std::vector<mx::array>> per_out;
    for (int j = 0; j < n; ++j) {
      std::vector<mx::array> in;
      for (size_t i = 0; i < inputs.size(); ++i)
        in.push_back(axes[i] >= 0 ? mx::take(inputs[i], j, axes[i], stream()) : inputs[i]);
      auto outs = build(op_, cfg_, std::move(in), stream());
      if (per_out.empty()) per_out.resize(outs.size());
      for (size_t o = 0; o < outs.size(); ++o) per_out[o].push_back(outs[o]);
    }
    std::vector<mx::array> stacked;
    for (auto& v : per_out) stacked.push_back(mx::stack(v, 0, stream()));
    return {stacked, std::vector<int>(stacked.size(), 0)};
  }

  // Gradients of the forward ops are their C backwards, built here rather than
  // through a Python mx.custom_function: that wrapper cost ~7 us of graph
  // building per forward and a Python callback per backward (1-D L=256 calls
  // are ~100 us in all), and added a node per output to every graph.  The
  // cotangent of the fused op's raw lse is ignored: callers only see the lse
  // through compiled._make_lse_grad, whose VJP routes that gradient itself.
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals,
                             const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums,
                             const std::vector<mx::array>& outputs) override {
    Slots s = slots_of(op_, cfg_);
    auto as = [&](const mx::array& a, mx::Dtype t) {
      return a.dtype() == t ? a : mx::astype(a, t, stream());
    };
    std::vector<std::optional<mx::array>> g(primals.size());
    auto add_varlen = [&](std::vector<mx::array>& in) {
      if (s.varlen >= 0) in.push_back(primals[s.varlen]);
    };
    switch (op_) {
      case Op::NaForward: {
        const mx::array& q = primals[s.q];
        std::vector<mx::array> in{q, primals[s.k], primals[s.v], outputs[0], outputs[1],
                                  as(cotangents[0], q.dtype())};
        if (s.rpb >= 0) in.push_back(primals[s.rpb]);
        if (s.extra_k >= 0) {
          in.push_back(primals[s.extra_k]);
          in.push_back(primals[s.extra_v]);
        }
        add_varlen(in);
        auto r = build(Op::NaBackward, cfg_, std::move(in), stream());
        size_t i = 0;
        g[s.q] = r[i++];
        g[s.k] = r[i++];
        g[s.v] = r[i++];
        if (s.rpb >= 0) g[s.rpb] = r[i++];
        if (s.extra_k >= 0) {
          g[s.extra_k] = r[i++];
          g[s.extra_v] = r[i++];
        }
        break;
      }
      case Op::QkForward: {
        const mx::array& q = primals[s.q];
        std::vector<mx::array> in{q, primals[s.k], as(cotangents[0], q.dtype())};
        add_varlen(in);
        auto r = build(Op::QkBackward, cfg_, std::move(in), stream());  // has_rpb: drpb out
        g[s.q] = r[0];
        g[s.k] = r[1];
        if (s.rpb >= 0) g[s.rpb] = r[2];
        break;
      }
      case Op::AvForward: {
        const mx::array& v = primals[s.v];
        std::vector<mx::array> in{primals[s.attn], v, as(cotangents[0], v.dtype())};
        add_varlen(in);
        auto r = build(Op::AvBackward, cfg_, std::move(in), stream());
        g[s.attn] = r[0];
        g[s.v] = r[1];
        break;
      }
      default:
        throw std::invalid_argument(std::string(op_name(op_)) +
                                    ": the backward ops are not differentiable");
    }
    if (s.varlen >= 0) g[s.varlen] = mx::zeros_like(primals[s.varlen], stream());
    std::vector<mx::array> res;
    for (int a : argnums) res.push_back(*g.at((size_t)a));
    return res;
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const NattenPrimitive*>(&other);
    return o && o->op_ == op_ && o->cfg_ == cfg_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return check_and_outputs(op_, cfg_, inputs).shapes;
  }

 private:
  struct Maybe {
    bool present = false;
    natten_tensor t;
    const natten_tensor* ptr() const { return present ? &t : nullptr; }
    natten_tensor* mptr() { return present ? &t : nullptr; }
  };
  struct Views {
    Maybe q, k, v, attn, out, lse, dout, dlogits, rpb, extra_k, extra_v;
  };

  static void run(Op op, const Config& cfg, const natten_problem& p, Views& v,
                  std::vector<natten_tensor>& outs) {
    natten_status st = NATTEN_STATUS_INTERNAL;
    switch (op) {
      case Op::NaForward:
        st = natten_na_forward(&p, v.q.ptr(), v.k.ptr(), v.v.ptr(), v.rpb.ptr(), v.extra_k.ptr(),
                               v.extra_v.ptr(), &outs[0], &outs[1]);
        break;
      case Op::NaBackward: {
        size_t i = 3;
        natten_tensor* drpb = cfg.has_rpb ? &outs[i++] : nullptr;
        natten_tensor* dek = cfg.has_extra ? &outs[i++] : nullptr;
        natten_tensor* dev = cfg.has_extra ? &outs[i++] : nullptr;
        st = natten_na_backward(&p, v.q.ptr(), v.k.ptr(), v.v.ptr(), v.rpb.ptr(), v.extra_k.ptr(),
                                v.extra_v.ptr(), v.out.ptr(), v.lse.ptr(), v.dout.ptr(), &outs[0],
                                &outs[1], &outs[2], drpb, dek, dev);
        break;
      }
      case Op::QkForward:
        st = natten_qk_forward(&p, v.q.ptr(), v.k.ptr(), v.rpb.ptr(), &outs[0]);
        break;
      case Op::QkBackward:
        st = natten_qk_backward(&p, v.q.ptr(), v.k.ptr(), v.dlogits.ptr(), &outs[0], &outs[1],
                                cfg.has_rpb ? &outs[2] : nullptr);
        break;
      case Op::AvForward:
        st = natten_av_forward(&p, v.attn.ptr(), v.v.ptr(), &outs[0]);
        break;
      case Op::AvBackward:
        st = natten_av_backward(&p, v.attn.ptr(), v.v.ptr(), v.dout.ptr(), &outs[0], &outs[1]);
        break;
    }
    if (st != NATTEN_STATUS_SUCCESS) fail_status(op, st);
  }

  Op op_;
  Config cfg_;
};

// ---------------------------------------------------------------------------
// Graph construction (what Python calls)
// ---------------------------------------------------------------------------

std::array<int64_t, 3> axis_param(const std::vector<int64_t>& v, int rank, const char* what,
                                  int64_t fill) {
  if ((int)v.size() != rank) {
    throw std::invalid_argument(std::string("natten: ") + what + " needs " + std::to_string(rank) +
                                " entries (one per spatial axis), got " + std::to_string(v.size()));
  }
  std::array<int64_t, 3> out{fill, fill, fill};
  for (int i = 0; i < rank; ++i) out[i] = v[i];
  return out;
}

Config make_config(int rank, const std::vector<int64_t>& kernel,
                   const std::vector<int64_t>& dilation, const std::vector<int64_t>& out_stride,
                   const std::vector<int64_t>& gna_stride, const std::vector<bool>& causal,
                   std::optional<double> scale, int impl) {
  if (rank < 1 || rank > NATTEN_MAX_RANK) {
    throw std::invalid_argument("natten: rank must be 1, 2 or 3, got " + std::to_string(rank));
  }
  if (impl < NATTEN_IMPL_AUTO || impl > NATTEN_IMPL_FAST) {
    throw std::invalid_argument("natten: impl must be 0 (auto), 1 (reference) or 2 (fast)");
  }
  Config c;
  c.rank = rank;
  c.kernel = axis_param(kernel, rank, "kernel", 1);
  c.dilation = axis_param(dilation, rank, "dilation", 1);
  c.out_stride = axis_param(out_stride, rank, "out_stride", 1);
  c.gna_stride = axis_param(gna_stride, rank, "gna_stride", 1);
  if ((int)causal.size() != rank) {
    throw std::invalid_argument("natten: causal needs " + std::to_string(rank) + " entries");
  }
  for (int i = 0; i < rank; ++i) c.causal[i] = causal[i] ? 1 : 0;
  c.scale = scale ? *scale : NAN;
  c.impl = impl;
  return c;
}

mx::Stream cpu_stream(const mx::StreamOrDevice& s) {
  mx::Stream st = mx::to_stream(s, mx::Device::cpu);
  if (st.device.type != mx::Device::cpu) {
    throw std::invalid_argument(
        "natten: the compiled tier runs on MLX's CPU device only; pass a CPU stream or device");
  }
  return st;
}

std::vector<mx::array> build(Op op, Config c, std::vector<mx::array> inputs,
                             const mx::StreamOrDevice& s) {
  mx::Stream st = cpu_stream(s);
  Slots sl = slots_of(op, c);
  if (sl.varlen >= 0) {
    inputs[sl.varlen] = mx::astype(inputs[sl.varlen], mx::int32, st);
  }
  OutSpec o = check_and_outputs(op, c, inputs);
  for (auto& sh : o.shapes) {
    size_t n = 1;
    for (auto d : sh) n *= (size_t)d;
    if (n == 0) throw std::invalid_argument("natten: zero-size outputs are not supported");
  }
  return mx::array::make_arrays(std::move(o.shapes), o.dtypes,
                                std::make_shared<NattenPrimitive>(st, op, c), inputs);
}

using OptArr = std::optional<mx::array>;

void push_opt(std::vector<mx::array>& v, const OptArr& a) {
  if (a) v.push_back(*a);
}

// The fused ops' optional inputs, appended after the required ones in slots_of's order.
void push_fused_optionals(Config& c, std::vector<mx::array>& in, const OptArr& rpb,
                          const OptArr& extra_k, const OptArr& extra_v, const OptArr& varlen) {
  if (extra_k.has_value() != extra_v.has_value())
    throw std::invalid_argument("natten: extra_k and extra_v must be given together");
  c.has_rpb = rpb.has_value();
  c.has_extra = extra_k.has_value();
  c.has_varlen = varlen.has_value();
  push_opt(in, rpb);
  push_opt(in, extra_k);
  push_opt(in, extra_v);
  push_opt(in, varlen);
}

// The forward ops, shared by the keyword entry points and the Params ones.
std::tuple<mx::array, mx::array> na_forward_c(Config c, const mx::array& q, const mx::array& k,
                                              const mx::array& v, const OptArr& rpb,
                                              const OptArr& extra_k, const OptArr& extra_v,
                                              const OptArr& varlen,
                                              const mx::StreamOrDevice& s = {}) {
  std::vector<mx::array> in{q, k, v};
  push_fused_optionals(c, in, rpb, extra_k, extra_v, varlen);
  auto o = build(Op::NaForward, c, std::move(in), s);
  return std::make_tuple(o[0], o[1]);
}

mx::array qk_forward_c(Config c, const mx::array& q, const mx::array& k, const OptArr& rpb,
                       const OptArr& varlen, const mx::StreamOrDevice& s = {}) {
  c.has_rpb = rpb.has_value();
  c.has_varlen = varlen.has_value();
  std::vector<mx::array> in{q, k};
  push_opt(in, rpb);
  push_opt(in, varlen);
  return build(Op::QkForward, c, std::move(in), s)[0];
}

mx::array av_forward_c(Config c, const mx::array& attn, const mx::array& v, const OptArr& varlen,
                       const mx::StreamOrDevice& s = {}) {
  c.has_varlen = varlen.has_value();
  std::vector<mx::array> in{attn, v};
  push_opt(in, varlen);
  return build(Op::AvForward, c, std::move(in), s)[0];
}

// A problem's parameters converted once: the *_p entry points take it
// positionally instead of eight keywords (two of the ~4 us a keyword call
// spends before the graph exists are that conversion).
struct Params {
  Config c;
};

}  // namespace

NB_MODULE(_natten_ext, m) {
  m.doc() = "MLX primitives over the natten C library (CPU).  Lazy; the forward ops' VJPs "
            "are their C backwards.";

#define NATTEN_PARAMS_ARGS                                                                    \
  nb::kw_only(), nb::arg("rank"), nb::arg("kernel"), nb::arg("dilation"),                    \
      nb::arg("out_stride"), nb::arg("gna_stride"), nb::arg("causal"),                       \
      nb::arg("scale") = nb::none(), nb::arg("impl") = 0, nb::arg("stream") = nb::none()

  m.def(
      "na_forward",
      [](const mx::array& q, const mx::array& k, const mx::array& v, const OptArr& rpb,
         const OptArr& extra_k, const OptArr& extra_v, const OptArr& varlen, int rank,
         std::vector<int64_t> kernel, std::vector<int64_t> dilation,
         std::vector<int64_t> out_stride, std::vector<int64_t> gna_stride,
         std::vector<bool> causal, std::optional<double> scale, int impl,
         mx::StreamOrDevice s) {
        return na_forward_c(
            make_config(rank, kernel, dilation, out_stride, gna_stride, causal, scale, impl), q, k,
            v, rpb, extra_k, extra_v, varlen, s);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("rpb") = nb::none(),
      nb::arg("extra_k") = nb::none(), nb::arg("extra_v") = nb::none(),
      nb::arg("varlen") = nb::none(), NATTEN_PARAMS_ARGS,
      "Fused forward: (out [B,O..,H,Dv], lse [B,O..,H] float32, float64 for float64 problems).");

  m.def(
      "na_backward",
      [](const mx::array& q, const mx::array& k, const mx::array& v, const mx::array& out,
         const mx::array& lse, const mx::array& dout, const OptArr& rpb, const OptArr& extra_k,
         const OptArr& extra_v, const OptArr& varlen, int rank, std::vector<int64_t> kernel,
         std::vector<int64_t> dilation, std::vector<int64_t> out_stride,
         std::vector<int64_t> gna_stride, std::vector<bool> causal, std::optional<double> scale,
         int impl, mx::StreamOrDevice s) {
        Config c = make_config(rank, kernel, dilation, out_stride, gna_stride, causal, scale, impl);
        std::vector<mx::array> in{q, k, v, out, lse, dout};
        push_fused_optionals(c, in, rpb, extra_k, extra_v, varlen);
        return build(Op::NaBackward, c, std::move(in), s);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("lse"), nb::arg("dout"),
      nb::arg("rpb") = nb::none(), nb::arg("extra_k") = nb::none(),
      nb::arg("extra_v") = nb::none(), nb::arg("varlen") = nb::none(), NATTEN_PARAMS_ARGS,
      "Fused backward: [dq, dk, dv] + [drpb] (if rpb) + [dextra_k, dextra_v] (if extra KV).");

  m.def(
      "qk_forward",
      [](const mx::array& q, const mx::array& k, const OptArr& rpb, const OptArr& varlen,
         int rank, std::vector<int64_t> kernel, std::vector<int64_t> dilation,
         std::vector<int64_t> out_stride, std::vector<int64_t> gna_stride,
         std::vector<bool> causal, std::optional<double> scale, int impl,
         mx::StreamOrDevice s) {
        return qk_forward_c(
            make_config(rank, kernel, dilation, out_stride, gna_stride, causal, scale, impl), q, k,
            rpb, varlen, s);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("rpb") = nb::none(), nb::arg("varlen") = nb::none(),
      NATTEN_PARAMS_ARGS, "Split QK: logits [B,O..,H,KK] (masked slots -inf).");

  m.def(
      "qk_backward",
      [](const mx::array& q, const mx::array& k, const mx::array& dlogits, bool with_rpb,
         const OptArr& varlen, int rank, std::vector<int64_t> kernel,
         std::vector<int64_t> dilation, std::vector<int64_t> out_stride,
         std::vector<int64_t> gna_stride, std::vector<bool> causal, std::optional<double> scale,
         int impl, mx::StreamOrDevice s) {
        Config c = make_config(rank, kernel, dilation, out_stride, gna_stride, causal, scale, impl);
        c.has_rpb = with_rpb;
        c.has_varlen = varlen.has_value();
        std::vector<mx::array> in{q, k, dlogits};
        push_opt(in, varlen);
        return build(Op::QkBackward, c, std::move(in), s);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("dlogits"), nb::arg("with_rpb") = false,
      nb::arg("varlen") = nb::none(), NATTEN_PARAMS_ARGS,
      "Backward of qk_forward: [dq, dk] + [drpb] when with_rpb.");

  m.def(
      "av_forward",
      [](const mx::array& attn, const mx::array& v, const OptArr& varlen, int rank,
         std::vector<int64_t> kernel, std::vector<int64_t> dilation,
         std::vector<int64_t> out_stride, std::vector<int64_t> gna_stride,
         std::vector<bool> causal, std::optional<double> scale, int impl,
         mx::StreamOrDevice s) {
        return av_forward_c(
            make_config(rank, kernel, dilation, out_stride, gna_stride, causal, scale, impl), attn,
            v, varlen, s);
      },
      nb::arg("attn"), nb::arg("v"), nb::arg("varlen") = nb::none(), NATTEN_PARAMS_ARGS,
      "Split AV: out [B,O..,H,Dv] (weights at masked slots ignored).");

  m.def(
      "av_backward",
      [](const mx::array& attn, const mx::array& v, const mx::array& dout, const OptArr& varlen,
         int rank, std::vector<int64_t> kernel, std::vector<int64_t> dilation,
         std::vector<int64_t> out_stride, std::vector<int64_t> gna_stride,
         std::vector<bool> causal, std::optional<double> scale, int impl,
         mx::StreamOrDevice s) {
        Config c = make_config(rank, kernel, dilation, out_stride, gna_stride, causal, scale, impl);
        c.has_varlen = varlen.has_value();
        std::vector<mx::array> in{attn, v, dout};
        push_opt(in, varlen);
        return build(Op::AvBackward, c, std::move(in), s);
      },
      nb::arg("attn"), nb::arg("v"), nb::arg("dout"), nb::arg("varlen") = nb::none(),
      NATTEN_PARAMS_ARGS, "Backward of av_forward: [dattn, dv].");

  nb::class_<Params>(m, "Params", "A problem's parameters for the *_p entry points (CPU default stream).")
      .def(
          "__init__",
          [](Params* self, int rank, std::vector<int64_t> kernel, std::vector<int64_t> dilation,
             std::vector<int64_t> out_stride, std::vector<int64_t> gna_stride,
             std::vector<bool> causal, std::optional<double> scale, int impl) {
            new (self) Params{
                make_config(rank, kernel, dilation, out_stride, gna_stride, causal, scale, impl)};
          },
          nb::kw_only(), nb::arg("rank"), nb::arg("kernel"), nb::arg("dilation"),
          nb::arg("out_stride"), nb::arg("gna_stride"), nb::arg("causal"),
          nb::arg("scale") = nb::none(), nb::arg("impl") = 0);
  m.def(
      "na_forward_p",
      [](const Params& P, const mx::array& q, const mx::array& k, const mx::array& v,
         const OptArr& rpb, const OptArr& extra_k, const OptArr& extra_v, const OptArr& varlen) {
        return na_forward_c(P.c, q, k, v, rpb, extra_k, extra_v, varlen);
      },
      nb::arg("params"), nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("rpb").none(),
      nb::arg("extra_k").none(), nb::arg("extra_v").none(), nb::arg("varlen").none(),
      "na_forward with Params (every argument positional).");
  m.def(
      "qk_forward_p",
      [](const Params& P, const mx::array& q, const mx::array& k, const OptArr& rpb,
         const OptArr& varlen) { return qk_forward_c(P.c, q, k, rpb, varlen); },
      nb::arg("params"), nb::arg("q"), nb::arg("k"), nb::arg("rpb").none(),
      nb::arg("varlen").none(), "qk_forward with Params (every argument positional).");
  m.def(
      "av_forward_p",
      [](const Params& P, const mx::array& attn, const mx::array& v, const OptArr& varlen) {
        return av_forward_c(P.c, attn, v, varlen);
      },
      nb::arg("params"), nb::arg("attn"), nb::arg("v"), nb::arg("varlen").none(),
      "av_forward with Params (every argument positional).");

#undef NATTEN_PARAMS_ARGS

  m.def("version", []() {
    return std::to_string(NATTEN_VERSION_MAJOR) + "." + std::to_string(NATTEN_VERSION_MINOR) + "." +
           std::to_string(NATTEN_VERSION_PATCH);
  });
  m.def("cpu_isa", []() { return std::string(natten_cpu_isa_name(natten_cpu_isa_get())); },
        "ISA the fast CPU kernels use.");
  m.def("num_threads", []() { return natten_num_threads_get(); },
        "Worker threads of the C library's pool.");
  m.def(
      "set_num_threads",
      [](int n) {
        natten_status st = natten_num_threads_set(n);
        if (st != NATTEN_STATUS_SUCCESS)
          throw std::invalid_argument(std::string("natten_num_threads_set: ") +
                                      natten_last_error_message());
      },
      nb::arg("n"));
  m.def(
      "output_pool_stats",
      []() {
        auto st = natten_ext::OutputPool::get().stats();
        return std::make_tuple(st.hits, st.misses, st.held, st.limit);
      },
      "(hits, misses, bytes held, byte limit) of the pool that reuses large output buffers "
      "(output_pool.h).");
  m.def(
      "output_pool_set_limit", [](size_t bytes) { natten_ext::OutputPool::get().set_limit(bytes); },
      nb::arg("bytes"), "Bytes of freed output buffers the pool may keep (0: none, and it lets go of them).");
#ifdef NATTEN_MLX_BUILT_WITH_MLX
  m.attr("built_with_mlx") = NATTEN_MLX_BUILT_WITH_MLX;
#else
  m.attr("built_with_mlx") = "";
#endif
  m.attr("IMPL_AUTO") = (int)NATTEN_IMPL_AUTO;
  m.attr("IMPL_REFERENCE") = (int)NATTEN_IMPL_REFERENCE;
  m.attr("IMPL_FAST") = (int)NATTEN_IMPL_FAST;
}
