# Sourced by the GPU study scripts (gpu_regime.sh, gpu_imagenet.sh): the output folder $OUT and the runs'
# folder $WORKDIR made, unbuffered Python as $PY, the start time $t0, and the device written to the log "$1".
gpu_start() {
  mkdir -p "$OUT" "$WORKDIR"
  export PYTHONUNBUFFERED=1
  PY=${PYTHON:-python3}
  t0=$SECONDS
  {
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    $PY -c 'import jax; print("jax", jax.__version__, jax.devices())'
  } >"$1" 2>&1
}
