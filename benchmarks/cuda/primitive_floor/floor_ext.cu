// floor_ext.cu -- the host cost of an MLX C++ primitive on MLX's CUDA backend,
// measured against mx.custom_function + mx.fast.cuda_kernel (how the CUDA tier
// launches today) by floor.py.  An experiment for issue 5's small-problem
// target, not part of the package: one trivial kernel (y = x + c), launched
// by a Primitive's eval_gpu on MLX's command encoder, with its VJP in C++
// (the same primitive with c = 0 on the cotangent), so a forward+backward
// never returns to Python.  Built on the GPU machine by build.sh.
#include <memory>
#include <stdexcept>
#include <vector>

#include <nanobind/nanobind.h>

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/cuda/allocator.h"
#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/utils.h"
#include "mlx/primitives.h"
#include "mlx/stream.h"

namespace nb = nanobind;
namespace mx = mlx::core;

__global__ void add_scalar_kernel(const float* x, float* y, float c, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] + c;
}

class AddScalar : public mx::Primitive {
 public:
  AddScalar(mx::Stream s, float c) : mx::Primitive(s), c_(c) {}

  void eval_cpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("floor_ext: GPU only");
  }

  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override {
    auto& enc = mx::cu::get_command_encoder(stream());
    mx::array& o = out[0];
    o.set_data(mx::allocator::malloc(o.nbytes()));  // cu::malloc_async is not exported by libmlx.so
    enc.set_input_array(in[0]);
    enc.set_output_array(o);
    const float* x = mx::gpu_ptr<float>(in[0]);
    float* y = mx::gpu_ptr<float>(o);
    float c = c_;
    int n = static_cast<int>(o.size());
    // libmlx.so links the CUDA runtime statically: its graph nodes only know
    // kernels as driver-API functions, not this library's runtime symbols
    // (cudaGraphAddKernelNode with &add_scalar_kernel: "invalid resource handle")
    static const CUfunction fn = [] {
      cudaFunction_t f = nullptr;
      if (cudaGetFuncBySymbol(&f, reinterpret_cast<const void*>(add_scalar_kernel)) != cudaSuccess)
        throw std::runtime_error("floor_ext: cudaGetFuncBySymbol failed");
      return reinterpret_cast<CUfunction>(f);
    }();
    enc.add_kernel_node_ex(fn, dim3((n + 255) / 256), dim3(256), dim3(1, 1, 1), 0u, x, y, c, n);
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>& cot,
                             const std::vector<int>&, const std::vector<mx::array>&) override {
    return {mx::array(cot[0].shape(), mx::float32, std::make_shared<AddScalar>(stream(), 0.f), {cot[0]})};
  }

  const char* name() const override { return "AddScalar"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return c_ == static_cast<const AddScalar&>(other).c_;
  }

 private:
  float c_;
};

NB_MODULE(floor_ext, m) {
  m.def(
      "add_scalar",
      [](const mx::array& x, float c) {
        if (x.dtype() != mx::float32 || !x.flags().row_contiguous)
          throw std::invalid_argument("floor_ext.add_scalar: contiguous float32 only");
        mx::Stream s = mx::default_stream(mx::Device::gpu);
        return mx::array(x.shape(), mx::float32, std::make_shared<AddScalar>(s, c), {x});
      },
      nb::arg("x"), nb::arg("c"));
}
