#!/usr/bin/env bash
# Regenerate docs/PERFORMANCE.md: the page (live drag, fair serving), latent-against-pixel, app, sampling and
# backend benchmarks' output, verbatim.
#   bash scripts/performance.sh            (refuses to write when the machine is busy)
# Figures taken beside other work are not figures: the 1-minute load average must be at most
# MAX_LOAD (default 0.5) at the start, or nothing is written. Each benchmark raises the load
# itself, so the next one starts only once it has fallen back to MAX_LOAD (waiting at most
# SETTLE_S seconds, default 600; past that nothing is written).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
[ -x "$py" ] || py=python3
max_load=${MAX_LOAD:-0.5}
out=docs/PERFORMANCE.md
settle_s=${SETTLE_S:-600}
load_now() { cut -d' ' -f1 /proc/loadavg; }
above() { awk -v l="$1" -v m="$max_load" 'BEGIN { exit !(l > m) }'; }  # is load $1 above max_load?
settle() {  # wait for the load of the benchmark before to decay; fail when it does not
    local waited=0
    while above "$(load_now)"; do
        if [ "$waited" -ge "$settle_s" ]; then
            echo "the load average stayed above $max_load for ${settle_s} s: $out left as it is" >&2
            return 1
        fi
        sleep 5; waited=$((waited + 5))
    done
}
load=$(load_now)
if above "$load"; then
    echo "the 1-minute load average is $load (above $max_load): wait for a quiet machine; $out left as it is" >&2
    exit 1
fi
{
    echo "# Performance"
    echo
    echo "Written by \`bash scripts/performance.sh\` on $(nproc) CPU cores ($(uname -m), no GPU), $(date -u +%Y-%m-%d);"
    echo "1-minute load average at the start: $load (the script refuses to write above $max_load)."
    echo "Every figure below is printed by the script named above it; ratios compare runs taken in the"
    echo "same run of that script, interleaved. Each script starts once the load of the one before has"
    echo "fallen back to $max_load."
    for cmd in "scripts/benchmark_page.py" "scripts/benchmark_latent.py --repeats 3" "scripts/benchmark_app.py --repeats 2" \
               "scripts/benchmark_sampling.py --batch-sizes 8,40 --repeats 2" \
               "scripts/benchmark_backend.py --batch-sizes 1,8,16,40,80 --repeats 5"; do
        settle
        echo
        echo "## \`python $cmd\`"
        echo
        echo '```'
        $py $cmd 2>&1
        echo '```'
    done
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
