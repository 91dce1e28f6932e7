"""
The worker pool of data preparation: a function over a stream of items on forked processes, results
in input order and memory flat however long the stream.
"""
import signal
from collections import deque

_work = None  # what a parallel_map worker process runs


def _start_worker(fn):
    global _work
    _work = fn
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler: a worker just stops
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # one that came before ends it now


def _run(item):
    return _work(item)


def parallel_map(fn, items, workers, in_flight=None):
    """fn over items, results in input order. With workers > 1 it runs in forked processes, which
    inherit fn (tokenizers, closures, module state: only items and results are pickled), at most
    in_flight items at once (2 per worker by default), so memory stays flat however long items runs."""
    if workers <= 1:
        yield from map(fn, items)
        return
    import multiprocessing as mp
    # workers are forked with SIGTERM blocked until _start_worker has dropped the parent's handler:
    # run in a worker, that handler's exit can be swallowed (by fork's own callbacks) and leave the
    # worker alive, with Pool.terminate waiting on it forever. Threads the pool starts keep the
    # block, so the workers they fork later start blocked too.
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        pool = mp.get_context("fork").Pool(workers, _start_worker, (fn,))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    with pool:
        pending = deque()
        for item in items:
            pending.append(pool.apply_async(_run, (item,)))
            if len(pending) >= (in_flight or 2 * workers):
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
