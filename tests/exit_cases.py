"""Objects with finalizers around prepare_fork, for tests/integration/test_exit_finalization.py.

Run as a script (never imported into pytest's process, whose heap must stay mortal):
    python exit_cases.py CASE {prepare|baseline} {master|child} DIR
CASE's set-up runs first (opens files in DIR, ...), then prepare_fork() (prepare) or nothing
(baseline); then, in the master, CASE's action runs and the process exits normally; or (child) the
master forks, the child runs the action tagged "child" and exits with sys.exit(0), and the master
waits for it, runs the action tagged "master" and exits normally. The test compares what is on disk
afterwards between prepare and baseline. EXIT_CASES_NO_EXIT_HOOK=1 leaves out cowprof's exit
finalization (what the walk's mortal objects do alone). drop_at_runtime prints one JSON line instead.
"""
from __future__ import annotations

import atexit
import gzip
import json
import os
import sys
import tempfile
from collections.abc import Callable

Action = Callable[[str], None]


def keep(name: str, obj: object) -> None:
    """Makes obj a module global, which module teardown frees at exit (the common case)."""
    globals()[name] = obj


def text_file(d: str) -> Action:
    keep("TEXT", open(os.path.join(d, "out.txt"), "w"))  # noqa: SIM115 - left open on purpose
    return lambda tag: TEXT.write(f"text from {tag}\n")  # noqa: F821


def binary_file(d: str) -> Action:
    keep("BINARY", open(os.path.join(d, "out.bin"), "wb"))  # noqa: SIM115
    return lambda tag: BINARY.write(f"bytes from {tag}\n".encode())  # noqa: F821


def gzip_file(d: str) -> Action:
    keep("GZ", gzip.GzipFile(os.path.join(d, "out.gz"), "wb", mtime=0))  # mtime=0: byte-identical runs
    return lambda tag: GZ.write(f"gzip from {tag}\n".encode() * 50)  # noqa: F821


def gzip_over_file(d: str) -> Action:
    """GzipFile(fileobj=...) kept only by a prepared dict: it must be finalized before its file."""
    raw = open(os.path.join(d, "out.gz"), "wb")  # noqa: SIM115
    STRANDED["gzip"] = {"raw": raw, "g": gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)}
    return lambda tag: STRANDED["gzip"]["g"].write(f"gzip over a file from {tag}\n".encode() * 50)


def temporary_file(d: str) -> Action:
    keep("TEMP", tempfile.NamedTemporaryFile(dir=d, prefix="tmp-", suffix=".data", delete=True))  # noqa: SIM115
    return lambda tag: TEMP.write(f"temporary from {tag}\n".encode())  # noqa: F821


def buffered_before_prepare(d: str) -> Action:
    keep("EARLY", open(os.path.join(d, "out.txt"), "w"))  # noqa: SIM115
    EARLY.write("written before prepare_fork\n")  # noqa: F821
    return lambda tag: None


# a module-level dict holding a dict holding files: the outer one is immortal after prepare_fork,
# and no mortal object holds the inner one, so only exit finalization frees the files
STRANDED: dict = {}


def file_in_immortal_dict(d: str) -> Action:
    STRANDED["logs"] = {"audit": open(os.path.join(d, "audit.txt"), "w")}  # noqa: SIM115
    return lambda tag: STRANDED["logs"]["audit"].write(f"audit from {tag}\n")


class App:
    pass


APP = App()


def file_on_app_object(d: str) -> Action:
    APP.log = open(os.path.join(d, "app.txt"), "w")  # noqa: SIM115
    APP.handlers = {"debug": open(os.path.join(d, "debug.txt"), "w")}  # noqa: SIM115
    APP.__dict__  # noqa: B018 - a materialized instance dict (a separate, immortal dict)

    def act(tag: str) -> None:
        APP.log.write(f"app from {tag}\n")
        APP.handlers["debug"].write(f"debug from {tag}\n")

    return act


def created_after_prepare(d: str) -> Action:
    """A file created after prepare_fork (in the acting process) stored into a prepared dict."""
    STRANDED["late"] = {}

    def act(tag: str) -> None:
        f = open(os.path.join(d, f"late-{tag}.txt"), "w")  # noqa: SIM115
        f.write(f"late file from {tag}\n")
        STRANDED["late"][tag] = [f]

    return act


def atexit_writes(d: str) -> Action:
    """An atexit handler registered before prepare_fork writes to a prepared file."""
    keep("AT_EXIT", open(os.path.join(d, "atexit.txt"), "w"))  # noqa: SIM115
    atexit.register(lambda: AT_EXIT.write(f"atexit handler in {'master' if os.getpid() == MASTER else 'child'}\n"))  # noqa: F821
    return lambda tag: AT_EXIT.write(f"atexit case from {tag}\n")  # noqa: F821


def generator_finally(d: str) -> Action:
    fd = os.open(os.path.join(d, "generator.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def gen(write: Callable = os.write, fd: int = fd, getpid: Callable = os.getpid):
        try:
            yield 1
        finally:
            write(fd, b"finally in " + (b"master" if getpid() == MASTER else b"child") + b"\n")

    g = gen()
    next(g)
    STRANDED["generator"] = {"g": g}
    return lambda tag: None


def hook_replaced(d: str) -> Action:
    """Something replaces sys.__interactivehook__ while the program runs: nothing is closed then,
    and exit finalization still happens (from an atexit handler)."""
    STRANDED["logs"] = {"audit": open(os.path.join(d, "audit.txt"), "w")}  # noqa: SIM115

    def act(tag: str) -> None:
        sys.__interactivehook__ = None  # type: ignore[attr-defined]
        f = STRANDED["logs"]["audit"]
        f.write(f"audit from {tag}, {'closed' if f.closed else 'open'}\n")

    return act


def finalizer_moment(d: str) -> Action:
    """An object stranded in a prepared dict records the interpreter's state when it is finalized."""
    ran: list[str] = []
    atexit.register(ran.append, "atexit")  # registered before prepare_fork: runs after later ones
    fd = os.open(os.path.join(d, "moment.txt"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    class Probe:
        def __del__(self, write: Callable = os.write, fd: int = fd, ran: list = ran) -> None:
            try:
                import json.decoder  # noqa: F401 - imports still work

                import_ok = True
            except ImportError:
                import_ok = False
            none = sum(1 for m in list(sys.modules.values()) if m is None)
            write(fd, (f"atexit_ran={ran == ['atexit']} finalizing={sys.is_finalizing()} "
                       f"none_in_sys_modules={none} import_ok={import_ok} "
                       f"globals_ok={CASES.get('text_file') is text_file}\n").encode())

    STRANDED["probe"] = {"probe": Probe()}
    return lambda tag: None


CASES: dict[str, Callable[[str], Action]] = {
    "text_file": text_file, "binary_file": binary_file, "gzip_file": gzip_file,
    "gzip_over_file": gzip_over_file, "temporary_file": temporary_file,
    "buffered_before_prepare": buffered_before_prepare, "file_in_immortal_dict": file_in_immortal_dict,
    "file_on_app_object": file_on_app_object, "created_after_prepare": created_after_prepare,
    "atexit_writes": atexit_writes, "generator_finally": generator_finally, "hook_replaced": hook_replaced,
    "finalizer_moment": finalizer_moment,
}
MASTER = os.getpid()


def drop_at_runtime(d: str, prepare: bool) -> dict:
    """Objects dropped while the program runs are finalized at once, as without cowprof."""
    text = open(os.path.join(d, "dropped.txt"), "w")  # noqa: SIM115
    temp = tempfile.NamedTemporaryFile(dir=d, prefix="tmp-")  # noqa: SIM115
    holder = {"f": open(os.path.join(d, "held.txt"), "w")}  # noqa: SIM115
    if prepare:
        import cowprof

        cowprof.prepare_fork(heapmap=False)
    text.write("dropped\n")
    holder["f"].write("held\n")
    name = temp.name
    del text, temp
    holder.clear()
    with open(os.path.join(d, "dropped.txt")) as f:
        dropped = f.read()
    with open(os.path.join(d, "held.txt")) as f:
        held = f.read()
    return {"dropped": dropped, "held": held, "temporary_exists": os.path.exists(name)}


def main() -> None:
    case, mode, where, d = sys.argv[1:5]
    if case == "drop_at_runtime":
        print(json.dumps(drop_at_runtime(d, mode == "prepare")))
        return
    act = CASES[case](d)
    if mode == "prepare":
        import cowprof

        if os.environ.get("EXIT_CASES_NO_EXIT_HOOK") == "1":  # isolates what the walk alone does
            import cowprof.finalize

            cowprof.finalize.install = lambda: False

        report = cowprof.prepare_fork(heapmap=False)
        assert report.immortalize_ran, report.immortalize_skipped
    if where == "child":
        pid = os.fork()
        if pid == 0:
            act("child")
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
    act("master")


if __name__ == "__main__":
    main()
