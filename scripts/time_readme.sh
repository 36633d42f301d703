#!/usr/bin/env bash
# The wall time of README's [long] commands as a user runs them: each command as written, in a fresh
# clone with the project's environment, one after the other on an otherwise idle machine; the
# times README quotes. Writes experiments/results/readme_times/times.md (a Markdown table).
#   scripts/time_readme.sh                  (all of them: ~80 min on 2 cores)
#   scripts/time_readme.sh 'COMMAND' ...    (these only: their rows of times.md are replaced or added)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/experiments/results/readme_times/times.md"
clone=$(mktemp -d)/clone
git clone -q "$repo" "$clone"
ln -s "$repo/.venv" "$clone/.venv"
touch -d '2000-01-01' "$clone/pyproject.toml"  # (older than .venv: make does not rebuild it)
cd "$clone"
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
commands=("$@")
[ ${#commands[@]} -gt 0 ] || commands=(
  ".venv/bin/rlzoo-train task=toy2d"
  ".venv/bin/rlzoo-train task=toy2d objective=pepg sampler=euler seed=1"
  ".venv/bin/rlzoo-train task=toy2d estimator=trajectory sampler=flow_sde objective=grpo advantage=group kl=sde_mean"
  ".venv/bin/rlzoo evaluate task=shapes"
  ".venv/bin/rlzoo-train experiment=flowgrpo task=toy2d"
  ".venv/bin/rlzoo-train -m task=toy2d 'objective=glob(pepg*)' 'seed=range(0,3)'"
  ".venv/bin/rlzoo-train -m task=toy2d objective=epg,pepg seed=0,1,2"
  "make sweep NAME=smoke"
  ".venv/bin/rlzoo-train experiment=gndm task=toy2d student.steps=2"
  ".venv/bin/rlzoo-train experiment=dmd task=shapes train.max_nfe=400000"
  "make run"
)
stamp="\`scripts/time_readme.sh\` at $(git -C "$repo" rev-parse --short HEAD), $(date -u +%Y-%m-%d), $(nproc) cores"
stamp="$stamp ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
if [ $# -gt 0 ] && [ -f "$out" ]; then  # these rows only: the others stay as measured
  grep -v -F -f <(printf '| `%s` |\n' "$@") "$out" > "$clone/times.md"
  printf '\n(re-timed: %s; %s)\n' "$(printf '`%s` ' "$@")" "$stamp" >> "$clone/times.md.notes"
else
  {
    echo "# README's [long] commands, timed as written"
    echo
    echo "$stamp; each in a fresh clone, one after the other."
    echo
    echo "| command | wall time (s) |"
    echo "|---|---|"
  } > "$clone/times.md"
fi
for command in "${commands[@]}"; do
  start=$(date +%s.%N)
  bash -c "$command" > /dev/null 2>&1 || { echo "failed: $command" >&2; exit 1; }
  end=$(date +%s.%N)
  printf '| `%s` | %.0f |\n' "$command" "$(echo "$end - $start" | bc)" >> "$clone/times.md"
  tail -1 "$clone/times.md"
done
[ -f "$clone/times.md.notes" ] && cat "$clone/times.md.notes" >> "$clone/times.md"
mkdir -p "$(dirname "$out")"
cp "$clone/times.md" "$out"
echo "written: $out"
