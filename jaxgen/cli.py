"""Command lines of `experiments/run.py` and `experiments/report.py`.

    python experiments/run.py --exp=NAME [--workdir=DIR] [--data_dir=DIR] [--config.KEY=VALUE ...]
    python experiments/report.py --workdir=DIR

Multi-host (one process per host, every host running the same command, the workdir on a file
system they share): `--coordinator=HOST:PORT --num_processes=N --process_id=I`, or the
environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, or
`--distributed=auto` on clusters JAX detects by itself (SLURM, Open MPI, TPU pods).

A `UserError` ends the program with its message and exit status 2, without a traceback. SIGTERM
(what SLURM and Kubernetes send before they kill a job) and SIGINT (Ctrl-C) stop training at the
next step: every run in training is saved at that step, and the program exits with 143 or 130;
rerunning the same command resumes from there. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from jaxgen.errors import Interrupted, UserError

USAGE = ("usage: python experiments/run.py --exp=NAME [--workdir=DIR] [--data_dir=DIR] "
         "[--coordinator=HOST:PORT --num_processes=N --process_id=I] [--config.KEY=VALUE ...]")
DISTRIBUTED_FLAGS = ("coordinator", "num_processes", "process_id", "distributed")


def parse_flags(argv: list[str], allowed: tuple[str, ...], usage: str = USAGE
                ) -> tuple[dict[str, str], dict[str, str]]:
    """`--name=value` flags and `--config.key=value` overrides; a bad one is a `UserError`
    ending with the command's `usage`."""
    flags, overrides = {}, {}
    for arg in argv:
        name, eq, value = arg.partition("=")
        if not arg.startswith("--") or not eq:
            raise UserError(f"Cannot read the argument {arg!r}: every argument has the form "
                            f"--name=value. {usage}")
        name = name[2:]
        if name.startswith("config."):
            overrides[name[len("config."):]] = value
        elif name in allowed:
            flags[name] = value
        else:
            raise UserError(f"Unknown flag --{name}. Fix: use only "
                            f"{', '.join('--' + a for a in allowed)} and --config.KEY=VALUE. "
                            + usage)
    return flags, overrides


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache, so a resumed or repeated run loads its compiled steps
    instead of compiling them again (the DCGAN step takes ~10 s to compile on CPU).
    `JAX_COMPILATION_CACHE_DIR` chooses the folder; the default is ~/.cache/jaxgen/xla."""
    import jax

    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "jaxgen", "xla")
    jax.config.update("jax_compilation_cache_dir", path)


def initialize_distributed(flags: dict[str, str]) -> None:
    """`jax.distributed.initialize()` when flags or environment ask for several processes; after
    it, `jax.devices()` lists every process's devices and one mesh spans them all."""
    import jax

    env = os.environ
    coordinator = flags.get("coordinator") or env.get("JAX_COORDINATOR_ADDRESS")
    if not coordinator and flags.get("distributed") != "auto":
        return
    try:
        num = flags.get("num_processes") or env.get("JAX_NUM_PROCESSES")
        pid = flags.get("process_id") or env.get("JAX_PROCESS_ID")
        num, pid = (int(num) if num else None), (int(pid) if pid else None)
    except ValueError as e:
        raise UserError(f"Cannot read the process count or id ({e}). Fix: pass integers, e.g. "
                        "--num_processes=2 --process_id=0.") from None
    if coordinator and (num is None or pid is None):
        raise UserError(f"--coordinator={coordinator} needs the process count and this process's "
                        "id. Fix: add --num_processes=N --process_id=I (0 on the coordinator's "
                        "host), or set JAX_NUM_PROCESSES and JAX_PROCESS_ID.")
    jax.distributed.initialize(coordinator, num, pid)
    print(f"process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local devices, {jax.device_count()} in all")


def run_main(argv: list[str], configs_dir: str) -> None:
    from jaxgen import config as config_lib
    from jaxgen import experiment

    if any(a in ("-h", "--help") for a in argv):
        print(USAGE + "\nExperiments: " + ", ".join(config_lib.known_experiments(configs_dir)))
        return
    flags, overrides = parse_flags(argv, ("exp", "workdir", "data_dir", *DISTRIBUTED_FLAGS))
    if "exp" not in flags:
        raise UserError("No experiment given. Fix: pass --exp=NAME, one of "
                        f"{', '.join(config_lib.known_experiments(configs_dir))}. {USAGE}")
    config = config_lib.load_config(flags["exp"], configs_dir)
    config_lib.apply_overrides(config, overrides, flags["exp"])
    if "data_dir" in flags:
        config.data_dir = flags["data_dir"]
    workdir = flags.get("workdir") or os.path.join("runs", flags["exp"])
    enable_compilation_cache()
    initialize_distributed(flags)
    experiment.run_experiment(config, workdir, configs_dir)


def report_main(argv: list[str], configs_dir: str | None = None) -> None:
    from jaxgen import report

    flags, _ = parse_flags(argv, ("workdir", "publish"), usage=(
        "usage: python experiments/report.py --workdir=DIR [--publish=DIR]"))
    if "workdir" not in flags:
        raise UserError("No workdir given. Fix: python experiments/report.py --workdir=DIR "
                        "[--publish=experiments/results/EXP].")
    print(report.write_report(flags["workdir"], configs_dir))
    if "publish" in flags:
        print(report.publish(flags["workdir"], flags["publish"]))


def classifier_main(argv: list[str]) -> None:
    """Retrains the evaluator's classifier with its fixed recipe and saves its weights."""
    from jaxgen.evaluator import classifier

    flags, _ = parse_flags(argv, ("data_dir", "out", "epochs"), usage=(
        "usage: python experiments/train_classifier.py --data_dir=DIR [--out=PATH] "
        "[--epochs=N]"))
    out = flags.get("out", classifier.WEIGHTS)
    variables, acc = classifier.train(flags.get("data_dir", ""),
                                      int(flags.get("epochs", classifier.EPOCHS)))
    classifier.save(variables, out)
    print(f"test_accuracy={acc:.4f} saved to {out}")


def guarded(main: Callable[[], None]) -> None:
    """Runs `main`, turning a `UserError` into a message and exit status 2, and an
    `Interrupted` (a signal during training, after saving) into a message and 128 + signal."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        print("interrupted; rerun the same command to resume from the last checkpoint.",
              file=sys.stderr)
        sys.exit(130)
