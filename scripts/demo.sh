#!/usr/bin/env bash
# The main job on the embedded default: a master on SQLite, one worker, a
# sample clip made with `ffmpeg -f lavfi`, transcoded to h264 480p while a
# progress bar runs; prints the bandwidth figures and stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/install-deps.sh
cargo build --workspace --bins --quiet
bin=$root/target/debug

demo=$root/demo-out
rm -rf "$demo"
mkdir -p "$demo"
cd "$demo"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

echo "== making a 10 s 1280x720 sample clip with ffmpeg -f lavfi"
ffmpeg -nostdin -loglevel error -y \
  -f lavfi -i testsrc2=size=1280x720:rate=30 \
  -f lavfi -i sine=frequency=440:sample_rate=48000 \
  -t 10 -c:v libx264 -preset veryfast -c:a aac -shortest sample.mp4

echo "== starting ffleet-master on sqlite://$demo/ffleet.db"
"$bin/ffleet-master" --listen 127.0.0.1:0 --database "sqlite://$demo/ffleet.db" \
  --output-root "$demo/out" --metrics-listen 127.0.0.1:0 >master.out 2>master.log &
pids+=($!)
for _ in $(seq 100); do
  grep -q 'listening on' master.out 2>/dev/null && break
  sleep 0.1
done
addr=$(sed -n 's/^ffleet-master listening on //p' master.out)
[[ -n $addr ]] || { echo "master did not start; see $demo/master.log" >&2; exit 1; }
export FFLEET_MASTER=http://$addr

echo "== starting ffleet-worker"
"$bin/ffleet-worker" --work-dir "$demo/work" --metrics-listen 127.0.0.1:0 \
  >worker.out 2>worker.log &
pids+=($!)

echo "== submitting sample.mp4 -> out/sample-480p.mp4 (h264-480p)"
start=$(date +%s%3N)
"$bin/ffleet" submit sample.mp4 -o sample-480p.mp4 --preset h264-480p --wait
job=$("$bin/ffleet" list --state succeeded -o json | sed -n 's/^ *"id": "\(.*\)",$/\1/p' | head -n1)
end=$(date +%s%3N)

echo "== job $job"
"$bin/ffleet" get "$job"
echo
echo "output: $demo/out/sample-480p.mp4 ($(ffprobe -v error -select_streams v:0 \
  -show_entries stream=codec_name,width,height -of csv=p=0 "$demo/out/sample-480p.mp4"))"
echo "submit to done: $((end - start)) ms"
"$bin/ffleet" workers
echo "metrics: http://$(sed -n 's/^ffleet-master metrics on //p' master.out)/metrics" \
  "http://$(sed -n 's/^ffleet-worker metrics on //p' worker.out)/metrics"
