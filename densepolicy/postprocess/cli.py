"""Shared command-line plumbing of the three post-processing scripts (config + overrides, errors)."""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from densepolicy.config import ConfigError, describe, from_dict, load_config, parse_overrides, to_dict, update_only_keys
from densepolicy.file_lock import LockHeldError, Terminated
from densepolicy.paths import resolve
from densepolicy.postprocess.config import PostprocessConfig
from densepolicy.presets import with_preset
from densepolicy.results_io import OutputWriteError, is_fix_then_rerun

DEFAULT_CONFIG = "configs/postprocess.yaml"


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser with --config, --overwrite and trailing key=value overrides."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (set in --config or as key=value):\n" + describe(PostprocessConfig))
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. pairs.thre_value=0.3")
    return parser


def load_postprocess_config(args: argparse.Namespace) -> PostprocessConfig:
    """The config of `--config`, then the settings of its `preset` (`preset=paper`: the original's
    behaviour, densepolicy.presets), then the command-line overrides (explicit keys win)."""
    path = resolve(args.config)
    cfg = load_config(PostprocessConfig, None if not path.is_file() and args.config == DEFAULT_CONFIG else path)
    update = parse_overrides(args.overrides)
    update_only_keys(PostprocessConfig, update, "command line")
    if update or cfg.preset != "none":
        cfg = from_dict(PostprocessConfig, with_preset("postprocess", to_dict(cfg), update), "command line")
    return cfg


def run(main: Callable[[], int | None]) -> None:
    """Run `main`, turning expected errors into one line on stderr: exit status 2 for bad input
    (settings, corrupt or missing files), 4 when another process holds an output's lock, 5 when an
    output cannot be written (disk full, read-only, permissions: fix, then rerun), 130 on Ctrl-C, 143 on
    SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = main()
    except LockHeldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(4)
    except OutputWriteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(5)
    except KeyboardInterrupt:
        print("interrupted; locks released, nothing half-written: rerun the same command", file=sys.stderr)
        sys.exit(130)
    except Terminated as exc:
        print(f"stopped by {exc.signal_name}; locks released, nothing half-written: rerun the same command",
              file=sys.stderr)
        sys.exit(exc.code)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        if not is_fix_then_rerun(exc):
            raise
        print(f"error: {OutputWriteError(exc.filename or '?', exc)}", file=sys.stderr)
        sys.exit(5)
    sys.exit(code or 0)
