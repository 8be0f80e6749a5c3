"""The dist_sync kvstore's scheduler or server: `DMLC_ROLE=scheduler|server python -m backends.mxnet_server`
with the DMLC variables (docs/data-parallel.md), run from this repository (or with it on PYTHONPATH).

Why not `import mxnet`, which runs a non-worker role inside the import: there the loop starts
when mxnet.contrib first imports the kvstore, before mxnet has finished importing (gluon and
mxnet.np_symbol do not exist yet), so the server cannot unpickle the workers' optimizer
(backends.mxnet.ServerOptimizer imports gluon), and MXNet only prints the error and serves on
with no updater: its stored weights become the summed gradients. Here mxnet is imported whole,
as a worker would import it (no loop), and the role is taken after; a command the server cannot
carry out ends it (exit 1), so a run fails instead of training on garbage.
"""
from __future__ import annotations

import os
import sys
import traceback

ROLE = os.environ.pop("DMLC_ROLE", "")

import mxnet as mx  # noqa: E402 (imported without a role: no server loop inside the import)


class CheckedServer(mx.kv.KVStoreServer):
    """MXNet's server, ending the process when a command (setting the optimizer) fails."""

    def _controller(self):  # noqa: ANN202 (MXNet's hook)
        handle = super()._controller()

        def checked(cmd_id, cmd_body, arg):  # noqa: ANN001, ANN202
            try:
                handle(cmd_id, cmd_body, arg)
            except BaseException:  # noqa: BLE001 (anything: ctypes would swallow it)
                traceback.print_exc()
                sys.stderr.flush()
                os._exit(1)
        return checked


def main() -> None:
    if ROLE not in ("scheduler", "server"):
        sys.exit(f"DMLC_ROLE must be scheduler or server, got {ROLE!r}")
    os.environ["DMLC_ROLE"] = ROLE
    CheckedServer(mx.kv.create("dist")).run()


if __name__ == "__main__":
    main()
