"""Slurm, simulated on one machine: srun, sbatch and scontrol with Slurm's layouts and environment.

Modules, one concept each:

* :mod:`~clusterlab.slurm.hosts` - hostlists (``node[001-004]``) and simulated node names;
* :mod:`~clusterlab.slurm.layout` - which task runs on which node (block, cyclic, plane);
* :mod:`~clusterlab.slurm.job` - the simulated controller: allocations and steps;
* :mod:`~clusterlab.slurm.environ` - the ``SLURM_*`` variables of a batch script and of each task;
* :mod:`~clusterlab.slurm.options` - srun/sbatch options, for command lines and ``#SBATCH`` lines;
* :mod:`~clusterlab.slurm.sbatch` - directives, and running a batch script;
* :mod:`~clusterlab.slurm.srun` - running a step's tasks as local processes;
* :mod:`~clusterlab.slurm.lint` and :mod:`~clusterlab.slurm.explain` - reading a script without running it.
"""

from __future__ import annotations

from .hosts import resolve_simulated

__all__ = ["resolve_simulated"]
