"""Every experiment's command line: `python -m experiments --config FILE --workdir W [...]`.

`--config` names an experiment's config file (experiments/<name>/configs/*.py); `--help` with it
lists the config's fields. See experiments/README.md.
"""

from experiments.common import cli

if __name__ == "__main__":
    cli.main()
