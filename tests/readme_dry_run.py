"""Runs a main's command line up to config validation, and stops: what the README's
commands are checked with (tests/test_readme_commands.py).

  python -m tests.readme_dry_run tokendrop_jax.train --config=... [flags]

The module runs as `__main__`, so it defines its flags as a user's run would; absl's
`app.run` is replaced by a parse of the command line (an unknown or renamed flag fails
here) and `config_checks.validate` of its --config (an unknown field, a bad value or an
unknown variant fails here; for the compile main, the --topology name too). Nothing is
read from the paths the command names, and nothing is written.
"""
import runpy
import sys

from absl import app, flags


def _parse_and_validate(main, argv=None):
  del main
  flags.FLAGS(argv or sys.argv)
  f = flags.FLAGS
  if "config" in f and f.config is not None:
    from tokendrop_jax import config_checks  # pylint: disable=import-outside-toplevel
    config_checks.validate(f.config)
  if "topology" in f and f.topology:
    from tokendrop_jax.training import tpu_slice  # pylint: disable=import-outside-toplevel
    tpu_slice.parse(f.topology)
  print("dry run: flags and config valid")
  sys.exit(0)


if __name__ == "__main__":
  module = sys.argv[1]
  sys.argv = [module] + sys.argv[2:]
  app.run = _parse_and_validate
  runpy.run_module(module, run_name="__main__", alter_sys=True)
