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

Everything after `--` goes to `python -m bench suite`. The suite's exit status is this
script's; the jobs are cancelled when it ends, and an interrupted suite resumes with
`python -m bench suite --resume DIR` through this script again, or with any other executor.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
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
    return parser.parse_args(ours), suite


def make_cluster(args: argparse.Namespace):
    """One worker per job, one task at a time (cores=1 is Dask's thread count; job_cpu is Slurm's
    cores), offering the resource the suite's runs ask for: GPU=1 or slot=1."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(
        cores=1, processes=1, job_cpu=args.cpus, memory=args.memory, walltime=args.walltime,
        queue=args.partition, account=args.account, interface=args.interface,
        job_extra_directives=["--gres=gpu:1"] if args.gpu else [],
        worker_extra_args=["--resources", "GPU=1" if args.gpu else "slot=1"],
        job_script_prologue=[f"cd {ROOT}", f"export PYTHONPATH={ROOT}"],
    )


def main(argv: list[str]) -> int:
    args, suite = parse(argv)
    try:
        import dask_jobqueue  # noqa: F401
    except ImportError:
        print("error: this script needs dask-jobqueue: pip install -e '.[slurm]'", file=sys.stderr)
        return 2
    with make_cluster(args) as cluster:
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
                   "--address", cluster.scheduler_address, *suite]
        suite_process = subprocess.Popen(command, cwd=ROOT)
        while True:
            try:
                return suite_process.wait()
            except KeyboardInterrupt:  # the suite got the Ctrl-C too: let it cancel its runs and say how to resume
                continue


if __name__ == "__main__":  # SLURMCluster starts a scheduler in this process: never on import
    sys.exit(main(sys.argv[1:]))
