#!/bin/sh
# install_check.sh BUILD_DIR SOURCE_DIR CC CMAKE
# Install the built library to a temporary prefix, then build and run
# examples/c/hello_natten.c against the installed copy twice: with
# pkg-config and with CMake's find_package(natten).
set -eu
build=$1 src=$2 cc=$3 cmake=$4
tmp=$(mktemp -d "${TMPDIR:-/tmp}/natten-install.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
"$cmake" --install "$build" --prefix "$prefix" >/dev/null
for f in include/natten.h; do [ -f "$prefix/$f" ] || { echo "missing $f"; exit 1; }; done
libdir=$(dirname "$(find "$prefix" -name natten.pc | head -n1)")/..
[ -f "$libdir/libnatten.a" ] || { echo "missing libnatten.a"; exit 1; }
ls "$libdir"/libnatten.so* >/dev/null || { echo "missing libnatten.so"; exit 1; }
find "$prefix" -name nattenConfig.cmake | grep -q . || { echo "missing nattenConfig.cmake"; exit 1; }

# 1. pkg-config, shared library
if command -v pkg-config >/dev/null 2>&1; then
  export PKG_CONFIG_PATH="$libdir/pkgconfig"
  "$cc" -std=c11 -Wall -Werror "$src/examples/c/hello_natten.c" $(pkg-config --define-variable=prefix="$prefix" --cflags --libs natten) \
        -Wl,-rpath,"$libdir" -o "$tmp/hello_pc"
  "$tmp/hello_pc" | tee "$tmp/pc.txt"
  grep -q "query 7" "$tmp/pc.txt"
  grep -q "kernel\[0\]=9 exceeds extent\[0\]=8" "$tmp/pc.txt"
  # static library through pkg-config
  "$cc" -std=c11 "$src/examples/c/hello_natten.c" $(pkg-config --define-variable=prefix="$prefix" --cflags --static natten) \
        "$libdir/libnatten.a" -lpthread -lm -o "$tmp/hello_static"
  "$tmp/hello_static" >/dev/null
else
  echo "pkg-config not found: skipping the pkg-config build"
fi

# 2. find_package
mkdir -p "$tmp/consumer"
cat > "$tmp/consumer/CMakeLists.txt" <<CM
cmake_minimum_required(VERSION 3.22)
project(hello_consumer C)
find_package(natten 0.3 REQUIRED)
add_executable(hello "$src/examples/c/hello_natten.c")
target_link_libraries(hello PRIVATE natten::natten)
CM
"$cmake" -S "$tmp/consumer" -B "$tmp/consumer/build" -DCMAKE_PREFIX_PATH="$prefix" \
         -DCMAKE_C_COMPILER="$cc" >/dev/null
"$cmake" --build "$tmp/consumer/build" >/dev/null
"$tmp/consumer/build/hello" | grep -q "query 0"
echo "install_check: header, libnatten.so/.a, nattenConfig.cmake, natten.pc OK; example built with pkg-config and find_package"
