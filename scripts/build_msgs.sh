#!/usr/bin/env bash
# Build the ood_perception_msgs interface package into a virtual environment's prefix.
#
# The ROS 2 kilted wheels from PyPI carry CMake export files written on their build
# machine (/opt/python/cp311-cp311/include/python3.11 and that machine's numpy include
# dir). We rewrite those paths to this venv's own, then run a plain cmake build with
# AMENT_PREFIX_PATH set to the venv and install into it. Installed there, the generated
# Python messages need no sourced ROS environment.
#
# usage: scripts/build_msgs.sh VENV_DIR [BUILD_DIR]
set -euo pipefail
venv=$(cd "$1" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
build=${2:-$here/build/ood_perception_msgs}
py=$venv/bin/python

pyinc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
npinc=$("$py" -c 'import numpy; print(numpy.get_include())')

# Rewrite build-machine include paths in the exported CMake files (idempotent: on a venv already
# rewritten grep finds nothing and exits 1, which must not stop the script under pipefail).
{ grep -rl --include='*.cmake' -e '/opt/python/cp311-cp311' "$venv/share" 2>/dev/null || true; } | while read -r f; do
  sed -i -E \
    -e "s#/opt/python/cp311-cp311/include/python3\.11#${pyinc}#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/_core/include#${npinc}#g" \
    -e "s#/opt/python/cp311-cp311[^;\"]*/numpy/_core/include#${npinc}#g" \
    "$f"
done

export AMENT_PREFIX_PATH=$venv
export PATH=$venv/bin:$PATH
export CMAKE_PREFIX_PATH=$venv
mkdir -p "$build"
cmake -S "$here/ood_perception_msgs" -B "$build" \
  -DCMAKE_INSTALL_PREFIX="$venv" \
  -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$py" \
  -DPYTHON_EXECUTABLE="$py" \
  -DBUILD_TESTING=OFF >"$build.cmake.log" 2>&1 || { cat "$build.cmake.log"; exit 1; }
cmake --build "$build" -j"$(nproc)" >"$build.build.log" 2>&1 || { tail -n 60 "$build.build.log"; exit 1; }
cmake --install "$build" >"$build.install.log" 2>&1 || { tail -n 30 "$build.install.log"; exit 1; }
"$py" -c 'from ood_perception_msgs.msg import OodAlert, OodRegion, Recognition; print("ood_perception_msgs built:", OodAlert.DEGRADED)'
