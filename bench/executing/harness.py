"""Runs a suite: each run in its backend's env as a subprocess, results written as they finish.

The harness never imports a framework. A run that cannot get its env, crashes, diverges or
outlives its timeout becomes a result with that status and its reason; the suite goes on.
Finished runs are skipped on --resume, so an interrupted suite picks up where it stopped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from bench.executing import envs
from bench.executing.suite import PlannedRun
from bench.running.train_command import failed_result, write_result
from common.errors import BenchError
from common.evaluate import eval_data_dir
from common.machine import git_commit, machine_info

ROOT = envs.ROOT


def _bar(total: int, desc: str, position: int):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, position=position, leave=False, disable=not sys.stderr.isatty(),
                dynamic_ncols=True)


def gpu_names() -> list[str]:
    """GPUs named by nvidia-smi, without importing any framework."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split(":", 1)[1].split("(")[0].strip() for line in out.stdout.splitlines() if line.startswith("GPU")]


def write_meta(folder: Path, argv: list[str], plan: list[dict]) -> None:
    """folder/suite.json: when, which commit, which machine, what command, what was planned."""
    meta = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": git_commit(ROOT),
            "argv": argv, "machine": {**machine_info(), "gpus": gpu_names()}, "plan": plan}
    folder.mkdir(parents=True, exist_ok=True)
    write_result(folder / "suite.json", meta)


class Harness:
    def __init__(self, out_dir: Path, data_dir: Path, timeout: float) -> None:
        self.out_dir, self.data_dir, self.timeout = out_dir, data_dir, timeout
        self.runs_dir = out_dir / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "logs").mkdir(exist_ok=True)

    def write_plan(self, plan: list[PlannedRun], argv: list[str]) -> None:
        write_meta(self.out_dir, argv, [{"name": p.name, "env": p.env, "spec": p.spec.to_dict()} for p in plan])

    def result_path(self, run: PlannedRun) -> Path:
        return self.runs_dir / f"{run.name}.json"

    def run_all(self, plan: list[PlannedRun]) -> list[dict]:
        todo = [p for p in plan if not self.result_path(p).exists()]
        if len(todo) < len(plan):
            print(f"resuming: {len(plan) - len(todo)} of {len(plan)} runs already finished", file=sys.stderr)
        suite_bar = _bar(len(todo), "suite", 0)
        for i, run in enumerate(todo, start=1):
            started = time.perf_counter()
            result = self.run_one(run)
            result.setdefault("wall_seconds", time.perf_counter() - started)
            write_result(self.result_path(run), result)
            suite_bar.update(1)
            rate = result.get("examples_per_sec")
            note = f"{rate:,.0f} examples/s" if result["status"] == "ok" and rate else result.get("error") or ""
            print(f"[{i}/{len(todo)}] {run.name}: {result['status']}, {note} "
                  f"({result['wall_seconds']:.0f} s)", file=sys.stderr if suite_bar.disable else sys.stdout)
        suite_bar.close()
        return [json.loads(self.result_path(p).read_text()) for p in plan if self.result_path(p).exists()]

    def run_one(self, run: PlannedRun) -> dict:
        try:
            python = envs.python_for(run.env) if run.env else Path(sys.executable)
        except BenchError as exc:
            return failed_result(run.spec, str(exc))
        spec_file = self.out_dir / "logs" / f"{run.name}.spec.json"
        write_result(spec_file, run.spec.to_dict())
        partial = self.out_dir / "logs" / f"{run.name}.result.json"
        partial.unlink(missing_ok=True)
        cmd = [str(python), "-m", "bench", "train", "--spec", str(spec_file), "--data-dir", str(self.data_dir),
               "--out", str(partial), "--progress", "--no-download"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        if eval_data_dir():
            env["SKIPGRAM_EVAL_DATA"] = str(eval_data_dir())
        log_path = self.out_dir / "logs" / f"{run.name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                                    start_new_session=True)
            reader = threading.Thread(target=self._follow, args=(proc, run), daemon=True)
            reader.start()
            try:
                proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                error = f"no result after {self.timeout:.0f} s (the --timeout); log: {log_path}"
                return failed_result(run.spec, error, status="timed_out")
            reader.join(timeout=5)
        if partial.exists():
            return json.loads(partial.read_text())
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return failed_result(run.spec, f"exit status {proc.returncode}: {tail[0]}")

    @staticmethod
    def _follow(proc: subprocess.Popen, run: PlannedRun) -> None:
        """Move the run's bar on the worker's 'progress DONE TOTAL' lines."""
        bar = None
        assert proc.stdout is not None
        for line in proc.stdout:
            parts = line.split()
            if len(parts) == 3 and parts[0] == "progress":
                done, total = int(parts[1]), int(parts[2])
                if bar is None:
                    bar = _bar(total, run.name, 1)
                bar.update(done - bar.n)
        if bar is not None:
            bar.close()
