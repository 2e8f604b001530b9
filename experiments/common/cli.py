"""The one command line: `python -m experiments --config FILE --workdir W [--config.x=y ...]`.

`python -m experiments.<name>` is the same command with that experiment's default config. A
config file with `get_grid()` (a paper table or a sweep) runs its grid (`grid.run`); `--rows`
picks rows and `--seeds` replaces the grid's seeds. `--help` lists every config field with its
default and the comment beside it in the config files. Exit status: 0 completed (or stopped by
`run.stop_after_steps`), 1 an error or a diverged run, 128 + N stopped by signal N (resume with
the same command).
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments.common import checkpoint
from experiments.common import config as cfg
from experiments.common import console
from experiments.common import grid as grid_lib
from experiments.common import loop
from experiments.common import parallel
from experiments.common.data import DataError

EXIT_ERROR = 1


def enable_compilation_cache(path: str) -> None:
    """Keeps compiled XLA programs in `path` (JAX's persistent compilation cache): the rows of a
    grid and a resumed run reuse the programs an earlier run compiled. '' turns it off."""
    if not path:
        return
    import jax  # pylint: disable=import-outside-toplevel

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def exit_code(result: loop.RunResult) -> int:
    """The process exit status of a run's result (see the module docstring)."""
    if result.status in (loop.DIVERGED, loop.FAILED):
        return EXIT_ERROR
    if result.status == loop.STOPPED and result.interrupted_by:
        return 128 + result.interrupted_by
    return 0


def field_comments(module) -> dict:
    """{'loss.gsc.gamma': comment} from `config.<path> = ...  # comment` lines of the config
    file and of the config modules it imports from experiments/."""
    sources, seen = [], set()

    def visit(mod):
        path = getattr(mod, "__file__", None)
        if not path or path in seen:
            return
        seen.add(path)
        sources.append(open(path).read())
        for value in vars(mod).values():
            name = getattr(value, "__name__", "")
            if getattr(value, "__file__", None) and name.startswith("experiments"):
                visit(value)

    visit(module)
    from experiments.common import losses  # pylint: disable=import-outside-toplevel
    from experiments.common.data import memory  # pylint: disable=import-outside-toplevel

    for shared in (cfg, losses, memory):
        visit(shared)
    comments = {}
    # `config.x = ...  # comment`; `data.x` in helpers that fill config.data, `c.x` in
    # losses.config() (config.loss).
    pattern = re.compile(r"^\s*(config|c|data)\.([\w.]+)\s*=.*#\s*(.+)$")
    prefixes = {"config": "", "c": "loss.", "data": "data."}
    for text in sources:
        for line in text.splitlines():
            match = pattern.match(line)
            if match:
                comments.setdefault(
                    prefixes[match.group(1)] + match.group(2), match.group(3).strip()
                )
    return comments


def _flatten(config, prefix=""):
    for key, value in config.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            yield from _flatten(value, path + ".")
        else:
            yield path, value


def help_text(config_path: str, program: str) -> str:
    """--help: usage and every field of the config with its default."""
    module = cfg.load_module(config_path)
    config = module.get_config()
    comments = field_comments(module)
    lines = [
        f"usage: {program} --workdir W [--config FILE] [--config.<field>=<value> ...]",
        "       [--rows a,b] [--seeds 0,1] [--verbosity 0]",
        "",
        (module.__doc__ or "").strip(),
        "",
        f"--config (default {config_path}): a config file with get_config() "
        "(and get_grid() for a table or sweep); its fields, overridable as "
        "--config.<field>=<value>:",
    ]
    for path, value in _flatten(config):
        comment = comments.get(path, "")
        lines.append(f"  --config.{path}={value!r}" + (f"    # {comment}" if comment else ""))
    if hasattr(module, "get_grid"):
        grid = module.get_grid()
        lines += [
            "",
            f"This config is a grid ({grid.name}): rows "
            f"{', '.join(r.id for r in grid.rows)}; seeds {grid.seeds}.",
        ]
    lines += [
        "",
        "--workdir: output directory (checkpoints, metrics.jsonl, summary.json, "
        "plots); running the same command again resumes.",
        "--rows: with a grid, the rows to run (default all).",
        "--seeds: with a grid, the seeds of every row (default the grid's).",
        "Exit status: 0 done (or stopped by run.stop_after_steps), 1 error or diverged, "
        "128+N stopped by signal N.",
    ]
    return "\n".join(lines)


def check_override_paths(config_path: str, argv) -> None:
    """Exits with a message when a --config.<path>=<value> names no field of the config."""
    paths = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    if not paths:
        return
    try:
        config = cfg.load_module(config_path).get_config()
    except (OSError, AttributeError, SyntaxError) as error:
        sys.exit(f"error: --config {config_path!r} is not a config file with get_config(): {error}")
    fields = dict(_flatten(config))
    for path in paths:
        if path not in fields and not any(f.startswith(path + ".") for f in fields):
            close = [f for f in fields if f.split(".")[-1] == path.split(".")[-1]]
            hint = (
                f" (did you mean {', '.join('--config.' + c for c in close[:3])}?)" if close else ""
            )
            sys.exit(
                f"error: --config.{path}: {config_path} has no such field{hint}; --help "
                "lists the fields."
            )


def main(default_config: str | None = None, argv=None) -> None:
    """Parses the command line and runs the config (a run or a grid); never returns."""
    argv = list(sys.argv if argv is None else argv)
    console.install()
    config_path = default_config
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            config_path = argv[i + 1]
    if any(a in ("--help", "-h", "--helpshort") for a in argv[1:]):
        if config_path is None:
            sys.exit(
                "usage: python -m experiments --config FILE --workdir W "
                "[--config.<field>=<value> ...]; --help with --config FILE lists its "
                "fields."
            )
        print(help_text(config_path, os.path.basename(argv[0])))
        sys.exit(0)
    if config_path is not None:
        check_override_paths(config_path, argv)
    config_flags.DEFINE_config_file("config", default_config, "Config file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_list("rows", [], "Grid rows to run (default all).")
    flags.DEFINE_list("seeds", [], "Grid seeds (default the grid's).")
    app.run(lambda args: _run(args, config_path), argv=argv)


def _run(argv, config_path: str | None) -> None:
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    values = flags.FLAGS
    if not values["verbosity"].present:  # orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    if values.config is None:
        sys.exit("error: --config FILE is required (an experiment's configs/*.py).")
    if not values.workdir:
        sys.exit("error: --workdir is required.")
    config = values.config
    try:
        module = cfg.load_module(values["config"].config_filename)
        seeds = tuple(int(s) for s in values.seeds)
        grid = module.get_grid() if hasattr(module, "get_grid") else None
        if (values.rows or seeds) and grid is None:
            raise ValueError(
                "--rows and --seeds apply to grid configs (tables, sweeps); set "
                "--config.seed for one run."
            )
        if grid is not None and seeds:
            grid = grid_lib.dataclasses.replace(grid, seeds=seeds)
        if grid is not None:
            grid_lib.check_rows(grid, values.rows)
        parallel.maybe_initialize_distributed(config.run.multihost)
        enable_compilation_cache(config.run.compilation_cache)
        if grid is not None:
            console.say(
                grid_lib.run(
                    grid,
                    config,
                    values.workdir,
                    values.rows,
                    config_flags.get_override_values(values["config"]),
                )
            )
            sys.exit(0)
        result = loop.train_and_evaluate(config, values.workdir)
    except (ValueError, DataError, checkpoint.ConfigMismatchError) as error:
        sys.exit(f"error: {error}")
    if result.status in (loop.DIVERGED, loop.FAILED):
        sys.exit(f"error: {result.message}")
    if result.status == loop.COMPLETED:
        console.say(
            str(
                {
                    k: v
                    for k, v in result.summary.items()
                    if k.endswith(("/top1", "/ece", "/nll", "/accuracy"))
                }
            )
        )
    sys.exit(exit_code(result))
