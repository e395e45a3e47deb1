# Sourced by test.sh and demo.sh: makes sure the commands a script needs are installed, with
# apt-get when run as root, else by saying which Debian packages to install.

# Building Bearing: BoringSSL (its TLS stack) is compiled from the sources boring-sys vendors;
# CMake (3.22 or newer) and make drive a C/C++ compiler, and bindgen needs clang and libclang.
# Command → the Debian package providing it.
declare -A BUILD_NEEDS=([cmake]=cmake [make]=make [c++]=g++ [clang]=clang)

have_libclang() { compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null; }

# ensure_commands WHO NEEDS: every command in the associative array named NEEDS (command →
# package), plus what building Bearing needs, is installed afterwards or WHO exits saying what
# is missing.
ensure_commands() {
  local who=$1
  local -n needs=$2
  local cmd missing=()
  for cmd in "${!BUILD_NEEDS[@]}"; do needs[$cmd]=${BUILD_NEEDS[$cmd]}; done
  for cmd in "${!needs[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${needs[$cmd]}")
  done
  have_libclang || missing+=(libclang-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "$who: missing ${missing[*]}: run as root to install them, or: apt-get install ${missing[*]}" >&2
      exit 1
    fi
    echo "$who: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || { echo "$who: apt-get update failed" >&2; exit 1; }
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { echo "$who: cannot install ${missing[*]}" >&2; exit 1; }
  fi
  for cmd in "${!needs[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || { echo "$who: $cmd still missing" >&2; exit 1; }
  done
  have_libclang || { echo "$who: libclang (libclang-dev) still missing: boring-sys cannot run bindgen" >&2; exit 1; }
  local cmake_version
  cmake_version=$(cmake --version | sed -n '1s/[^0-9]*\([0-9][0-9.]*\).*/\1/p')
  [ "$(printf '%s\n' 3.22 "$cmake_version" | sort -V | head -1)" = 3.22 ] \
    || { echo "$who: cmake $cmake_version is older than 3.22, which BoringSSL needs" >&2; exit 1; }
}
