"""Backends behind one protocol (`submit`, `status`, `cancel`; `base`): `local`
(subprocesses on this machine), `slurm` (submitit) and `ray` (Ray Tune)."""
