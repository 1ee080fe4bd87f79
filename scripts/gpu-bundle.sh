#!/usr/bin/env bash
# Prepares, on a build machine, everything scripts/gpu-check.sh needs on a GPU machine that has
# no network and no Rust toolchain, under .gpu/ (ignored by git, carried to the GPU machine):
#   .gpu/kto.xz  the release kto binary with flex, ndarray, wgpu and vulkan, stripped and
#              compressed (88 MB stripped, 14 MB compressed: the carry limit is 64 MiB);
#   .gpu/whl/  the Python wheels the H200 image lacks (trl, datasets and theirs), and
#              transformers at the reference harness's version;
#   .gpu/gl/   the Vulkan and EGL loader packages (the driver comes with the GPU machine).
# Then, on the GPU machine:
#   bash scripts/gpu-check.sh --setup .gpu --bin .gpu/kto.xz --out "$OUT" --require-python
#
#   bash scripts/gpu-bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo /.gpu/ >>.git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/gl
cargo build --release -p kto-cli --features vulkan
strip -o .gpu/kto target/release/kto
xz -9 -T0 .gpu/kto
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d .gpu/whl \
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
mkdir -p /tmp/amd64/partial
apt-get "${apt_opts[@]}" update >/dev/null
(cd .gpu/gl && apt-get "${apt_opts[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh .gpu .gpu/*
