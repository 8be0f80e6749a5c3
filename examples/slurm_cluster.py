"""Run a suite on a Slurm cluster: dask-jobqueue's SLURMCluster submits one Slurm job per Dask
worker, each job one timing slot (one GPU, or a group of cores Slurm confines the job to),
then `python -m bench suite --executor dask` runs against the cluster's scheduler.

Run it on the login node, from a checkout (and its venv or tox envs) that every node sees at
the same path, with PTB reachable from the nodes (Slurm passes on this shell's PTB_DIR):

    pip install -e '.[harness,slurm]'
    export PTB_DIR=/shared/data/ptb
    python examples/slurm_cluster.py --jobs 4 --gpu --partition gpu -- --suite bench/suites/batch-sizes.toml
    python examples/slurm_cluster.py --jobs 8 --cpus 8 -- --quick --devices cpu
    python examples/slurm_cluster.py --jobs 1 --gpu --print-job-script   # what sbatch would get; submits nothing

The scheduler, workers and suite talk TLS: with --tls-ca-file/--tls-cert/--tls-key those files
(the names `dask scheduler` and `dask worker` take), else a certificate made for this cluster
alone (Dask's Security.temporary(); its files live, readable by you only, in a folder of the
checkout the nodes see, removed when the script ends). A plain tcp:// scheduler would run the
code of anyone who can reach its port on every worker.

Everything after `--` goes to `python -m bench suite`. The suite's exit status is this
script's; the jobs are cancelled when it ends, and an interrupted suite resumes with
`python -m bench suite --resume DIR` through this script again, or with any other executor.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """This script's options, and the suite's (after `--`)."""
    ours, suite = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="Slurm jobs = Dask workers = runs at a time")
    parser.add_argument("--gpu", action="store_true", help="one GPU per job (cuda runs); else CPU slots")
    parser.add_argument("--cpus", type=int, default=4, help="cores per job (a CPU run uses all of them)")
    parser.add_argument("--memory", default="16GB", help="memory per job")
    parser.add_argument("--walltime", default="04:00:00")
    parser.add_argument("--partition", help="Slurm partition (queue)")
    parser.add_argument("--account")
    parser.add_argument("--interface", help="network interface the scheduler and workers use, e.g. ib0")
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for the first job to start")
    parser.add_argument("--print-job-script", action="store_true", help="print the job script and exit")
    parser.add_argument("--tls-ca-file", help="CA certificate (default: a certificate made for this cluster)")
    parser.add_argument("--tls-cert", help="the certificate every role presents, signed by that CA")
    parser.add_argument("--tls-key", help="its private key")
    return parser.parse_args(ours), suite


def tls_files(args: argparse.Namespace, folder: Path) -> list[str]:
    """The three TLS files (CA, certificate, key): the ones given, else a self-signed pair made
    now and written into `folder` (the suite, a separate process, reads them from there)."""
    given = [args.tls_ca_file, args.tls_cert, args.tls_key]
    if all(given):
        return given
    if any(given):
        raise SystemExit("error: give all of --tls-ca-file, --tls-cert, --tls-key, or none (a certificate is made)")
    from distributed.security import Security

    try:
        made = Security.temporary()
    except ImportError:
        raise SystemExit("error: making a certificate needs `cryptography` (pip install -e '.[slurm]'), "
                         "or pass --tls-ca-file, --tls-cert, --tls-key") from None
    cert, key = folder / "cluster.pem", folder / "cluster.key"
    cert.write_text(made.tls_ca_file)
    key.touch(mode=0o600)
    key.write_text(made.tls_client_key)
    return [str(cert), str(cert), str(key)]


def make_cluster(args: argparse.Namespace, tls: list[str]):
    """One worker per job, one task at a time (cores=1 is Dask's thread count; job_cpu is Slurm's
    cores), offering the resource the suite's runs ask for: GPU=1 or slot=1; every role on `tls`."""
    from dask_jobqueue import SLURMCluster
    from distributed.security import Security

    ca, cert, key = tls
    security = Security(tls_ca_file=ca, tls_scheduler_cert=cert, tls_scheduler_key=key, tls_worker_cert=cert,
                        tls_worker_key=key, tls_client_cert=cert, tls_client_key=key, require_encryption=True)
    return SLURMCluster(
        cores=1, processes=1, job_cpu=args.cpus, memory=args.memory, walltime=args.walltime,
        queue=args.partition, account=args.account, interface=args.interface,
        job_extra_directives=["--gres=gpu:1"] if args.gpu else [],
        # Dask's dashboards are plain HTTP whatever the protocol: the scheduler's on this machine
        # only (ssh -L to read it), the workers' off.
        worker_extra_args=["--resources", "GPU=1" if args.gpu else "slot=1", "--no-dashboard"],
        scheduler_options={"dashboard_address": "127.0.0.1:8787"},
        job_script_prologue=[f"cd {ROOT}", f"export PYTHONPATH={ROOT}"],
        protocol="tls://", security=security,
    )


def main(argv: list[str]) -> int:
    args, suite = parse(argv)
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        print("error: this script needs dask-jobqueue: pip install -e '.[slurm]'", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix=".slurm-tls-", dir=ROOT) as folder:  # 0700; the nodes see ROOT
        return run_suite(args, suite, tls_files(args, Path(folder)))


def run_suite(args: argparse.Namespace, suite: list[str], tls: list[str]) -> int:
    with make_cluster(args, tls) as cluster:
        if args.print_job_script:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        from distributed import Client

        with Client(cluster) as client:
            print(f"waiting for the first of {args.jobs} Slurm jobs to start ({cluster.scheduler_address})",
                  flush=True)
            client.wait_for_workers(1, timeout=args.wait)
        command = [sys.executable, "-m", "bench", "suite", "--executor", "dask",
                   "--address", cluster.scheduler_address, "--tls-ca-file", tls[0], "--tls-cert", tls[1],
                   "--tls-key", tls[2], *suite]
        suite_process = subprocess.Popen(command, cwd=ROOT)
        while True:
            try:
                return suite_process.wait()
            except KeyboardInterrupt:  # the suite got the Ctrl-C too: let it cancel its runs and say how to resume
                continue


if __name__ == "__main__":  # SLURMCluster starts a scheduler in this process: never on import
    sys.exit(main(sys.argv[1:]))
