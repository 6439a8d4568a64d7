"""Fixtures and helpers for the tests that start real launchers: torchrun, SLURM (sbatch/srun) and horovodrun."""
