"""Notebook jobs: the main job over every notebook, notebook parameter validation, one papermill runner.

- ``rdc_lib.jobs.main_job``: ``run_notebooks`` (``make run``, ``rdc run-notebooks``) and its summary;
- ``rdc_lib.jobs.params``: ``validate_params``, the first code cell of every notebook (torch-free);
- ``rdc_lib.jobs.papermill_runner``: ``PapermillJob``, the one place papermill is driven (by the main job
  and by notebook sweep cells).

Nothing is imported here, so ``import rdc_lib.jobs.params`` stays light.
"""
