"""`python -m open_clip_dive.main`: open_clip_train.main with the DiVE plugin installed.

Also under `torchrun -m open_clip_dive.main`, `srun python -u -m open_clip_dive.main` and
`horovodrun ... python -m open_clip_dive.main --horovod`. Exit status: 0 done, 1 open_clip refused
to start (e.g. the run name exists), 2 bad input, 75 preempted after writing a checkpoint (requeue me).
"""

import logging
import sys

from .errors import DiveUsageError
from .train import EXIT_PREEMPTED, Preempted

EXIT_USAGE = 2


def _one_line(error: BaseException) -> str:
    # an error raised in a DataLoader worker comes back with the worker's traceback in its message
    lines = [line for line in str(error).splitlines() if line.strip()]
    last = lines[-1] if lines else repr(error)
    return last.split("DiveUsageError: ", 1)[-1]


def main(argv=None) -> int:
    from . import install

    install()
    import open_clip_train.main as oc_main

    from .plugin import current_run

    try:
        result = oc_main.main(sys.argv[1:] if argv is None else list(argv))
    except DiveUsageError as e:
        print(f"open_clip_dive: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except Preempted as p:
        logging.info(f"{p}; exiting with status {EXIT_PREEMPTED} so the scheduler requeues the job.")
        return EXIT_PREEMPTED
    except Exception as e:
        if "DiveUsageError" in str(e):  # re-raised from a DataLoader worker under another type
            print(f"open_clip_dive: error: {_one_line(e)}", file=sys.stderr)
            return EXIT_USAGE
        raise
    finally:
        run = current_run()
        if run is not None:
            run.restore_signal_handlers()
    return 1 if result == -1 else 0


if __name__ == "__main__":
    sys.exit(main())
