"""What each ``cowprof`` command does, once its arguments are parsed: one module per command.

:mod:`~cowprof.commands.snapshot`, :mod:`~cowprof.commands.top`, :mod:`~cowprof.commands.record`,
:mod:`~cowprof.commands.report`, :mod:`~cowprof.commands.run` and :mod:`~cowprof.commands.export`
each have a ``main(...)`` that takes the command's options as plain values, checks what the option
parser cannot (an output file that must not exist yet, a combination of options), calls the library
(:mod:`cowprof.tree`, :mod:`cowprof.pages`, :mod:`cowprof.sampler`, :mod:`cowprof.record`,
:mod:`cowprof.gunicorn_run`, :mod:`cowprof.exporter`) and hands the data to a reporter
(:mod:`cowprof.reporters`). Their shared helpers (``err``, ``check_new_output``,
``interrupt_on_term``...) are in :mod:`cowprof.commands.common`.

The option definitions and the help are in :mod:`cowprof.cli_app` (Typer); :mod:`cowprof.cli` runs
the common one-shot ``snapshot`` forms without it. Errors are :class:`~cowprof.errors.CowprofError`
(one line and an exit code, printed by :func:`cowprof.cli.guarded`). Policy defaults (top's
tolerance and CPU cap, the exporter's shortest interval) live with the library code they configure,
not here; so does the validation of an option the library takes too (:func:`cowprof.timer.check_interval`).

Start-up: this package and its modules import only the standard library and
:mod:`cowprof.errors` at import time (nothing here is imported by ``import cowprof.commands``
itself); what a command needs is imported when it runs.
"""
