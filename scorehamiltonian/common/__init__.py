"""Shared plumbing: the error hierarchy, input checks, standard errors, seeds, threads, executors
and atomic files.

No numerics of the toolkit's ideas live here; every other subpackage builds on it.

- ``errors``: :class:`~.errors.ScoreHamiltonianError` and its subclasses (one per kind of bad
  input or unmet accuracy), re-exported by :mod:`scorehamiltonian`.
- ``validation``: checks of points, times and dtypes shared by every public function.
- ``statistics``: the mean of independent replicates and its standard error.
- ``seeds``: seeds handed on from a caller's generator, per time of a sweep, per block.
- ``threads``: when and how the compiled kernels go parallel.
- ``executors``: sweeps on any ``concurrent.futures.Executor`` or dask (``map_tasks``), with
  failed tasks reported instead of raised (:class:`~.executors.TaskFailure`).
- ``files``: atomic writes and JSON checkpoints.
"""
