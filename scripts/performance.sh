#!/usr/bin/env bash
# Regenerate docs/PERFORMANCE.md: the sampling and app benchmarks' output, verbatim.
# Run it on an otherwise quiet machine:  bash scripts/performance.sh
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=docs/PERFORMANCE.md
{
    echo "# Performance"
    echo
    echo "Written by \`bash scripts/performance.sh\` on $(nproc) CPU cores ($(uname -m)), $(date -u +%Y-%m-%d);"
    echo "1-minute load average at the start: $(cut -d' ' -f1 /proc/loadavg). Targets: classifier-guided"
    echo "sampling at most 1.3x the unguided time per step, under 5% of the loop outside the networks;"
    echo "in the app, the first frame within 0.5 s and the last within 1.2x the bare sampler."
    for cmd in "scripts/benchmark_sampling.py" "scripts/benchmark_app.py" "scripts/benchmark_app.py --mode compare --repeats 2"; do
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
