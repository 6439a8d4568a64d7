"""`python -m open_clip_dive.main`: open_clip_train.main with the DiVE plugin installed.

Also under `torchrun -m open_clip_dive.main`, `srun python -u -m open_clip_dive.main` and
`horovodrun ... python -m open_clip_dive.main --horovod`. Exit status: 0 done, 1 open_clip refused
to start (e.g. the run name exists) or the run could not go on (a diverged loss, a failed save; one line
says which), 2 bad input, 75 preempted after writing a checkpoint (requeue me).
"""

import sys

if __name__ == "__main__":  # a signal during the seconds of imports and setup below must not kill the run
    from .signals import catch_early

    catch_early()

import logging  # noqa: E402

from .errors import DiveRunError, DiveUsageError  # noqa: E402
from .train import EXIT_PREEMPTED, Preempted  # noqa: E402

EXIT_USAGE = 2


def _one_line(error: BaseException) -> str:
    # an error raised in a DataLoader worker comes back with the worker's traceback in its message
    lines = [line for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else repr(error)
    return last.split("DiveUsageError: ", 1)[-1]


def _error(message: str) -> None:
    """One line on stderr in one write: under `python -u` (srun's usual launch) print() writes the text and its
    newline separately, and another rank's error line could land between the two."""
    sys.stderr.write(f"open_clip_dive: error: {message}\n")
    sys.stderr.flush()


def main(argv=None) -> int:
    from . import install

    install()
    import open_clip_train.main as oc_main

    from .plugin import current_run

    try:
        result = oc_main.main(sys.argv[1:] if argv is None else list(argv))
    except DiveUsageError as e:
        _error(_one_line(e))
        return EXIT_USAGE
    except DiveRunError as e:
        _error(str(e))
        return 1
    except Preempted as p:
        logging.info(f"{p}; exiting with status {EXIT_PREEMPTED} so the scheduler requeues the job.")
        return EXIT_PREEMPTED
    except Exception as e:
        if "DiveUsageError" in str(e):  # re-raised from a DataLoader worker under another type
            _error(_one_line(e))
            return EXIT_USAGE
        raise
    finally:
        run = current_run()
        if run is not None:
            run.restore_signal_handlers()
    return 1 if result == -1 else 0


if __name__ == "__main__":
    sys.exit(main())
