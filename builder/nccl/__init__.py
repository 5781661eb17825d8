"""nccl-tests smoke checks: run them in an image, parse their output, judge it, report it.

One module per stage: ``parse`` (text -> NcclRun, pure; ``prefix`` strips launcher prefixes,
``tables`` reads one rank's tables, ``results`` is the model), ``transport`` (NCCL log lines ->
the network verdict), ``instances`` (hardware table), ``judge`` (NcclRun + instance -> Verdict),
``report`` (JSON and text), ``plot`` (PNG), ``run`` (docker run of the nccl-tests binaries).
``builder.commands.nccl`` is the CLI.

Exit codes of ``builder nccl run|judge|parse`` (the nccl group's --help; docs/cli.md):
"""

from __future__ import annotations

EXIT_PASS = 0
EXIT_FAIL = 1  # judged below threshold, data errors, socket fallback; or nccl-tests itself failed
EXIT_USAGE = 2  # bad option, unknown instance type, unknown image, unreadable file
EXIT_NO_GPU = 3  # `run` only: this host has no NVIDIA GPU, nothing was run
EXIT_NO_RESULTS = 4  # the output holds no nccl-tests result rows (crashed, wrong file)
