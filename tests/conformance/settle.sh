#!/bin/sh
# Real side only (tests/conformance/harness.py): wait until the job's previous step is gone from the
# controller, so the next step is placed on released CPUs, not beside a step that is still ending
# (real slurmctld frees a step's CPUs a moment after srun returns; where the next step lands, and
# whether srun must retry, would depend on that moment). At most 10 s.
i=0
while [ "$(squeue -h -s -j "$SLURM_JOB_ID" -o %i | grep -cv -e batch -e extern)" != 0 ] && [ $i -lt 200 ]; do
    sleep 0.05
    i=$((i + 1))
done
