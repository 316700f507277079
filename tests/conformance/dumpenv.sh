#!/bin/sh
# One task's view of its job, for the conformance tests (tests/conformance/harness.py): its Slurm
# variables go to $CONFORMANCE_OUT/<step>.<task>, one line to stdout; exit status $CONFORMANCE_EXIT.
env | grep -E '^(SLURM_|SLURMD_|CUDA_VISIBLE_DEVICES=|GPU_DEVICE_ORDINAL=|ROCR_VISIBLE_DEVICES=)' \
    > "$CONFORMANCE_OUT/${CONFORMANCE_NAME:-${SLURM_STEP_ID}.${SLURM_PROCID}}"
echo "task $SLURM_PROCID on $SLURMD_NODENAME"
exit "${CONFORMANCE_EXIT:-0}"
