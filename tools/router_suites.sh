# shellcheck shell=bash
# The router's synthetic suites as `msa synth` options (sourced by
# tools/bench_router.sh and tools/bench_router_10m.sh).
#   suite_args SUITE   -> prints the options; STRENGTH (default 16) is the
#                         needle logit above the noise
suite_args() {
  local strength=${STRENGTH:-16}
  case $1 in
    needle1)   echo "--needle-strength $strength --needle-span 1" ;;
    needle4)   echo "--needle-strength $strength --needle-span 4" ;;
    needle16)  echo "--needle-strength $strength --needle-span 16" ;;
    weak16)    echo "--needle-strength 10 --needle-span 16" ;;  # the demo's needles
    shift16)   echo "--needle-strength $strength --needle-span 16 --key-shift 16" ;;
    outlier16) echo "--needle-strength $strength --needle-span 16 --outlier-channels 4 --outlier-scale 8" ;;
    gqa1)      echo "--needle-strength $strength --needle-span 1 --needle-per-head" ;;
    *) echo "unknown suite $1" >&2; return 2 ;;
  esac
}
