// Stand-in for {fmt}'s format.h, which MLX's CUDA headers include but the MLX
// wheels do not ship.  Those headers use fmt::format only to word error
// messages; here a message is its format string, unfilled.  Experiment builds
// only (build.sh); the symbols stay hidden in floor_ext.
#pragma once
#include <string>

namespace fmt {
template <typename... Args>
std::string format(const char* f, Args&&...) {
  return std::string(f);
}
}  // namespace fmt
